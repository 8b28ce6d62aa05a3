"""The GPU check's training parts (bench/gpu_check.py): the shared context, training runs through
gepalib.train.Trainer (compiled and eager), the step split and resume. Quantization, evaluation
and the compile probes are in bench/gpu/eval_parts.py."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import flops_per_token, matmul_params, synthetic_luts
from bench.gpu.preflight import dynamo_counters, reset_dynamo
from gepalib.config import RunConfig, get_preset, override
from gepalib.model import GPT

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, matched in order against the device name.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))
# Eager gepa11 activations: ~35-38 GB at 98,304 tokens per micro-step (bf16 autocast), i.e. about
# 390 kB a token; plus weights, gradients, optimizer state and the allocator's slack.
EAGER_BYTES_PER_TOKEN = 390_000
FIXED_BYTES = 4 << 30
MICRO_CHOICES = (98_304, 49_152, 24_576, 12_288, 6_144)  # 48, 24, 12, 6, 3 sequences of 2048


@dataclass(frozen=True)
class Sizes:
    preset: str
    micro_batch_tokens: int
    steps: int  # timed steps per training run
    warmup_eager: int  # undone warm-up steps before the eager run's timed steps
    warmup_compiled: int  # the submission's 20
    split_steps: int  # steps of the fwd+bwd / all-reduce / optimizer split
    resume_steps: int
    resume_stop_at: int  # checkpoint after this step, then a new trainer resumes from it
    quant_eval_seqs: int
    eval_chunks: int
    ttt_chunk_tokens: int  # 0 = the preset's
    ttt_epochs: int  # 0 = the preset's
    train_tokens: int
    val_tokens: int


GPU = Sizes("gepa11", 98_304, 20, 3, 20, 5, 4, 2, 8, 4, 0, 0, 1 << 22, 1 << 18)
TINY = Sizes("tiny", 2_048, 3, 1, 1, 2, 3, 2, 4, 3, 1024, 1, 1 << 16, 1 << 14)


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a known GPU name, else None."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class Check:
    """What the parts share: sizes, device, data, the config and what earlier parts left."""

    def __init__(self, sizes: Sizes, dev: torch.device, data_dir: Path | None, work: Path, args, pre: dict):
        self.sizes, self.dev, self.data_dir, self.work, self.args, self.pre = sizes, dev, data_dir, work, args, pre
        self.cuda = dev.type == "cuda"
        self.autocast = "bf16" if self.cuda else "none"
        s = sizes
        seq = get_preset(s.preset).train.seq_len
        cfg = get_preset(s.preset, data_dir=str(data_dir or work / "no-data"), train_shards=0, val_tokens=4 * seq,
                         batch_tokens=s.micro_batch_tokens, micro_batch_tokens=s.micro_batch_tokens,
                         warmdown=0, val_every=0, checkpoint_every=0, log_every=1, progress="log",
                         device=dev.type, autocast=self.autocast, keep_checkpoints=0)
        if s.ttt_chunk_tokens:
            cfg = override(cfg, ttt_chunk_tokens=s.ttt_chunk_tokens)
        if s.ttt_epochs:
            cfg = override(cfg, ttt_epochs=s.ttt_epochs)
        self.cfg: RunConfig = cfg
        self.T = cfg.train.seq_len
        self.luts, self.luts_source = self._luts()
        model = GPT(cfg.model)
        self.n_params, self.n_matmul = sum(p.numel() for p in model.parameters()), matmul_params(model)
        self.weights: dict | None = None  # EMA weights of a training part
        self.eval_model: torch.nn.Module | None = None  # the reloaded int6 model (part quant)
        self.eager_micro: int | None = None

    def _luts(self):
        if self.pre["imports"].get("sentencepiece") and self.data_dir is not None:
            from gepalib.bpb import build_byte_luts

            return build_byte_luts(self.data_dir / "tokenizer.model", self.cfg.model.vocab_size), "tokenizer"
        return synthetic_luts(self.cfg.model.vocab_size), "synthetic (sentencepiece or data missing)"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)


@contextmanager
def fullgraph_compile(on: bool):
    """torch.compile with ``fullgraph=True`` (for the Trainer's own call) while active."""
    real = torch.compile
    if on:
        torch.compile = lambda *a, **k: real(*a, **{**k, "fullgraph": True})
    try:
        yield
    finally:
        torch.compile = real


def train_run(chk: Check, name: str, *, steps: int, micro: int | None = None, compile: bool = False,
              warmup: int = 0, stop_after: int = 0, resume: bool = False, split: int = 0) -> tuple[dict, dict, dict]:
    """Steps of a gepalib.train.Trainer in ``work/name``: all ``steps``, or up to ``stop_after`` and
    then a checkpoint; then ``split`` steps timed phase by phase. Returns (row, live, EMA weights)."""
    from gepalib.train import Trainer

    micro = micro or chk.sizes.micro_batch_tokens
    cfg = override(chk.cfg, steps=steps + split, compile=compile, compile_warmup=warmup, batch_tokens=micro,
                   micro_batch_tokens=micro)
    if chk.cuda:
        torch.cuda.reset_peak_memory_stats(chk.dev)
    t0 = time.perf_counter()
    with Trainer(cfg, chk.work / name, resume=resume) as t:
        build_s = time.perf_counter() - t0
        graphs_built = dynamo_counters()
        start = t.steps_done
        rs, waits = [], []
        for _ in range((stop_after or steps) - start):
            rs.append(t.step())
            waits.append(t.host_wait_s)
        timed = dynamo_counters()
        phases = [split_step(t, chk) for _ in range(split)]
        if stop_after:
            t.save()
        live = {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
        ema = t.ema.export()
    chk.sync()
    ms = [1000.0 * r.seconds for r in rs]
    out = {"run_dir": name, "start_step": start, "steps": len(rs), "compile": compile, "compile_warmup": warmup,
           "micro_batch_tokens": micro, "build_s": build_s, "wall_s": time.perf_counter() - t0,
           "losses": [r.loss for r in rs], "ms_per_step": ms, "ms_per_step_median": median(ms),
           "host_wait_ms_median": 1000.0 * median(waits)}
    out["tokens_per_s"] = micro / (out["ms_per_step_median"] / 1000.0)
    out["peak_mem_bytes"] = torch.cuda.max_memory_allocated(chk.dev) if chk.cuda else None
    if compile:
        g0 = (graphs_built or {}).get("stats", {}).get("unique_graphs")
        g1 = (timed or {}).get("stats", {}).get("unique_graphs")
        out["graphs_after_warmup"] = g0
        out["recompiles_in_timed_steps"] = None if g0 is None or g1 is None else g1 - g0
        out["graph_breaks"] = None if timed is None else int(sum((timed.get("graph_break") or {}).values()))
        out["compile_s_estimate"] = build_s - warmup * out["ms_per_step_median"] / 1e3
        out["compile_s_formula"] = "build_s - compile_warmup * ms_per_step_median (the warm-up's own steps)"
    if phases:
        out["split_ms"] = {k: 1000.0 * median([p[k] for p in phases]) for k in phases[0]}
        out["split_ms"]["host_wait"] = out["host_wait_ms_median"]
    return out, live, ema


def split_step(t, chk: Check) -> dict[str, float]:
    """One optimizer step of trainer ``t`` with a device sync after each phase: forward+backward
    (all micro-steps), the gradient all-reduce (nothing to do on one process), the clip and the
    optimizers. The synced phases add up to more than an unsynced step (no overlap)."""
    from gepalib import dist
    from gepalib.optim import set_lr

    plan, tc = t.plan, t.cfg.train
    set_lr(t.optimizers, t.steps_done, tc)
    chk.sync()
    t0 = time.perf_counter()
    for i in range(plan.accum):
        x, y = t._to_device(i, *t.loader.next_batch(plan.micro_tokens, plan.seq_len))
        with dist.autocast_context(t.dev, tc.autocast):
            loss = t.fwd(x, y)
        (loss / plan.accum).backward()
    chk.sync()
    t1 = time.perf_counter()
    dist.reduce_grads(t.params if t.ddp is None else [], torch.zeros(3, dtype=torch.float64, device=t.dev))
    chk.sync()
    t2 = time.perf_counter()
    grads = [p for p in t.params if p.grad is not None]
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(grads, tc.grad_clip)
    for opt in t.optimizers:
        opt.step()
    t.model.zero_grad(set_to_none=True)
    chk.sync()
    t3 = time.perf_counter()
    t.steps_done += 1
    return {"forward_backward": t1 - t0, "all_reduce": t2 - t1, "optimizer": t3 - t2}


def eager_micro_batch(chk: Check) -> tuple[int, str]:
    """The eager run's micro-batch: the submission's where it fits the free memory, else the
    largest of MICRO_CHOICES that does (EAGER_BYTES_PER_TOKEN a token + FIXED_BYTES, 90% of free)."""
    if not chk.cuda or chk.sizes.preset != "gepa11":
        return chk.sizes.micro_batch_tokens, "the size's micro-batch (not a gepa11 GPU run)"
    free, _ = torch.cuda.mem_get_info(chk.dev)
    for m in MICRO_CHOICES:
        need = m * EAGER_BYTES_PER_TOKEN + FIXED_BYTES
        if need <= 0.9 * free:
            return m, f"{m} tokens: needs ~{need / 2**30:.1f} GiB of {free / 2**30:.1f} GiB free (90% used)"
    m = MICRO_CHOICES[-1]
    return m, f"{m} tokens: the smallest choice; ~{(m * EAGER_BYTES_PER_TOKEN + FIXED_BYTES) / 2**30:.1f} GiB " \
              f"may not fit {free / 2**30:.1f} GiB free"


def train_row(chk: Check, res: dict, run: dict) -> dict:
    m = chk.cfg.model
    fpt = flops_per_token(chk.n_matmul, m.num_layers, m.model_dim, chk.T)
    peak = peak_bf16_flops(res["device_name"]) if chk.cuda else None
    run.update(flops_per_token=fpt, peak_bf16_flops=peak, seq_len=chk.T,
               mfu=run["tokens_per_s"] * fpt / peak if peak else None)
    res["checks"].setdefault("train_losses_finite", True)
    res["checks"]["train_losses_finite"] &= all(x == x and abs(x) != float("inf") for x in run["losses"])
    return run


def part_train_compiled(chk: Check, res: dict) -> dict:
    """The compiled run at the submission's micro-batch, first with fullgraph=True."""
    s = chk.sizes
    reset_dynamo()
    try:
        with fullgraph_compile(True):
            run = train_run(chk, "compiled", steps=s.steps, compile=True, warmup=s.warmup_compiled)[0]
        run["fullgraph_held"] = True
    except Exception as e:  # noqa: BLE001 -- a graph break under fullgraph: the default compile
        err = f"{type(e).__name__}: {str(e)[:500]}"
        reset_dynamo()
        if chk.cuda:
            torch.cuda.empty_cache()
        run = train_run(chk, "compiled_fallback", steps=s.steps, compile=True, warmup=s.warmup_compiled)[0]
        run.update(fullgraph_held=False, fullgraph_error=err)
    return train_row(chk, res, run)


def part_train_eager(chk: Check, res: dict) -> dict:
    s = chk.sizes
    micro, why = eager_micro_batch(chk)
    chk.eager_micro = micro
    run, _, chk.weights = train_run(chk, "eager", steps=s.steps, micro=micro, warmup=s.warmup_eager)
    run["micro_batch_choice"] = why
    row = train_row(chk, res, run)
    comp = res["parts"].get("train_compiled")
    if comp and comp["micro_batch_tokens"] == micro:
        tol = 2e-3 if chk.cuda else 1e-4  # relative: bf16 kernels fuse differently when compiled
        d = abs(row["losses"][0] - comp["losses"][0])
        row.update(first_loss_abs_diff_vs_compiled=d, first_loss_rel_tol=tol)
        res["checks"]["compiled_first_loss_matches_eager"] = d <= tol * abs(row["losses"][0])
    return row


def part_steps(chk: Check, res: dict) -> dict:
    """Time per step split into forward+backward, all-reduce, optimizer (synced phases) and the
    host wait at the step's one sync (unsynced steps), at the eager run's micro-batch."""
    s = chk.sizes
    micro = chk.eager_micro or eager_micro_batch(chk)[0]
    run = train_run(chk, "steps", steps=2, micro=micro, split=s.split_steps)[0]
    return {"micro_batch_tokens": micro, "split_ms": run["split_ms"], "unsynced_ms_per_step": run["ms_per_step"],
            "note": "phases synced one by one (no overlap); host_wait: the step's one sync in unsynced steps"}


def _max_diffs(a: tuple[dict, dict], b: tuple[dict, dict]) -> tuple[float, float]:
    pairs = [(x[n].float(), y[n].float()) for x, y in zip(a, b) for n in x]  # live and EMA weights
    return (max(float((x - y).abs().max()) for x, y in pairs),
            max(float((x - y).abs().max() / x.abs().max().clamp_min(1e-12)) for x, y in pairs))


def part_resume(chk: Check, res: dict) -> dict:
    """Checkpoint after step k and resume in a new trainer: the uninterrupted run's losses and
    weights. On CUDA the tolerance is measured, not guessed: the uninterrupted run is repeated,
    and the resumed run may differ from it by at most 4x what the repeat differs (the kernels with
    atomics, attention's backward among them, are not bitwise reproducible under bf16), with a
    floor of 5e-4 relative on the loss (an eighth of bf16's unit roundoff 2^-8: a mean over the
    micro-batch's tokens averages the per-token rounding far below one ulp) and 1e-2 on the weights
    (a last-bit flip of a bf16 weight is ~2^-8 of it; a lost optimizer state moves weights by about
    the learning rate, far more). On the CPU the resumed run must be exact."""
    s, k = chk.sizes, chk.sizes.resume_stop_at
    micro = chk.eager_micro or eager_micro_batch(chk)[0]
    full, *w_full = train_run(chk, "resume_full", steps=s.resume_steps, micro=micro)
    first = train_run(chk, "resume_split", steps=s.resume_steps, micro=micro, stop_after=k)[0]
    second, *w_split = train_run(chk, "resume_split", steps=s.resume_steps, micro=micro, resume=True)
    a, b = full["losses"], first["losses"] + second["losses"]
    wdiff, wrel = _max_diffs(tuple(w_full), tuple(w_split))
    out = {"steps": s.resume_steps, "micro_batch_tokens": micro, "checkpoint_step": k,
           "resumed_at": second["start_step"], "losses_uninterrupted": a, "losses_resumed": b, "next_step": k + 1,
           "bitwise_equal_losses": a == b, "final_weights_max_abs_diff": wdiff, "final_weights_max_rel_diff": wrel}
    ok_len = len(b) == len(a)
    out["next_loss_abs_diff"] = abs(a[k] - b[k]) if ok_len else None
    if chk.cuda:
        rep, *w_rep = train_run(chk, "resume_repeat", steps=s.resume_steps, micro=micro)
        noise = abs(a[k] - rep["losses"][k]) / abs(a[k])
        wnoise = _max_diffs(tuple(w_full), tuple(w_rep))[1]
        tol, wtol = max(4 * noise, 5e-4), max(4 * wnoise, 1e-2)
        out.update(repeat_next_loss_rel_diff=noise, repeat_weights_rel_diff=wnoise)
    else:
        tol = wtol = 1e-6
    out.update(loss_rel_tol=tol, weights_rel_tol=wtol)
    res["checks"]["resume_starts_at_checkpoint"] = second["start_step"] == k and ok_len
    res["checks"]["resume_next_loss_matches"] = ok_len and abs(a[k] - b[k]) <= tol * abs(a[k])
    res["checks"]["resume_final_weights_match"] = wrel <= wtol
    return out
