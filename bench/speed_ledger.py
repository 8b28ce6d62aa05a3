"""Speed ledger on this CPU: gepalib's training step against a plain GPT, and its eval modes.

1. Training step, side by side in one process (one torch thread, interleaved repeats,
   median): gepalib.train.Trainer's step -- data, GEPA model forward + backward, global-norm
   clip, the Muon and AdamW groups with the LR/momentum schedule, EMA update -- against a plain
   nanoGPT-style GPT of the same shape (same d_model, layers, heads, KV heads, MLP width,
   vocab, seq len; pre-LN attention + GELU MLP, learned positions, tied head) trained by
   AdamW with clipping. Both read the same synthetic shards through gepalib's TrainLoader.
   Reported: time per token (wall and this thread's CPU time) and gepalib / plain
   (target: within 1.3x), for tiny, a size between (mid) and small, at 1 and 2 threads, with the trainer's Muon and AdamW
   time (each optimizer's step timed) and the bf16/fp32 matmul speed of this CPU: Muon's
   Newton-Schulz runs in bf16, which CPUs without AVX512-BF16/AMX emulate slowly.
2. Eval modes on a tiny model (bench/eval_throughput.py's measurement, in this process):
   non-overlapping, sliding (stride 64), streaming and legal TTT, time per scored token.
   Beside each training row, TTT's training pass (forward + backward + SGD over the same
   tokens, gepalib.eval.ttt_train's training pass) against the same plain step.

The machine may be shared: the JSON keeps the load average before and after, every
repeat's time and the CPU-time ratio, which other processes disturb less than wall time.

    .venv/bin/python bench/speed_ledger.py            # ~3 minutes on a busy 2-core box
    .venv/bin/python bench/speed_ledger.py --quick    # smoke run
Writes bench/results/speed_ledger.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the torch import

import torch  # noqa: E402

from bench.common import (RESULTS, machine_info, markdown_table, plain_adamw, plain_for,  # noqa: E402
                          synthetic_data_dir, write_result)
from gepalib.config import get_preset  # noqa: E402
from gepalib.data import TrainLoader  # noqa: E402

TARGET_RATIO = 1.3
# Model sizes of the growth rows: the presets and one between them (small's recipe, 6 x 192).
SIZES = {"tiny": ("tiny", {}), "small": ("small", {}),
         "mid": ("small", {"num_layers": 6, "model_dim": 192, "mlp_hidden": 576, "xsa_last_n": 2, "ve_layers": (4, 5)})}
PHASES = ("data_forward_backward_clip_ema", "adamw", "muon")


def gepa_step(cfg, run_dir: Path, ns_batched: bool | None = None):
    """gepalib.train.Trainer's step (accumulation 1). Each optimizer's ``step`` is wrapped in a
    timer, so every call also appends its Muon, AdamW and remaining seconds to ``phases``.
    ``ns_batched=False``: Muon's Newton-Schulz one matrix at a time (the code before batching)."""
    from gepalib.muon import Muon
    from gepalib.train import Trainer

    t = Trainer(cfg, run_dir, resume=False)
    for o in t.optimizers:
        if isinstance(o, Muon) and ns_batched is not None:
            o.ns_batched = ns_batched
    phases: dict[str, list[float]] = {k: [] for k in PHASES}
    spent = {"muon": 0.0, "adamw": 0.0}

    def timed(opt):
        inner, kind = opt.step, "muon" if isinstance(opt, Muon) else "adamw"

        def step(*a, **kw):
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                spent[kind] += time.perf_counter() - t0
        return step

    for o in t.optimizers:
        o.step = timed(o)

    def step() -> float:
        spent.update(muon=0.0, adamw=0.0)
        r = t.step()
        phases["muon"].append(spent["muon"])
        phases["adamw"].append(spent["adamw"])
        phases["data_forward_backward_clip_ema"].append(r.seconds - spent["muon"] - spent["adamw"])
        return r.loss
    step.phases = phases
    step.close = t.close
    return step, t.n_params


def plain_step(cfg, run_dir: Path):
    """The plain GPT's AdamW step for the same micro-batch (clip 1.0), read by gepalib's TrainLoader."""
    tc = cfg.train
    loader = TrainLoader(cfg.data.data_dir, 0, 1, cfg.model.vocab_size)
    torch.manual_seed(tc.seed)
    model = plain_for(cfg)
    opt = plain_adamw(model)
    params = list(model.parameters())

    def step() -> float:
        x, y = loader.next_batch(tc.micro_batch_tokens, tc.seq_len)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    step.close = lambda: None
    return step, sum(p.numel() for p in params)


