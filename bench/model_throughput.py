"""Forward+backward throughput of the GEPA model on CPU.

For each preset (tiny, small) it times one fwd+bwd step of the model with every
GEPA feature on (the preset) and of the same-size plain GPT (every GEPA feature
off: no bigram, smear, XSA, value embeddings, gated skips, LN scale, Star-ReLU
gains; full RoPE), interleaving the two so that both see the same machine load.
It also times a square fp32 matmul in the same run and reports model FLOPs
utilisation (MFU) against it.

Model FLOPs per token = 6 * (matmul weights incl. the tied head) + 6 * L * T * d
(causal attention scores and mixing, forward + backward).

A third row, "ref2x128", is a 2-layer d=128 seq-256 shape whose plain fp32 speed is
known (about 32k tokens/s on 2 free cores), for calibration.

Clocks: --clock wall (default) times real seconds; --clock cpu times this thread's CPU
seconds with one torch thread, which is stable on a machine shared with other jobs.
OMP_WAIT_POLICY defaults to PASSIVE here: with the default spinning policy two OpenMP
threads on a busy 2-core box run ~20x slower.

    .venv/bin/python bench/model_throughput.py            # full run
    .venv/bin/python bench/model_throughput.py --quick    # smoke run
    .venv/bin/python bench/model_throughput.py --clock cpu
Writes bench/results/model_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the torch import

import torch  # noqa: E402

from bench import common  # noqa: E402
from gepalib.config import ModelConfig, get_preset, override  # noqa: E402
from gepalib.model import GPT  # noqa: E402

PLAIN = dict(bigram=False, smear=False, xsa_last_n=0, ve_layers=(), skip_mode="add", ln_scale=False,
             mlp_act="relu2")


def plain_of(m: ModelConfig) -> dict:
    return dict(PLAIN, rope_dims=m.head_dim)


def flops_per_token(model: GPT, seq_len: int) -> float:
    """6 * matmul weights (2-D, incl. tied head; lookup tables excluded) + causal attention."""
    cfg = model.cfg
    return common.flops_per_token(common.matmul_params(model), cfg.num_layers, cfg.model_dim, seq_len)


CLOCK = time.perf_counter


def matmul_flops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t = CLOCK()
        a @ b
        times.append(CLOCK() - t)
    return 2.0 * n ** 3 / statistics.median(times)


def make_step(model: GPT, batch: int, seq_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.cfg.vocab_size, (batch, seq_len + 1), generator=g)
    idx, tgt = x[:, :-1], x[:, 1:]

    def step() -> float:
        t = CLOCK()
        loss = model(idx, tgt)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return CLOCK() - t
    return step


REF2 = dict(num_layers=2, model_dim=128, num_heads=4, num_kv_heads=2, mlp_hidden=384, rope_dims=8,
            rope_train_seq_len=256, bigram_buckets=1024, bigram_dim=32, xsa_last_n=1, ve_layers=(0, 1),
            ve_dim=32, embed_dtype="float32", seq_len=256, micro_batch_tokens=8192)
ROWS = {"tiny": ("tiny", {}), "small": ("small", {}), "ref2x128": ("tiny", REF2)}


def bench_preset(name: str, steps: int, warmup: int) -> dict:
    base, overrides = ROWS[name]
    cfg = get_preset(base, **overrides)
    T = cfg.train.seq_len
    B = max(1, cfg.train.micro_batch_tokens // T)
    torch.manual_seed(0)
    variants = {"gepa": GPT(cfg.model), "plain": GPT(override(cfg, **plain_of(cfg.model)).model)}
    steps_fn = {k: make_step(m, B, T) for k, m in variants.items()}
    for _ in range(warmup):
        for f in steps_fn.values():
            f()
    times = {k: [] for k in variants}
    for _ in range(steps):  # interleave so both see the same load
        for k, f in steps_fn.items():
            times[k].append(f())
    out = {"preset": name, "batch": B, "seq_len": T, "tokens_per_step": B * T, "steps": steps}
    for k, m in variants.items():
        med = statistics.median(times[k])
        out[k] = {
            "params": sum(p.numel() for p in m.parameters()),
            "step_s_median": med,
            "step_s_min": min(times[k]),
            "tokens_per_s": B * T / med,
            "flops_per_token": flops_per_token(m, T),
        }
    out["gepa_over_plain_time_per_token"] = out["gepa"]["step_s_median"] / out["plain"]["step_s_median"]
    out["model"] = {k: getattr(cfg.model, k) for k in ("num_layers", "model_dim", "num_heads", "mlp_hidden")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few steps (smoke run)")
    ap.add_argument("--presets", default="tiny,small,ref2x128", help=f"comma list from {sorted(ROWS)}")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall seconds, or this thread's CPU seconds (forces one thread)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "model_throughput.json"))
    args = ap.parse_args(argv)
    global CLOCK
    if args.clock == "cpu":
        CLOCK, args.threads = time.thread_time, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, warmup = (3, 1) if args.quick else (10, 2)
    names = [p for p in args.presets.split(",") if p]
    for p in names:
        if p not in ROWS:
            raise SystemExit(f"unknown row {p!r}; choose from {sorted(ROWS)}")

    peak = matmul_flops(reps=5 if args.quick else 20)
    rows = [bench_preset(p, steps, warmup) for p in names]
    peak_after = matmul_flops(reps=5 if args.quick else 20)
    peak = max(peak, peak_after)
    for r in rows:
        for k in ("gepa", "plain"):
            r[k]["mfu"] = r[k]["tokens_per_s"] * r[k]["flops_per_token"] / peak

    result = {
        "bench": "model_throughput",
        "quick": args.quick,
        "clock": args.clock,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_avg_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "matmul_fp32_flops": peak,
        "rows": rows,
    }
    by = {r["preset"]: r for r in rows}
    if "tiny" in by and "small" in by:
        result["small_over_tiny_time_per_token"] = by["tiny"]["gepa"]["tokens_per_s"] / by["small"]["gepa"]["tokens_per_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)

    print(f"matmul_fp32_gflops: {peak / 1e9:.1f}  threads: {torch.get_num_threads()}  clock: {args.clock}  "
          f"load_avg_1m: {result['load_avg_1m']:.1f}")
    print(f"{'preset':<9} {'variant':<6} {'params':>10} {'tok/s':>9} {'ms/step':>8} {'MFU':>6}  gepa/plain")
    for r in rows:
        for k in ("gepa", "plain"):
            v = r[k]
            ratio = f"{r['gepa_over_plain_time_per_token']:.2f}x" if k == "gepa" else ""
            print(f"{r['preset']:<9} {k:<6} {v['params']:>10,} {v['tokens_per_s']:>9,.0f} "
                  f"{v['step_s_median'] * 1e3:>8.1f} {v['mfu']:>6.1%}  {ratio}")
    if "small_over_tiny_time_per_token" in result:
        print(f"small_over_tiny_time_per_token: {result['small_over_tiny_time_per_token']:.2f}")
    print(f"wrote: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
