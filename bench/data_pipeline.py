"""Data-layer timings: prepare, train stream, val load, byte accounting.

* ``prepare_sotu`` from scratch into a temp dir (tokenizer training + encoding +
  shards + sha256), then again (the idempotent reuse path).
* ``TrainLoader.next_batch`` at the run's per-rank size (T = 98,304, seq 2048)
  on synthetic shards, for W=1 and for rank 3 of W=8, side by side with a
  reference-style stream that reads each whole shard into RAM with np.fromfile.
* ``load_val_tokens`` and ``target_bytes`` on the sotu val set.

    .venv/bin/python bench/data_pipeline.py            # full run
    .venv/bin/python bench/data_pipeline.py --quick    # smoke run
Writes bench/results/data_pipeline.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gepalib import data as D  # noqa: E402
from gepalib.bpb import build_byte_luts, target_bytes  # noqa: E402
from gepalib.prepare import prepare_sotu  # noqa: E402


class FromfileStream:
    """Reference-style stream: whole shards loaded into RAM with np.fromfile, same slice rule."""

    def __init__(self, files, rank, world):
        self.files, self.rank, self.world = files, rank, world
        self.i, self.pos, self.toks = 0, 0, np.fromfile(files[0], dtype="<u2", offset=1024)

    def take(self, n):
        parts = []
        while n:
            if self.pos == len(self.toks):
                self.i = (self.i + 1) % len(self.files)
                self.toks, self.pos = np.fromfile(self.files[self.i], dtype="<u2", offset=1024), 0
            k = min(n, len(self.toks) - self.pos)
            parts.append(self.toks[self.pos:self.pos + k])
            self.pos, n = self.pos + k, n - k
        return np.concatenate(parts)

    def next_batch(self, T, seq_len):
        chunk = self.take(self.world * (T + 1)).astype(np.int64)[self.rank * (T + 1):(self.rank + 1) * (T + 1)]
        t = torch.from_numpy(chunk)
        return t[:-1].view(-1, seq_len), t[1:].view(-1, seq_len)


def time_batches(loader, T, seq_len, steps):
    """Mean seconds per batch (a mean, so shard switches and their checks are included)."""
    t = time.perf_counter()
    for _ in range(steps):
        loader.next_batch(T, seq_len)
    return (time.perf_counter() - t) / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_pipeline.json"))
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    res: dict = {"bench": "data_pipeline", "quick": args.quick, "torch": torch.__version__,
                 "cpu_count": os.cpu_count(), "machine": platform.machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        m = prepare_sotu(tmp / "sotu", progress=False, verbose=False)
        res["prepare_fresh_s"] = time.perf_counter() - t
        res["prepare_tokenizer_s"] = m["timing_s"]["tokenizer"]
        t = time.perf_counter()
        assert prepare_sotu(tmp / "sotu", progress=False, verbose=False)["reused"]
        res["prepare_reuse_s"] = time.perf_counter() - t
        res["sotu"] = {s: {k: m["splits"][s][k] for k in ("documents", "tokens", "bytes_per_token", "unk_tokens")}
                       for s in ("train", "val")}

        t = time.perf_counter()
        val = D.load_val_tokens(tmp / "sotu", 2048, vocab_size=1024)
        res["load_val_s"] = time.perf_counter() - t
        luts = build_byte_luts(tmp / "sotu" / "tokenizer.model", 1024)
        t = time.perf_counter()
        nbytes = int(target_bytes(val[:-1], val[1:], luts).sum())
        res["target_bytes_tokens_per_s"] = (len(val) - 1) / (time.perf_counter() - t)
        res["val_targets"], res["val_bytes"] = len(val) - 1, nbytes

        shard_tokens = 2_000_000 if args.quick else 20_000_000
        n_shards = 3
        rng = np.random.default_rng(0)
        for i in range(n_shards):
            D.write_shard(tmp / "syn" / f"syn_train_{i:06d}.bin", rng.integers(0, 1024, size=shard_tokens))
        files = D.list_shards(tmp / "syn", "train")
        T, seq_len = 98_304, 2048
        steps = 10 if args.quick else 60
        rows = []
        for world, rank in ((1, 0), (8, 3)):
            ours = D.TrainLoader(tmp / "syn", rank=rank, world_size=world, vocab_size=1024)
            ref = FromfileStream(files, rank, world)
            t_ours, t_ref = [], []
            for _ in range(3):  # interleave so both see the same machine load
                t_ours.append(time_batches(ours, T, seq_len, steps // 3 or 1))
                t_ref.append(time_batches(ref, T, seq_len, steps // 3 or 1))
            row = {"world": world, "rank": rank, "tokens_per_rank": T, "ours_batch_ms": 1e3 * statistics.median(t_ours),
                   "fromfile_batch_ms": 1e3 * statistics.median(t_ref)}
            row["speedup_vs_fromfile"] = row["fromfile_batch_ms"] / row["ours_batch_ms"]
            rows.append(row)
        res["train_loader"] = rows

    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"prepare sotu: fresh {res['prepare_fresh_s']:.2f}s (tokenizer {res['prepare_tokenizer_s']:.2f}s), "
          f"reuse {res['prepare_reuse_s']:.2f}s")
    for s, st in res["sotu"].items():
        print(f"  {s:5s} docs {st['documents']:5d} tokens {st['tokens']:8d} bytes/token {st['bytes_per_token']:.3f}"
              f" unk {st['unk_tokens']}")
    print(f"load_val_tokens: {res['load_val_s'] * 1e3:.1f} ms; "
          f"target_bytes: {res['target_bytes_tokens_per_s']:.3g} tok/s")
    print(f"{'world':>5} {'rank':>4} {'ours ms':>9} {'fromfile ms':>12} {'speedup':>8}")
    for r in rows:
        print(f"{r['world']:5d} {r['rank']:4d} {r['ours_batch_ms']:9.2f} {r['fromfile_batch_ms']:12.2f} "
              f"{r['speedup_vs_fromfile']:8.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