def ttt_train_step(cfg, run_dir: Path):
    """One pass of legal TTT's training (gepalib.eval.ttt_train's training pass, SGD as the default
    TTTConfig, all parameters trainable, one optimizer step over the micro-batch's sequences)
    on the preset's GPT: what TTT pays per token after it scores a chunk."""
    from dataclasses import replace

    from gepalib.eval.ttt_train import make_optimizer, train_steps, trainable_named_params
    from gepalib.model import GPT

    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = GPT(cfg.model)
    n_seqs = max(1, tc.micro_batch_tokens // tc.seq_len)
    tcfg = replace(cfg.ttt, ttt_epochs=1, ttt_batch_seqs=n_seqs, ttt_freeze_blocks=0, ttt_grad_clip=1.0)
    params = [p for _, p in trainable_named_params(model, 0)]
    opt = make_optimizer(params, tcfg)
    g = torch.Generator().manual_seed(tc.seed)
    val = torch.randint(0, cfg.model.vocab_size, (n_seqs * tc.seq_len + 1,), generator=g)
    seqs = [(i * tc.seq_len, tc.seq_len) for i in range(n_seqs)]

    def step() -> float:
        return train_steps(model, val, seqs, params, opt, tcfg.ttt_lr, tcfg, torch.device("cpu"), "none", 0, None)[0]
    step.close = lambda: None
    return step, sum(p.numel() for p in params)


def bf16_matmul_slowdown(n: int = 512, reps: int = 3) -> float:
    """Median time of an n x n bf16 matmul over the fp32 one on this CPU (Muon's Newton-Schulz
    runs in bf16: fast on GPUs, emulated on CPUs without AVX512-BF16/AMX)."""
    times = {}
    for dt in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        a @ b
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t0)
        times[dt] = statistics.median(ts)
    return times[torch.bfloat16] / times[torch.float32]


def race(size: str, data_dir: Path, tokens: int, reps: int, warmup: int = 1, threads: int = 1,
         per_matrix: bool = False) -> dict:
    """gepalib's default step against the plain GPT, interleaved (and, with ``per_matrix``, the
    step with Muon's Newton-Schulz one matrix at a time, the code before batching)."""
    torch.set_num_threads(threads)
    preset, kv = SIZES[size]
    seq = get_preset(preset).train.seq_len
    cfg = get_preset(preset, data_dir=str(data_dir), batch_tokens=tokens, micro_batch_tokens=tokens, device="cpu",
                     val_tokens=4 * seq, progress="log", checkpoint_every=0, **kv)
    steps, params = {}, {}
    makers = [("gepalib", gepa_step), ("plain", plain_step), ("ttt_train", ttt_train_step)]
    if per_matrix:
        makers.append(("gepalib_per_matrix_ns", lambda c, d: gepa_step(c, d, ns_batched=False)))
    for kind, make in makers:
        steps[kind], params[kind] = make(cfg, data_dir.parent / f"run_{size}_{threads}_{kind}")
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    for i in range(warmup + reps):  # interleaved: both see the same load
        for kind, fn in steps.items():
            w0, c0 = time.perf_counter(), time.thread_time()
            fn()
            if i >= warmup:
                wall[kind].append(time.perf_counter() - w0)
                cpu[kind].append(time.thread_time() - c0)
    for fn in steps.values():
        fn.close()
    from gepalib.muon import resolve_ns_dtype

    row = {"preset": size, "tokens_per_step": tokens, "seq_len": cfg.train.seq_len, "reps": reps, "threads": threads,
           "muon_ns_dtype": resolve_ns_dtype(cfg.train.muon_ns_dtype, "cpu"),
           "shape": {k: getattr(cfg.model, k) for k in ("num_layers", "model_dim", "num_heads", "num_kv_heads",
                                                         "mlp_hidden", "vocab_size")}}
    for kind in steps:
        row[kind] = {"params": params[kind], "step_s": wall[kind], "cpu_s": cpu[kind],
                     "us_per_token": 1e6 * statistics.median(wall[kind]) / tokens,
                     "cpu_us_per_token": 1e6 * statistics.median(cpu[kind]) / tokens}
    ph = steps["gepalib"].phases
    row["gepalib"]["phases_us_per_token"] = {k: 1e6 * statistics.median(v[warmup:]) / tokens for k, v in ph.items()}
    row["ratio"] = row["gepalib"]["us_per_token"] / row["plain"]["us_per_token"]
    row["ratio_without_muon"] = (row["gepalib"]["us_per_token"] - row["gepalib"]["phases_us_per_token"]["muon"]) \
        / row["plain"]["us_per_token"]
    row["cpu_ratio"] = row["gepalib"]["cpu_us_per_token"] / row["plain"]["cpu_us_per_token"]
    row["within_target"] = row["ratio"] <= TARGET_RATIO
    row["ttt_train_cpu_ratio"] = row["ttt_train"]["cpu_us_per_token"] / row["plain"]["cpu_us_per_token"]
    if per_matrix:
        row["ratio_per_matrix_ns"] = row["gepalib_per_matrix_ns"]["us_per_token"] / row["plain"]["us_per_token"]
    torch.set_num_threads(1)
    return row


