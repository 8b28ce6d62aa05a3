"""Trainer throughput, overhead and a Muon+GEPA vs plain-AdamW race.

Three measurements, all on the embedded State of the Union data (``data/sotu_sp1024``,
prepared if missing), one intra-op thread per process (on a shared 2-core box more
threads only make OpenMP spin):

1. Throughput: tokens/s and MFU of ``python -m gepalib train`` for the ``tiny`` and
   ``small`` shapes with 1 and 2 processes (torchrun, gloo), side by side with a plain
   nanoGPT-style GPT of identical shape (same d, layers, heads, KV heads, MLP width,
   vocab, seq len; LayerNorm, learned positions, GELU, tied head, AdamW) trained by a
   minimal loop written here. MFU = (6 N_matmul + 12 L d T) FLOPs/token * tokens/s /
   (processes * fp32 matmul FLOP/s of one thread, measured in this run).
2. Trainer overhead for ``tiny``: 1 - (bare forward+backward time) / (trainer step
   time), both measured in this process, plus a per-component breakdown (data, clip,
   AdamW, Muon, EMA).  Target: < 15%.
3. Equal wall-clock race on ``tiny`` shapes: the trainer (Muon + AdamW groups, EMA,
   wall-clock warmdown) vs the plain AdamW GPT (warm-up + cosine in wall-clock), each
   given the same training seconds; both val_bpb curves go into the JSON.

    .venv/bin/python bench/train_throughput.py            # full (~12 min on a busy 2-core box)
    .venv/bin/python bench/train_throughput.py --quick    # smoke (~3 min)
Writes bench/results/train_throughput.json (or --out) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import common  # noqa: E402
from bench.common import matmul_params, plain_adamw, plain_for  # noqa: E402
from gepalib import dist  # noqa: E402
from gepalib.config import get_preset  # noqa: E402

DEFAULT_DATA = ROOT / "data" / "sotu_sp1024"


# ---------------------------------------------------------------------------
# FLOPs and the matmul reference


def matmul_flops_per_s(n: int = 1024, reps: int = 5) -> float:
    """Best-of-``reps`` fp32 n x n matmul FLOP/s with the current thread setting."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def flops_per_token(n_matmul: int, layers: int, d: int, seq_len: int) -> float:
    """6 N (forward + backward matmuls) + 12 L d T (attention scores and values, PaLM convention)."""
    return common.flops_per_token(n_matmul, layers, d, seq_len, causal=False)


# ---------------------------------------------------------------------------
# The plain baseline (bench/common.py's nanoGPT-style GPT of the same shape), AdamW


def worker_plain(a: argparse.Namespace) -> None:
    """The plain loop (1 process or under torchrun): AdamW(lr, 0.9/0.95, wd 0.1 on 2-D), clip 1.0,
    ``warmup`` steps of linear warm-up, then cosine to 10% over the step or wall-clock budget."""
    from gepalib.bpb import build_byte_luts
    from gepalib.data import TrainLoader, load_val_tokens
    from gepalib.eval.windows import eval_nonoverlapping

    cfg = json.loads(a.cfg_json)
    cfg = get_preset(cfg.pop("preset"), **cfg)
    info = dist.init("cpu")
    t = cfg.train
    accum = t.batch_tokens // (info.world_size * t.micro_batch_tokens)
    torch.manual_seed(t.seed)
    model = plain_for(cfg)
    opt = plain_adamw(model, a.lr)
    loader = TrainLoader(cfg.data.data_dir, info.rank, info.world_size, cfg.model.vocab_size)
    val = load_val_tokens(cfg.data.data_dir, t.seq_len, cfg.model.vocab_size, max_targets=cfg.data.val_tokens)
    luts = build_byte_luts(cfg.data.tokenizer_file(), cfg.model.vocab_size)
    params = list(model.parameters())

    def lr_at(step: int, elapsed: float) -> float:
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        prog = elapsed / a.budget if a.budget > 0 else step / t.steps
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0))))

    curve, train_time, step, step_times = [], 0.0, 0, []
    if a.val_every:
        curve.append({"step": 0, "train_time_s": 0.0, "val_bpb": eval_nonoverlapping(model, val, luts, t.seq_len).val_bpb})
    while True:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, train_time)
        for _ in range(accum):
            x, y = loader.next_batch(t.micro_batch_tokens, t.seq_len)
            (model(x, y) / accum).backward()
        if dist.active():
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce_mean(flat)
            off = 0
            for p in params:
                p.grad.copy_(flat[off:off + p.numel()].view_as(p))
                off += p.numel()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if a.budget > 0 and dist.active():  # agree on the clock
            dt = float(dist.broadcast(torch.tensor([dt], dtype=torch.float64))[0])
        train_time += dt
        step_times.append(dt)
        step += 1
        done = train_time >= a.budget if a.budget > 0 else step >= t.steps
        if a.val_every and (step % a.val_every == 0 or done):
            curve.append({"step": step, "train_time_s": train_time,
                          "val_bpb": eval_nonoverlapping(model, val, luts, t.seq_len).val_bpb})
        if done:
            break
    half = step_times[len(step_times) // 2:]
    ms = 1000 * sum(half) / len(half)
    if info.is_main:
        Path(a.out).write_text(json.dumps({"ms_per_step": ms, "tok_per_s": t.batch_tokens / (ms / 1000), "steps": step,
                                           "train_time_s": train_time, "curve": curve,
                                           "n_matmul": matmul_params(model)}))
    dist.shutdown()


# ---------------------------------------------------------------------------
# Launchers (each configuration is a fresh process group of 1 or 2 processes)


def _env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", CI="1")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def _launch(nproc: int, target: list[str], timeout: float) -> None:
    if nproc == 1:
        cmd = [sys.executable] + target
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] + target
    p = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def _flags(cfg_kw: dict) -> list[str]:
    out = []
    for k, v in cfg_kw.items():
        out += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return out


