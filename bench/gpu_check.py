"""One-command GPU check of gepa11: speed, memory, MFU, resume, int6 artifact and evaluations.

On one CUDA GPU (at most ~8 minutes), with data it makes itself (random 8-token phrases
written as challenge shards by gepalib.data, a SentencePiece tokenizer trained on made-up
text for the byte table; no network, no prepared data):

  (a) train: gepa11 at the submission's per-GPU micro-batch (98,304 tokens = 48 x 2048) in
      bf16 autocast through gepalib.train.Trainer, eager and then compiled
      (torch.compile + the trainer's undone 20-step warm-up), 20 timed steps each:
      ms/step, tokens/s, peak memory per GPU, MFU against the GPU's dense bf16 peak, and the first
      step's loss of the two runs (equal within tolerance: the warm-up is undone);
  (b) resume: a trainer that checkpoints after step 2 (on the GPU) and a new trainer that
      resumes from that checkpoint must give the uninterrupted run's losses and weights;
  (c) quant: int6 GPTQ-lite of the EMA weights -> artifact file -> reload; the reloaded
      state dict must equal the dequantized one, and both bpbs on a few sequences;
  (d) eval: non-overlapping, sliding (stride 64), streaming (exact, and with all lanes as a
      throughput probe) and legal TTT on a few chunks under autocast: tokens/s each and
      streaming minus sliding bpb;
  (e) projections of the full run (20,000 steps on 4 and 8 GPUs of this kind; the full TTT
      evaluation of 1,893 chunks x 10 epochs) next to the submission's numbers.

Everything goes to bench/results/gpu.json (written after every part). A part that fails is
recorded under ``errors`` and the others still run; a missing optional wheel is recorded
under ``skipped`` (zstandard -> the artifact is stored with compressor "none").

    PYTHONPATH=. python3 bench/gpu_check.py                 # on the GPU machine (make bench-gpu)
    .venv/bin/python bench/gpu_check.py --tiny              # CPU: tiny preset, 2-3 steps a part
    .venv/bin/python bench/gpu_check.py --tiny --out /tmp/g.json

A ``--tiny`` run never replaces a full result at its --out path (use --force). Exit status 0
when every part ran and every check passed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the torch import

import torch  # noqa: E402

from bench.common import (RESULTS, flops_per_token, markdown_table, matmul_params, synthetic_data_dir,  # noqa: E402
                          synthetic_luts, write_result)
from gepalib.config import RunConfig, get_preset, override  # noqa: E402
from gepalib.model import GPT  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, matched in order against the device name.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))
SUBMISSION = {
    "4xA100": {"ms_per_step": 500.6, "tokens_per_s": 1.57e6, "ttt_eval_s": 2066.0},
    "8xH100": {"ms_per_step": 83.0, "tokens_per_s": 786432 / 0.083, "ttt_eval_s": 409.0},
}
SUBMISSION_PEAK_GIB_PER_GPU = 21.2  # 4xA100-40GB, 48 x 2048 tokens per GPU per micro-step
FULL_STEPS = 20_000
FULL_TTT_CHUNKS = 1_893


@dataclass(frozen=True)
class Sizes:
    preset: str
    micro_batch_tokens: int
    steps: int  # timed steps per training run
    warmup_eager: int  # undone warm-up steps before the eager run's timed steps
    warmup_compiled: int  # the submission's 20
    resume_steps: int
    resume_stop_at: int  # checkpoint after this step, then a new trainer resumes from it
    quant_eval_seqs: int
    eval_chunks: int
    ttt_chunk_tokens: int  # 0 = the preset's
    ttt_epochs: int  # 0 = the preset's
    train_tokens: int
    val_tokens: int


GPU = Sizes("gepa11", 98_304, 20, 3, 20, 4, 2, 8, 4, 0, 0, 1 << 22, 1 << 18)
TINY = Sizes("tiny", 2_048, 3, 1, 1, 3, 2, 4, 3, 1024, 1, 1 << 16, 1 << 14)


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a known GPU name, else None."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------
# Context shared by the parts


class Check:
    def __init__(self, sizes: Sizes, dev: torch.device, data_dir: Path, work: Path, args):
        self.sizes, self.dev, self.data_dir, self.work, self.args = sizes, dev, data_dir, work, args
        self.cuda = dev.type == "cuda"
        self.autocast = "bf16" if self.cuda else "none"
        s = sizes
        cfg = get_preset(s.preset, data_dir=str(data_dir), train_shards=0, val_tokens=4 * self._seq(s.preset),
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
        self.weights: dict | None = None  # EMA weights of the eager run (part train)
        self.eval_model: torch.nn.Module | None = None  # the reloaded int6 model (part quant)

    @staticmethod
    def _seq(preset: str) -> int:
        return get_preset(preset).train.seq_len

    def _luts(self):
        if have("sentencepiece"):
            from gepalib.bpb import build_byte_luts

            return build_byte_luts(self.data_dir / "tokenizer.model", self.cfg.model.vocab_size), "tokenizer"
        return synthetic_luts(self.cfg.model.vocab_size), "synthetic (sentencepiece missing)"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def train_run(chk: Check, name: str, *, steps: int, compile: bool = False, warmup: int = 0,
              stop_after: int = 0, resume: bool = False) -> tuple[dict, dict, dict]:
    """Steps of a gepalib.train.Trainer in ``work/name``: all ``steps``, or up to ``stop_after`` and
    then a checkpoint. Returns (row, live weights, EMA weights), both on the CPU."""
    from gepalib.train import Trainer

    cfg = override(chk.cfg, steps=steps, compile=compile, compile_warmup=warmup)
    if chk.cuda:
        torch.cuda.reset_peak_memory_stats(chk.dev)
    t0 = time.perf_counter()
    with Trainer(cfg, chk.work / name, resume=resume) as t:
        start = t.steps_done
        rs = [t.step() for _ in range((stop_after or steps) - start)]
        if stop_after:
            t.save()
        live = {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
        ema = t.ema.export()
    chk.sync()
    ms = [1000.0 * r.seconds for r in rs]
    out = {"run_dir": name, "start_step": start, "steps": len(rs), "compile": compile, "compile_warmup": warmup,
           "wall_s": time.perf_counter() - t0, "losses": [r.loss for r in rs], "ms_per_step": ms,
           "ms_per_step_median": _median(ms)}
    out["tokens_per_s"] = chk.sizes.micro_batch_tokens / (out["ms_per_step_median"] / 1000.0)
    out["peak_mem_bytes"] = torch.cuda.max_memory_allocated(chk.dev) if chk.cuda else None
    return out, live, ema


# ---------------------------------------------------------------------------
# Parts


def compare_losses(eager: list[float], compiled: list[float], cuda: bool) -> dict:
    """The first step's loss must agree (the undone warm-up leaves the same start); later steps
    drift apart by rounding only. Relative tolerance: bf16 kernels fuse differently when compiled."""
    tol = 2e-3 if cuda else 1e-4
    d = abs(eager[0] - compiled[0])
    return {"first_loss_abs_diff": d, "first_loss_rel_tol": tol, "first_loss_match": d <= tol * abs(eager[0]),
            "loss_max_abs_diff_all_steps": max(abs(x - y) for x, y in zip(eager, compiled))}


def part_train(chk: Check, res: dict) -> dict:
    s, m = chk.sizes, chk.cfg.model
    n_mm = chk.n_matmul
    fpt = flops_per_token(n_mm, m.num_layers, m.model_dim, chk.T)
    peak = peak_bf16_flops(res["device_name"]) if chk.cuda else None
    out = {"flops_per_token": fpt, "matmul_params": n_mm, "peak_bf16_flops": peak,
           "micro_batch_tokens": s.micro_batch_tokens, "seq_len": chk.T}
    runs = {}
    runs["eager"], _, chk.weights = train_run(chk, "eager", steps=s.steps, warmup=s.warmup_eager)
    want_compile = chk.args.compile == "on" or (chk.args.compile == "auto" and chk.cuda)
    if not want_compile:
        res["skipped"]["compile"] = "torch.compile off on CPU by default (--compile on to force)"
    elif chk.cuda and not have("triton"):
        res["skipped"]["compile"] = "triton is not installed: torch.compile (inductor) cannot run"
    else:
        try:  # a compiler failure keeps the eager numbers
            runs["compiled"] = train_run(chk, "compiled", steps=s.steps, compile=True, warmup=s.warmup_compiled)[0]
        except Exception as e:
            res["errors"]["compile"] = f"{type(e).__name__}: {e}\n" + traceback.format_exc()[-3000:]
    for r in runs.values():
        r["mfu"] = r["tokens_per_s"] * fpt / peak if peak else None
    out.update(runs)
    if "compiled" in runs:
        cmp = compare_losses(runs["eager"]["losses"], runs["compiled"]["losses"], chk.cuda)
        out.update(cmp)
        res["checks"]["compiled_first_loss_matches_eager"] = cmp["first_loss_match"]
    res["checks"]["train_losses_finite"] = all(x == x and abs(x) != float("inf")
                                               for r in runs.values() for x in r["losses"])
    return out


def part_resume(chk: Check, res: dict) -> dict:
    s, k = chk.sizes, chk.sizes.resume_stop_at
    full, w_full, e_full = train_run(chk, "resume_full", steps=s.resume_steps)
    first, _, _ = train_run(chk, "resume_split", steps=s.resume_steps, stop_after=k)  # checkpoint at step k
    second, w_split, e_split = train_run(chk, "resume_split", steps=s.resume_steps, resume=True)
    a, b = full["losses"], first["losses"] + second["losses"]
    pairs = [(x[n].float(), y[n].float()) for x, y in ((w_full, w_split), (e_full, e_split)) for n in x]
    wdiff = max(float((x - y).abs().max()) for x, y in pairs)  # live and EMA weights
    wrel = max(float((x - y).abs().max() / x.abs().max().clamp_min(1e-12)) for x, y in pairs)
    # CUDA kernels with atomics (attention backward) are not bitwise reproducible: a last-bit flip
    # in a bf16 weight is ~1e-2 of its scale; a wrong resume (lost optimizer state) moves weights
    # by about the learning rate, far more. On the CPU the resumed run is exact.
    tol = 1e-4 if chk.cuda else 1e-6
    wtol = 1e-2 if chk.cuda else 1e-6
    out = {"steps": s.resume_steps, "checkpoint_step": k, "resumed_at": second["start_step"],
           "losses_uninterrupted": a, "losses_resumed": b, "next_step": k + 1,
           "next_loss_abs_diff": abs(a[k] - b[k]), "bitwise_equal_losses": a == b,
           "final_weights_max_abs_diff": wdiff, "final_weights_max_rel_diff": wrel, "loss_rel_tol": tol,
           "weights_rel_tol": wtol}
    res["checks"]["resume_starts_at_checkpoint"] = second["start_step"] == k and len(b) == len(a)
    res["checks"]["resume_next_loss_matches"] = len(b) == len(a) and abs(a[k] - b[k]) <= tol * abs(a[k])
    res["checks"]["resume_final_weights_match"] = wrel <= wtol
    return out


def part_quant(chk: Check, res: dict) -> dict:
    from gepalib.data import load_val_tokens
    from gepalib.eval.windows import eval_nonoverlapping
    from gepalib.quant.artifact import load_artifact_state_dict, save_artifact
    from gepalib.quant.gptq import dequantize, quantize_state_dict

    if have("zstandard"):
        compressor, note = "zstd", f"zstd level {chk.args.zstd_level} (the submission: 22; see bench/compression.py)"
    else:
        compressor = "none"
        note = "zstandard is not installed: artifact stored uncompressed (lzma -9 takes minutes at this size)"
        res["skipped"]["zstd"] = note
    cfg = override(chk.cfg, compressor=compressor, zstd_level=chk.args.zstd_level)
    source = "ema of part train"
    sd = chk.weights
    if sd is None:
        source = "fresh init (part train did not run)"
        torch.manual_seed(0)
        sd = GPT(cfg.model).state_dict()
    t0 = time.perf_counter()
    qm = quantize_state_dict(sd, cfg.quant)
    t_quant = time.perf_counter() - t0
    path = chk.work / "final_model.int6.gpz"
    info = save_artifact(qm, path, cfg.quant, meta={"preset": cfg.preset, "model": asdict(cfg.model)})
    t0 = time.perf_counter()
    back = load_artifact_state_dict(path)
    t_load = time.perf_counter() - t0
    deq = dequantize(qm)
    exact = set(back) == set(deq) and all(torch.equal(back[n], deq[n]) for n in deq)
    val = load_val_tokens(chk.data_dir, chk.T, cfg.model.vocab_size, max_targets=chk.sizes.quant_eval_seqs * chk.T)
    models = {}
    for kind, weights in (("float", sd), ("int6", back)):
        model = GPT(cfg.model)
        model.load_state_dict(weights)
        models[kind] = model.to(chk.dev)
    bpb = {k: eval_nonoverlapping(m, val, chk.luts, chk.T, cfg.eval.eval_batch_seqs, autocast=chk.autocast).val_bpb
           for k, m in models.items()}
    chk.eval_model = models["int6"]
    res["checks"]["artifact_reload_equals_dequantized"] = exact
    res["checks"]["roundtrip_bpb_finite"] = all(v == v and v != float("inf") for v in bpb.values())
    return {"source": source, "compressor": compressor, "note": note, "file_bytes": info.file_bytes,
            "raw_bytes": info.raw_bytes, "quantize_s": t_quant, "encode_s": info.encode_seconds, "load_s": t_load,
            "eval_sequences": (val.numel() - 1) // chk.T, "float_bpb": bpb["float"], "int6_bpb": bpb["int6"],
            "int6_gap_bpb": bpb["int6"] - bpb["float"]}


def part_eval(chk: Check, res: dict) -> dict:
    from gepalib.data import load_val_tokens
    from gepalib.eval.streaming import eval_streaming
    from gepalib.eval.ttt import run_ttt
    from gepalib.eval.windows import eval_nonoverlapping, eval_sliding

    cfg, T, ac = chk.cfg, chk.T, chk.autocast
    model = chk.eval_model
    source = "int6 artifact of part quant"
    if model is None:
        torch.manual_seed(0)
        model, source = GPT(cfg.model).to(chk.dev), "fresh init (part quant did not run)"
    C = cfg.ttt.ttt_chunk_tokens
    val = load_val_tokens(chk.data_dir, T, cfg.model.vocab_size, max_targets=chk.sizes.eval_chunks * C)
    bs, stride = cfg.eval.eval_batch_seqs, cfg.eval.eval_stride
    modes = {
        "nonoverlapping": lambda v: eval_nonoverlapping(model, v, chk.luts, T, bs, autocast=ac),
        "sliding": lambda v: eval_sliding(model, v, chk.luts, T, stride, bs, tail_rescore=False, autocast=ac),
        "streaming": lambda v: eval_streaming(model, v, chk.luts, T, max_lanes=bs, autocast=ac),
        # throughput probe: on a few chunks the exact warm-up (L(W-1)+2 tokens a lane) leaves one
        # lane; on the whole val set every rank runs eval_batch_seqs lanes. Prefix 0: bpb approximate.
        "streaming_lanes": lambda v: eval_streaming(model, v, chk.luts, T, lanes=bs, prefix=0, autocast=ac),
        "ttt": lambda v: run_ttt(model, v, chk.luts, T, cfg.ttt, cfg.eval, autocast=ac),
    }
    out: dict = {"source": source, "targets": val.numel() - 1, "chunk_tokens": C, "ttt_epochs": cfg.ttt.ttt_epochs,
                 "stride": stride, "autocast": ac, "modes": {}}
    for name, fn in modes.items():
        if name != "ttt":
            fn(val[: 2 * T + 1])  # warm-up: kernels, allocator
        chk.sync()
        r = fn(val)
        chk.sync()
        row = {"bpb": r.val_bpb, "tokens": r.tokens, "seconds": r.seconds, "tokens_per_s": r.tokens / r.seconds}
        if name == "ttt":
            ch = r.extra["chunks"]
            steady = ch[1:] if len(ch) > 1 else ch  # chunk 0 carries the warm-up
            trained = [c for c in steady if c["train_loss_first"] is not None] or \
                      [c for c in ch if c["train_loss_first"] is not None]
            row.update(chunks=len(ch), score_s_per_chunk=_median([c["score_seconds"] for c in steady]),
                       train_s_per_chunk=_median([c["train_seconds"] for c in trained]),
                       chunk_bpb=[c["bpb"] for c in ch])
        out["modes"][name] = row
    out["streaming_minus_sliding_bpb"] = out["modes"]["streaming"]["bpb"] - out["modes"]["sliding"]["bpb"]
    res["checks"]["eval_bpb_finite"] = all(m["bpb"] == m["bpb"] and m["bpb"] != float("inf")
                                           for m in out["modes"].values())
    return out


def projections(parts: dict, global_batch: int = 786_432, micro: int = 98_304) -> dict:
    """The full run from per-GPU measurements, ignoring communication: with G GPUs one optimizer
    step is global_batch / (G * micro) micro-steps per GPU (the optimizer counted each time)."""
    out: dict = {}
    train = parts.get("train") or {}
    run = train.get("compiled") or train.get("eager")
    if run:
        ms = run["ms_per_step_median"]
        out["train_source"] = "compiled" if "compiled" in train else "eager"
        per_gpu = micro / (ms / 1e3)
        out["per_gpu_tokens_per_s"] = per_gpu
        if run.get("peak_mem_bytes"):  # one GPU at the submission's per-GPU micro-batch: the per-GPU need
            out["per_gpu_peak_mem_gib"] = run["peak_mem_bytes"] / 2**30
            out["submission_per_gpu_peak_mem_gib"] = SUBMISSION_PEAK_GIB_PER_GPU
        for g, ref in ((4, "4xA100"), (8, "8xH100")):  # this GPU in units of the submission's GPUs
            out[f"{ref[2:]}_equivalents"] = per_gpu / (SUBMISSION[ref]["tokens_per_s"] / g)
        for g, ref in ((4, "4xA100"), (8, "8xH100")):
            accum = max(1, global_batch // (g * micro))
            step_ms = accum * ms
            out[f"{g}gpu"] = {"accum": accum, "ms_per_step": step_ms, "tokens_per_s": global_batch / (step_ms / 1e3),
                              "full_run_s": FULL_STEPS * step_ms / 1e3,
                              "submission_" + ref: SUBMISSION[ref]["ms_per_step"],
                              "submission_full_run_s": FULL_STEPS * SUBMISSION[ref]["ms_per_step"] / 1e3}
    ttt = ((parts.get("eval") or {}).get("modes") or {}).get("ttt")
    if ttt:
        one = FULL_TTT_CHUNKS * ttt["score_s_per_chunk"] + (FULL_TTT_CHUNKS - 1) * ttt["train_s_per_chunk"]
        out["ttt_eval"] = {"chunks": FULL_TTT_CHUNKS, "one_gpu_s": one, "ideal_4gpu_s": one / 4,
                           "ideal_8gpu_s": one / 8, "submission_4xA100_s": SUBMISSION["4xA100"]["ttt_eval_s"],
                           "submission_8xH100_s": SUBMISSION["8xH100"]["ttt_eval_s"]}
    return out


# ---------------------------------------------------------------------------


def environment(dev: torch.device, tiny: bool) -> dict:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    env = {"device": f"{name} (--tiny)" if tiny else name, "device_name": name, "tiny": tiny,
           "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "platform": platform.platform(), "cpu_count": os.cpu_count()}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        env.update(cudnn=torch.backends.cudnn.version(), gpu_memory_bytes=p.total_memory,
                   multiprocessors=p.multi_processor_count, capability=f"{p.major}.{p.minor}")
    return env


def keep_existing(out: Path, tiny: bool) -> bool:
    """True when ``out`` holds a full (non --tiny) result that a --tiny run must not replace."""
    import json

    if not tiny or not out.is_file():
        return False
    try:
        return not json.loads(out.read_text()).get("tiny", True)
    except (ValueError, AttributeError):
        return False


def summary_rows(res: dict) -> list[tuple]:
    p, rows = res["parts"], []
    for kind in ("eager", "compiled"):
        r = (p.get("train") or {}).get(kind)
        if r:
            rows.append((f"train {kind}", f"{r['ms_per_step_median']:.1f} ms/step", f"{r['tokens_per_s']:,.0f} tok/s",
                         f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU -",
                         f"peak {r['peak_mem_bytes'] / 2**30:.1f} GiB per GPU" if r["peak_mem_bytes"] else "peak -"))
    if p.get("resume"):
        r = p["resume"]
        rows.append(("resume", f"step {r['next_step']} |dloss| {r['next_loss_abs_diff']:.2e}",
                     f"weights {r['final_weights_max_abs_diff']:.2e}", f"bitwise {r['bitwise_equal_losses']}", ""))
    if p.get("quant"):
        r = p["quant"]
        rows.append(("int6", f"{r['compressor']} {r['file_bytes']:,} B", f"float {r['float_bpb']:.4f}",
                     f"int6 {r['int6_bpb']:.4f}", f"gap {r['int6_gap_bpb']:+.4f}"))
    for name, m in ((p.get("eval") or {}).get("modes") or {}).items():
        rows.append((f"eval {name}", f"{m['tokens_per_s']:,.0f} tok/s", f"bpb {m['bpb']:.4f}",
                     f"{m['tokens']} tokens", f"{m['seconds']:.2f} s"))
    pr = res.get("projection") or {}
    if "per_gpu_tokens_per_s" in pr:
        mem = (f"{pr['per_gpu_peak_mem_gib']:.1f} GiB (submission {SUBMISSION_PEAK_GIB_PER_GPU} GiB)"
               if "per_gpu_peak_mem_gib" in pr else "")
        rows.append(("per GPU", f"{pr['per_gpu_tokens_per_s']:,.0f} tok/s ({pr['train_source']})",
                     f"= {pr['A100_equivalents']:.2f} submission A100s", f"= {pr['H100_equivalents']:.2f} H100s", mem))
    for g in ("4gpu", "8gpu"):
        if g in pr:
            ref = "4xA100" if g == "4gpu" else "8xH100"
            rows.append((f"full run {g}", f"{pr[g]['ms_per_step']:.1f} ms/step", f"{pr[g]['full_run_s']:,.0f} s",
                         f"submission {ref} {pr[g]['submission_' + ref]} ms/step", ""))
    if "ttt_eval" in pr:
        t = pr["ttt_eval"]
        rows.append(("full TTT eval", f"1 GPU {t['one_gpu_s']:,.0f} s", f"ideal 8 GPU {t['ideal_8gpu_s']:,.0f} s",
                     f"submission {t['submission_4xA100_s']:.0f} s / {t['submission_8xH100_s']:.0f} s", ""))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny preset, 2-3 steps a part (runs on CPU)")
    ap.add_argument("--out", default=str(RESULTS / "gpu.json"))
    ap.add_argument("--force", action="store_true", help="let a --tiny run replace a full result at --out")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="the compiled training run (auto: on CUDA only)")
    ap.add_argument("--zstd-level", type=int, default=3, help="artifact zstd level (the submission's 22 is slow)")
    ap.add_argument("--parts", default="train,resume,quant,eval", help="comma list of parts to run")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       args.device if args.device != "auto" else "cpu")
    if dev.type == "cpu" and not args.tiny:
        print("gpu_check: no CUDA device; use --tiny for the CPU run", file=sys.stderr)
        return 2
    out = Path(args.out)
    if keep_existing(out, args.tiny) and not args.force:
        print(f"gpu_check: {out} holds a full GPU result; a --tiny run does not replace it (--force, or --out)")
        return 0
    if dev.type == "cpu":
        torch.set_num_threads(1)
    parts = [p for p in args.parts.split(",") if p]
    funcs = {"train": part_train, "resume": part_resume, "quant": part_quant, "eval": part_eval}
    bad = sorted(set(parts) - set(funcs))
    if bad:
        raise SystemExit(f"--parts: unknown {bad}; choose from {sorted(funcs)}")
    sizes = TINY if args.tiny else GPU
    t_start = time.perf_counter()
    res = {"bench": "gpu_check", **environment(dev, args.tiny), "sizes": asdict(sizes), "submission": SUBMISSION,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "parts": {}, "skipped": {}, "errors": {}, "checks": {}}
    with tempfile.TemporaryDirectory(prefix="gepa_gpu_check_") as td:
        work = Path(td)
        has_spm = have("sentencepiece")
        data = synthetic_data_dir(work / "data", train_tokens=sizes.train_tokens, val_tokens=sizes.val_tokens,
                                  tokenizer=has_spm)
        chk = Check(sizes, dev, data, work, args)
        res["luts"] = chk.luts_source
        res["params"] = chk.n_params
        for name in parts:
            if name in ("train", "resume") and not has_spm:
                res["skipped"][name] = "sentencepiece is not installed: the trainer needs a tokenizer file"
                continue
            t0 = time.perf_counter()
            try:
                res["parts"][name] = {**funcs[name](chk, res), "wall_s": None}
            except Exception as e:  # keep the other parts' numbers
                res["errors"][name] = f"{type(e).__name__}: {e}\n" + traceback.format_exc()[-3000:]
                print(f"gpu_check: part {name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            else:
                res["parts"][name]["wall_s"] = time.perf_counter() - t0
            res["projection"] = projections(res["parts"], micro=sizes.micro_batch_tokens)
            if args.tiny:
                res["projection"]["note"] = "--tiny shapes: the formulas run, the numbers project nothing"
            res["wall_s"] = time.perf_counter() - t_start
            res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            write_result(out, res)
    ok = not res["errors"] and all(res["checks"].values())
    print()
    print(markdown_table(("part", "", "", "", ""), summary_rows(res)))
    print("checks: " + " ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in res["checks"].items()))
    for k, v in res["skipped"].items():
        print(f"skipped {k}: {v}")
    for k, v in res["errors"].items():
        print(f"ERROR {k}: {v.splitlines()[0]}")
    print(f"device: {res['device']}  torch {res['torch']}  cuda {res['cuda']}  wall {res['wall_s']:.0f} s")
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
