"""Evaluation throughput: non-overlapping vs sliding (stride 64) vs streaming, and TTT cost
per chunk.

Part 1 (always): for the tiny and small presets, with 1 and 2 processes (gloo on CPU, one
thread each), times on the same val tokens
  * non-overlapping windows of seq_len,
  * the sliding window, stride 64 (tail_rescore off: every target once; see docs/evaluation.md),
  * the streaming (banded-attention) evaluation,
  * legal TTT on a few chunks (score and train seconds per chunk),
and reports scored tokens/s and each mode's time per scored token relative to the
non-overlapping evaluation, measured side by side in the same process.

Part 2 (``--run-dir RUN``): the bpb of every mode on that run's weights (``--run-weights``;
default its int6 artifact when present, else its EMA weights), with two targets checked: streaming time per
scored token <= 1.5x non-overlapping, streaming bpb <= sliding bpb + 0.005.

    .venv/bin/python bench/eval_throughput.py --quick
    .venv/bin/python bench/eval_throughput.py --run-dir runs/tiny
Writes bench/results/eval_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gepalib.config import get_preset, override  # noqa: E402
from gepalib.paths import resolve_path  # noqa: E402

STRIDE = 64


def _val_and_luts(cfg, n_targets: int, seq_len: int):
    """Real val tokens of the preset's data dir when present, else a random stream."""
    from gepalib.bpb import build_byte_luts
    from gepalib.data import load_val_tokens

    data_dir = resolve_path(cfg.data.data_dir)
    try:
        val = load_val_tokens(data_dir, seq_len, cfg.model.vocab_size, max_targets=n_targets)
        luts = build_byte_luts(cfg.data.tokenizer_file(), cfg.model.vocab_size)
        return val, luts, str(data_dir)
    except (FileNotFoundError, ValueError):
        tok = ROOT.parent / "shared" / "tokenizers" / "fineweb_1024_bpe.model"
        g = torch.Generator().manual_seed(0)
        n = (n_targets // seq_len) * seq_len
        return torch.randint(0, cfg.model.vocab_size, (n + 1,), generator=g), \
            build_byte_luts(tok, cfg.model.vocab_size), "random"


def measure(preset: str, n_targets: int, ttt_chunks: int, ttt_chunk_tokens: int = 0, reps: int = 2,
            data: tuple | None = None) -> dict:
    """Timings of every mode in this process (rank 0 returns the row; all ranks take part).
    The three evaluations are interleaved ``reps`` times and each keeps its fastest run.
    ``data``: (val tokens, byte LUTs, source name) to use instead of the preset's data dir."""
    from gepalib import dist
    from gepalib.eval.windows import eval_nonoverlapping, eval_sliding
    from gepalib.model import GPT
    from gepalib.eval.streaming import eval_streaming
    from gepalib.eval.ttt import run_ttt

    cfg = override(get_preset(preset), device="cpu")
    if ttt_chunk_tokens:
        cfg = override(cfg, ttt_chunk_tokens=ttt_chunk_tokens)
    T = cfg.train.seq_len
    val, luts, src = data or _val_and_luts(cfg, n_targets, T)
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    bs = cfg.eval.eval_batch_seqs
    eval_nonoverlapping(model, val[: 2 * T + 1], luts, T, bs)  # warm-up (allocator, kernels)
    rows = {}
    for _ in range(reps):
        for name, fn in (
            ("nonoverlapping", lambda: eval_nonoverlapping(model, val, luts, T, bs)),
            ("sliding64", lambda: eval_sliding(model, val, luts, T, STRIDE, bs, tail_rescore=False)),
            ("streaming", lambda: eval_streaming(model, val, luts, T, max_lanes=bs)),
        ):
            dist.barrier()
            r = fn()
            if name not in rows or r.seconds < rows[name]["seconds"]:
                rows[name] = {"seconds": r.seconds, "tokens": r.tokens, "tok_s": r.tokens / r.seconds,
                              "bpb": r.val_bpb}
    base = rows["nonoverlapping"]["seconds"] / rows["nonoverlapping"]["tokens"]
    for r in rows.values():
        r["time_per_token_vs_nonoverlapping"] = (r["seconds"] / r["tokens"]) / base
    # TTT: the preset's chunk size and epochs on the first few chunks
    C = cfg.ttt.ttt_chunk_tokens
    tval = val[: min(val.numel() - 1, ttt_chunks * C) + 1]
    r = run_ttt(model, tval, luts, T, cfg.ttt, cfg.eval)
    ch = r.extra["chunks"]
    trained = [c for c in ch if c["train_loss_first"] is not None]
    rows["ttt"] = {"chunks": len(ch), "chunk_tokens": C, "epochs": cfg.ttt.ttt_epochs,
                   "score_s_per_chunk": sum(c["score_seconds"] for c in ch) / len(ch),
                   "train_s_per_chunk": (sum(c["train_seconds"] for c in trained) / len(trained)) if trained else 0.0,
                   "seconds": r.seconds, "tokens": r.tokens, "tok_s": r.tokens / r.seconds}
    world = torch.distributed.get_world_size() if dist.active() else 1
    return {"preset": preset, "world_size": world, "seq_len": T, "targets": val.numel() - 1, "val_source": src,
            "params": sum(p.numel() for p in model.parameters()), "modes": rows}


def worker(args) -> None:
    from gepalib import dist

    torch.set_num_threads(1)
    info = dist.init("cpu")
    row = measure(args.preset, args.targets, args.ttt_chunks, args.ttt_chunk_tokens, args.reps)
    if info.is_main:
        Path(args.out).write_text(json.dumps(row))
    dist.shutdown()


def launch(preset: str, world: int, targets: int, ttt_chunks: int, ttt_chunk_tokens: int, reps: int) -> dict:
    """Run :func:`measure` in ``world`` fresh processes (one thread each) and return rank 0's row."""
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "row.json"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = []
        for rank in range(world):
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
            if world > 1:
                env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port))
            cmd = [sys.executable, __file__, "--worker", "--preset", preset, "--targets", str(targets),
                   "--ttt-chunks", str(ttt_chunks), "--ttt-chunk-tokens", str(ttt_chunk_tokens),
                   "--reps", str(reps), "--out", str(out)]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        logs = [p.communicate()[0].decode() for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"worker failed:\n{logs[0][-3000:]}")
        return json.loads(out.read_text())