def run_gepa(preset: str, nproc: int, kw: dict, tmp: Path, timeout: float = 1800) -> dict:
    rd = tmp / f"gepa_{preset}_{nproc}_{time.monotonic_ns()}"
    _launch(nproc, ["-m", "gepalib", "train", "--preset", preset, "--run-dir", str(rd)] + _flags(kw), timeout)
    rows = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = [r for r in rows if "ms_per_step" in r][-1]
    curve = [{"step": r["step"], "train_time_s": r.get("train_time_s", 0.0), "val_bpb": r["val_bpb"],
              "val_bpb_ema": r["val_bpb_ema"]} for r in rows if "val_bpb" in r]
    return {"ms_per_step": last["ms_per_step"], "tok_per_s": last["tok_per_s"], "steps": last["step"],
            "train_time_s": last.get("train_time_s"), "curve": curve}


def run_plain(preset: str, nproc: int, kw: dict, tmp: Path, *, lr: float, budget: float = 0.0,
              val_every: int = 0, warmup: int = 20, timeout: float = 1800) -> dict:
    out = tmp / f"plain_{preset}_{nproc}_{time.monotonic_ns()}.json"
    cfg_json = json.dumps({"preset": preset, **kw})
    _launch(nproc, [str(Path(__file__).resolve()), "--worker-plain", "--cfg-json", cfg_json, "--out", str(out),
                    "--lr", str(lr), "--budget", str(budget), "--val-every", str(val_every),
                    "--warmup", str(warmup)], timeout)
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------
# Trainer overhead (in this process)