def eval_modes(data_dir: Path, targets: int, ttt_chunk_tokens: int, reps: int) -> dict:
    from bench.eval_throughput import measure
    from gepalib.bpb import build_byte_luts
    from gepalib.data import load_val_tokens

    cfg = get_preset("tiny")
    val = load_val_tokens(data_dir, cfg.train.seq_len, cfg.model.vocab_size, max_targets=targets)
    luts = build_byte_luts(data_dir / "tokenizer.model", cfg.model.vocab_size)
    return measure("tiny", targets, ttt_chunks=2, ttt_chunk_tokens=ttt_chunk_tokens, reps=reps,
                   data=(val, luts, "synthetic"))


def table(res: dict) -> str:
    rows = []
    for r in res["train"]:
        pm = f"; per-matrix NS {r['ratio_per_matrix_ns']:.2f}x" if "ratio_per_matrix_ns" in r else ""
        rows.append((f"train step ({r['tokens_per_step']} tok, {r['threads']} thr, NS {r['muon_ns_dtype']})", r["preset"], f"{r['gepalib']['us_per_token']:.0f}",
                     f"{r['plain']['us_per_token']:.0f}",
                     f"{r['ratio']:.2f}x (cpu {r['cpu_ratio']:.2f}x; without Muon {r['ratio_without_muon']:.2f}x{pm})",
                     f"<= {TARGET_RATIO}x: {'yes' if r['within_target'] else 'NO'}"))
        if "ttt_train" in r:
            rows.append((f"TTT training pass ({r['tokens_per_step']} tok, {r['threads']} thr, SGD)", r["preset"],
                         f"{r['ttt_train']['us_per_token']:.0f}", f"{r['plain']['us_per_token']:.0f}",
                         f"{r['ttt_train']['us_per_token'] / r['plain']['us_per_token']:.2f}x "
                         f"(cpu {r['ttt_train_cpu_ratio']:.2f}x)", ""))
        ph = r["gepalib"]["phases_us_per_token"]
        rows.append(("  gepalib phases", r["preset"], " / ".join(f"{k} {v:.0f}" for k, v in ph.items()), "", "", ""))
    ev = res.get("eval")
    if ev:
        base = ev["modes"]["nonoverlapping"]
        for name, m in ev["modes"].items():
            us = 1e6 * m["seconds"] / m["tokens"]
            rel = us / (1e6 * base["seconds"] / base["tokens"])
            rows.append((f"eval {name}", "tiny", f"{us:.0f}", "-", f"{rel:.2f}x non-overlapping", ""))
    return markdown_table(("what", "preset", "gepalib us/token", "plain us/token", "gepalib / plain", "target"),
                          rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2048 tokens a step, 2 repeats, small eval")
    ap.add_argument("--presets", default="tiny,mid,small", help=f"model sizes, of {', '.join(SIZES)}")
    ap.add_argument("--threads", default="1,2", help="torch threads of the growth rows (tiny and small)")
    ap.add_argument("--tokens", type=int, default=0, help="tokens per training step (default 4096; quick 2048)")
    ap.add_argument("--reps", type=int, default=0, help="timed repeats per model (default 5; quick 2)")
    ap.add_argument("--no-eval", action="store_true", help="skip the eval-mode part")
    ap.add_argument("--eval-targets", type=int, default=0,
                    help="val targets of the eval part (default 8192; quick 4096)")
    ap.add_argument("--out", default=str(RESULTS / "speed_ledger.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tokens = args.tokens or (2048 if args.quick else 4096)
    reps = args.reps or (2 if args.quick else 5)
    res = {"bench": "speed_ledger", "quick": args.quick, "machine": machine_info(), "target_ratio": TARGET_RATIO,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "train": []}
    t0 = time.perf_counter()
    res["bf16_matmul_slowdown"] = bf16_matmul_slowdown()
    with tempfile.TemporaryDirectory(prefix="gepa_ledger_") as td:
        data_dir = synthetic_data_dir(Path(td) / "data", train_tokens=1 << 18, val_tokens=1 << 15)
        sizes = [p for p in args.presets.split(",") if p]
        runs = [(p, 1) for p in sizes] + [(p, int(t)) for t in args.threads.split(",") if t and int(t) != 1
                                          for p in sizes if p != "mid"]
        for size, threads in runs:
            res["train"].append(race(size, data_dir, tokens, reps, threads=threads, per_matrix=threads == 1))
            print(f"{size} ({threads} thr): gepalib/plain {res['train'][-1]['ratio']:.2f}x", flush=True)
        if not args.no_eval:
            targets = args.eval_targets or (4096 if args.quick else 8192)
            res["eval"] = eval_modes(data_dir, targets, max(256, targets // 2), 1 if args.quick else 2)
    res["load_avg_1m_end"] = os.getloadavg()[0]
    res["wall_s"] = time.perf_counter() - t0
    out = write_result(args.out, res)
    print(table(res))
    print(f"load average (1 min): {res['machine']['load_avg_1m']:.2f} at start, {res['load_avg_1m_end']:.2f} at end "
          f"on {res['machine']['cpu_count']} CPUs; one torch thread; wall {res['wall_s']:.0f} s; "
          f"bf16 matmul time {res['bf16_matmul_slowdown']:.2f}x the fp32 one here")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