def run_dir_bpb(run_dir: str, val_targets: int, with_ttt: bool, weights: str = "auto") -> dict:
    """bpb and timing of every mode on a trained run (single process)."""
    from gepalib.run.pipeline import evaluate_run

    rd = resolve_path(run_dir)
    if weights == "auto":
        weights = "artifact" if (rd / "final_model.int6.gpz").exists() else "ema"
    kw = {"val_tokens": val_targets} if val_targets else {}
    res = evaluate_run(rd, sliding=True, streaming=True, ttt=with_ttt, weights=weights, record=False,
                       log=None, tail_rescore=False, **kw)
    rows = {name: {"bpb": r.val_bpb, "loss": r.val_loss, "tokens": r.tokens, "seconds": r.seconds}
            for name, r in res.items()}
    by_kind = {}
    for name, r in rows.items():
        kind = "ttt" if "_ttt" in name else "streaming" if "streaming" in name else \
            "sliding64" if "sliding" in name else "nonoverlapping"
        by_kind[kind] = r
    nov, sl, st = by_kind["nonoverlapping"], by_kind["sliding64"], by_kind["streaming"]
    ratio = (st["seconds"] / st["tokens"]) / (nov["seconds"] / nov["tokens"])
    return {"run_dir": str(rd), "weights": weights, "stages": rows, "modes": by_kind,
            "streaming_time_per_token_vs_nonoverlapping": ratio,
            "streaming_minus_sliding_bpb": st["bpb"] - sl["bpb"],
            "target_time_ok": ratio <= 1.5, "target_bpb_ok": st["bpb"] <= sl["bpb"] + 0.005}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny only, few tokens")
    ap.add_argument("--run-dir", default=None, help="a trained run: report each mode's bpb on it")
    ap.add_argument("--run-val-tokens", type=int, default=0, help="cap on the run's val targets (0 = all)")
    ap.add_argument("--run-ttt", action="store_true", help="also run TTT (the run's settings) on --run-dir")
    ap.add_argument("--run-weights", default="auto", choices=("auto", "artifact", "ema", "live"),
                    help="weights of --run-dir to score (auto: the artifact if present, else EMA)")
    ap.add_argument("--worlds", default="1,2", help="process counts to compare (default 1,2)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_throughput.json"))
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="tiny", help=argparse.SUPPRESS)
    ap.add_argument("--targets", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ttt-chunks", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--ttt-chunk-tokens", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0

    worlds = [int(w) for w in args.worlds.split(",")]
    # (preset, val targets, TTT chunks, TTT chunk tokens (0 = the preset's), repetitions)
    plan = [("tiny", 4096, 2, 2048, 1)] if args.quick else [("tiny", 32768, 3, 0, 2), ("small", 16384, 2, 8192, 2)]
    rows = []
    print(f"{'preset':<7}{'procs':>6}{'mode':>16}{'tokens':>9}{'seconds':>9}{'tok/s':>9}{'x nonov':>9}{'bpb':>9}")
    for preset, targets, chunks, chunk_tokens, reps in plan:
        for w in worlds:
            row = launch(preset, w, targets, chunks, chunk_tokens, reps)
            rows.append(row)
            for mode, m in row["modes"].items():
                if mode == "ttt":
                    continue
                print(f"{preset:<7}{w:>6}{mode:>16}{m['tokens']:>9}{m['seconds']:>9.2f}{m['tok_s']:>9.0f}"
                      f"{m['time_per_token_vs_nonoverlapping']:>9.2f}{m['bpb']:>9.4f}")
            t = row["modes"]["ttt"]
            print(f"{preset:<7}{w:>6}{'ttt':>16}  chunk {t['chunk_tokens']} x{t['epochs']} epochs: "
                  f"score {t['score_s_per_chunk']:.2f}s + train {t['train_s_per_chunk']:.2f}s per chunk")
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads_per_process": 1},
              "quick": args.quick, "throughput": rows, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.run_dir:
        rb = run_dir_bpb(args.run_dir, args.run_val_tokens, args.run_ttt, args.run_weights)
        result["run"] = rb
        print(f"\nrun {rb['run_dir']} ({rb['weights']} weights)")
        print(f"{'mode':<16}{'bpb':>10}{'tokens':>10}{'seconds':>9}{'us/token':>10}")
        for mode, m in rb["modes"].items():
            print(f"{mode:<16}{m['bpb']:>10.5f}{m['tokens']:>10}{m['seconds']:>9.2f}"
                  f"{1e6 * m['seconds'] / m['tokens']:>10.1f}")
        print(f"streaming_time_per_token_vs_nonoverlapping:{rb['streaming_time_per_token_vs_nonoverlapping']:.3f} "
              f"(target <= 1.5: {'PASS' if rb['target_time_ok'] else 'FAIL'})")
        print(f"streaming_minus_sliding_bpb:{rb['streaming_minus_sliding_bpb']:+.5f} "
              f"(target <= +0.005: {'PASS' if rb['target_bpb_ok'] else 'FAIL'})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from gepalib.fsio import atomic_write_json

    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