def trainer_overhead(data_dir: Path, steps: int, tmp: Path) -> dict:
    """Overhead of the trainer for `tiny`: (a) per component, interleaved in one manual loop
    (data, forward+backward, clip, AdamW, Muon, EMA); (b) the trainer's own step time vs bare
    forward+backward measured just before and just after it (a sandwich against load drift)."""
    from gepalib.data import TrainLoader
    from gepalib.model import GPT
    from gepalib.muon import Muon
    from gepalib.optim import build_optimizers, set_lr
    from gepalib.rundir import RunDir
    from gepalib.ema import EMA
    from gepalib.train import train

    cfg = get_preset("tiny", data_dir=str(data_dir), steps=steps, warmdown=0, log_every=max(1, steps // 2),
                     val_every=0, checkpoint_every=0, val_tokens=4096, progress="log")
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opts, _ = build_optimizers(model, cfg.train)
    ema = EMA(model, cfg.train.ema_decay)
    loader = TrainLoader(data_dir, 0, 1, cfg.model.vocab_size)
    n = max(2, steps // 2)

    def manual(n_steps: int) -> dict[str, float]:
        parts = {k: 0.0 for k in ("data", "forward_backward", "clip", "adamw", "muon", "ema")}
        for i in range(n_steps + 1):
            if i == 1:  # first step is warm-up
                parts = {k: 0.0 for k in parts}
            t0 = time.perf_counter()
            x, y = loader.next_batch(cfg.train.micro_batch_tokens, cfg.train.seq_len)
            t1 = time.perf_counter()
            model(x, y).backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), cfg.train.grad_clip)
            t3 = time.perf_counter()
            set_lr(opts, i, cfg.train)
            for o in opts:
                ts = time.perf_counter()
                o.step()
                parts["muon" if isinstance(o, Muon) else "adamw"] += time.perf_counter() - ts
            model.zero_grad(set_to_none=True)
            t4 = time.perf_counter()
            ema.update()
            t5 = time.perf_counter()
            parts["data"] += t1 - t0
            parts["forward_backward"] += t2 - t1
            parts["clip"] += t3 - t2
            parts["ema"] += t5 - t4
        return {k: 1000 * v / n_steps for k, v in parts.items()}

    before = manual(n)
    train(cfg, tmp / "overhead", resume=False)
    step_ms = [r for r in RunDir(tmp / "overhead").read_metrics() if "ms_per_step" in r][-1]["ms_per_step"]
    after = manual(n)
    parts_ms = {k: (before[k] + after[k]) / 2 for k in before}
    fb, total = parts_ms["forward_backward"], sum(parts_ms.values())
    return {"overhead_fraction": 1 - fb / total,  # interleaved in one loop: robust to load drift
            "components_ms": parts_ms, "components_fraction": {k: v / total for k, v in parts_ms.items()},
            "trainer_step_ms": step_ms, "bare_forward_backward_ms_before": before["forward_backward"],
            "bare_forward_backward_ms_after": after["forward_backward"],
            "trainer_vs_bare_overhead": 1 - fb / step_ms}  # separate phases: noisy on a shared box


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 steps, half batch, 10 s race")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput.json"))
    ap.add_argument("--race-seconds", type=float, default=0.0, help="training seconds per side (default 150, quick 10)")
    ap.add_argument("--plain-lr", type=float, default=3e-3)
    ap.add_argument("--parts", default="throughput,overhead,race",
                    help="comma list of parts to (re)run; others keep their numbers from --out")
    # worker mode (internal)
    ap.add_argument("--worker-plain", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cfg-json", help=argparse.SUPPRESS)
    ap.add_argument("--lr", type=float, default=3e-3, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--val-every", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=20, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker_plain:
        torch.set_num_threads(1)
        worker_plain(a)
        return 0

    torch.set_num_threads(1)
    parts = set(a.parts.split(","))
    if not parts <= {"throughput", "overhead", "race"}:
        raise SystemExit(f"--parts: unknown part(s) {sorted(parts - {'throughput', 'overhead', 'race'})}")
    data_dir = Path(a.data_dir)
    if not (data_dir / "manifest.json").exists():
        from gepalib.prepare import prepare_sotu

        prepare_sotu(data_dir, progress=False)
    steps = 3 if a.quick else 12
    race = a.race_seconds or (10.0 if a.quick else 150.0)
    out = Path(a.out)
    # a partial re-run updates the other parts' numbers in place
    result: dict = json.loads(out.read_text()) if parts != {"throughput", "overhead", "race"} and out.exists() else {}
    peak0 = matmul_flops_per_s()
    result.update({"host": platform.node(), "torch": torch.__version__, "cpus": os.cpu_count(),
                   "threads_per_process": 1, "quick": a.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    with tempfile.TemporaryDirectory(prefix="gepa_bench_train_") as td:
        tmp = Path(td)
        if "throughput" in parts:  # 1. -------------------------------------------------
            rows = []
            bt = 2048 if a.quick else 4096
            shapes = {"tiny": dict(seq_len=256, batch_tokens=bt, micro_batch_tokens=bt // 2),
                      "small": dict(seq_len=512, batch_tokens=bt, micro_batch_tokens=bt // 2)}
            from gepalib.model import GPT

            for preset, shape in shapes.items():
                cfg = get_preset(preset, data_dir=str(data_dir), **shape)
                n_mm = {"gepa": matmul_params(GPT(cfg.model)), "plain": matmul_params(plain_for(cfg))}
                for nproc in (1, 2):
                    kw = dict(data_dir=str(data_dir), steps=steps, warmdown=0, log_every=max(1, steps // 2),
                              val_every=0, checkpoint_every=0, val_tokens=4096, progress="log", **shape)
                    for kind in ("gepa", "plain"):
                        r = (run_gepa(preset, nproc, kw, tmp) if kind == "gepa"
                             else run_plain(preset, nproc, kw, tmp, lr=a.plain_lr))
                        fpt = flops_per_token(n_mm[kind], cfg.model.num_layers, cfg.model.model_dim, shape["seq_len"])
                        mfu = fpt * r["tok_per_s"] / (nproc * peak0)
                        rows.append({"model": kind, "preset": preset, "processes": nproc, "tok_per_s": r["tok_per_s"],
                                     "ms_per_step": r["ms_per_step"], "matmul_params": n_mm[kind],
                                     "flops_per_token": fpt, "mfu": mfu, "matmul_flops_per_s_1thread": peak0,
                                     **shape})
                        print(f"{kind:<6}{preset:<7}procs:{nproc} tok_s:{r['tok_per_s']:9.0f} "
                              f"step_ms:{r['ms_per_step']:9.1f} mfu:{mfu:6.3f}", flush=True)
            result["throughput"] = rows
        if "overhead" in parts:  # 2. ---------------------------------------------------
            result["overhead_tiny"] = trainer_overhead(data_dir, 4 if a.quick else 16, tmp)
            print(f"trainer overhead (tiny): {result['overhead_tiny']['overhead_fraction']:.3f}", flush=True)
        if "race" in parts:  # 3. equal wall-clock -----------------------------------------
            race_kw = dict(data_dir=str(data_dir), seq_len=256, batch_tokens=2048, micro_batch_tokens=2048,
                           val_tokens=16384, checkpoint_every=0, progress="log", log_every=25)
            gepa = run_gepa("tiny", 1, {**race_kw, "steps": 100000, "warmdown": 40000, "max_wallclock": race,
                                        "val_every": 25, "muon_momentum_warmup": 100}, tmp)
            plain = run_plain("tiny", 1, {**race_kw, "steps": 100000}, tmp, lr=a.plain_lr, budget=race,
                              val_every=25)
            result["race"] = {"train_seconds_each": race, "config": race_kw, "plain_lr": a.plain_lr,
                              "gepa_muon": gepa["curve"], "plain_adamw": plain["curve"],
                              "gepa_final_val_bpb": gepa["curve"][-1]["val_bpb"],
                              "gepa_final_val_bpb_ema": gepa["curve"][-1]["val_bpb_ema"],
                              "plain_final_val_bpb": plain["curve"][-1]["val_bpb"],
                              "gepa_steps": gepa["steps"], "plain_steps": plain["steps"]}
    peak1 = matmul_flops_per_s()
    result["matmul_fp32_flops_per_s_1thread"] = {"start": peak0, "end": peak1}
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nmatmul fp32 1 thread: {peak0 / 1e9:.1f} GFLOP/s (end of run {peak1 / 1e9:.1f})")
    if "throughput" in result:
        print(f"{'model':<7}{'preset':<7}{'procs':>6}{'tok/s':>10}{'ms/step':>10}{'MFU':>8}")
        for r in result["throughput"]:
            print(f"{r['model']:<7}{r['preset']:<7}{r['processes']:>6}{r['tok_per_s']:>10.0f}"
                  f"{r['ms_per_step']:>10.1f}{r['mfu']:>8.3f}")
    if "overhead_tiny" in result:
        o = result["overhead_tiny"]
        print(f"tiny overhead (data+clip+optimizers+EMA of one step) {100 * o['overhead_fraction']:.1f}% "
              f"(target < 15%): " + " ".join(f"{k}:{v:.1f}ms" for k, v in o["components_ms"].items()))
        print(f"tiny trainer step {o['trainer_step_ms']:.1f} ms vs bare fwd+bwd "
              f"{o['bare_forward_backward_ms_before']:.1f} / {o['bare_forward_backward_ms_after']:.1f} ms "
              f"before/after: {100 * o['trainer_vs_bare_overhead']:.1f}%")
    if "race" in result:
        rc = result["race"]
        print(f"race ({rc['train_seconds_each']:.0f} s each, tiny): gepa+muon val_bpb {rc['gepa_final_val_bpb']:.4f} "
              f"(ema {rc['gepa_final_val_bpb_ema']:.4f}, {rc['gepa_steps']} steps) vs plain adamw "
              f"{rc['plain_final_val_bpb']:.4f} ({rc['plain_steps']} steps)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
