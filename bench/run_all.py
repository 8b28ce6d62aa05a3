"""Run every benchmark in bench/, one fresh process each, and print a summary table.

Each benchmark writes ``<results>/<name>.json`` and prints its own short table. The full
pass writes into bench/results/ (the committed numbers); ``--quick`` runs each one's smoke
mode into bench/results/quick/ (git-ignored) so that it never replaces a full result.
The GPU check runs in full on a CUDA machine and as ``--tiny`` elsewhere (which keeps an
existing GPU result in place).

    .venv/bin/python bench/run_all.py                  # make bench (an hour or more on 2 busy cores)
    .venv/bin/python bench/run_all.py --quick          # make bench-quick (~20 minutes there)
    .venv/bin/python bench/run_all.py --only speed_ledger,gpu --quick
    .venv/bin/python bench/run_all.py --list
Writes ``<results>/run_all.json`` (status, seconds and output file of each benchmark).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, ROOT, markdown_table, write_result  # noqa: E402

# name -> (script, extra arguments of the full pass, extra arguments of --quick); each accepts --out.
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "data_pipeline": ("data_pipeline.py", [], ["--quick"]),
    "model_throughput": ("model_throughput.py", [], ["--quick"]),
    "train_throughput": ("train_throughput.py", [], ["--quick"]),
    "eval_throughput": ("eval_throughput.py", [], ["--quick"]),
    "compression": ("compression.py", [], ["--quick"]),
    "speed_ledger": ("speed_ledger.py", [], ["--quick"]),
    "feature_costs": ("feature_costs.py", [], ["--quick"]),
    "gpu": ("gpu_check.py", [], []),
}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def command(name: str, quick: bool, results: Path, cuda: bool) -> list[str]:
    script, full, smoke = BENCHMARKS[name]
    args = list(smoke if quick else full)
    if name == "gpu" and not cuda:
        args.append("--tiny")
    return [sys.executable, str(ROOT / "bench" / script), *args, "--out", str(results / f"{name}.json")]


def run_one(cmd: list[str], timeout: float | None) -> tuple[int, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = 124
    return rc, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="each benchmark's smoke mode, into bench/results/quick/")
    ap.add_argument("--only", default="", help=f"comma list from {', '.join(BENCHMARKS)}")
    ap.add_argument("--skip", default="", help="comma list of benchmarks to leave out")
    ap.add_argument("--results", default="", help="output folder (default bench/results, quick: bench/results/quick)")
    ap.add_argument("--timeout", type=float, default=0, help="seconds per benchmark (0 = none)")
    ap.add_argument("--list", action="store_true", help="print the benchmarks and their commands, run nothing")
    args = ap.parse_args(argv)
    only = [n for n in args.only.split(",") if n]
    skip = {n for n in args.skip.split(",") if n}
    unknown = sorted((set(only) | skip) - set(BENCHMARKS))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    names = [n for n in (only or BENCHMARKS) if n not in skip]
    results = Path(args.results) if args.results else (RESULTS / "quick" if args.quick else RESULTS)
    cuda = cuda_available()
    if args.list:
        for n in names:
            print(f"{n}: {' '.join(command(n, args.quick, results, cuda))}")
        return 0
    rows = []
    for n in names:
        cmd = command(n, args.quick, results, cuda)
        print(f"\n==== {n}: {' '.join(cmd)}", flush=True)
        rc, secs = run_one(cmd, args.timeout or None)
        rows.append({"bench": n, "status": "ok" if rc == 0 else f"failed ({rc})", "seconds": secs,
                     "result": str(results / f"{n}.json"), "command": cmd})
    write_result(results / "run_all.json", {"bench": "run_all", "quick": args.quick, "cuda": cuda,
                                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": rows})
    print()
    print(markdown_table(("benchmark", "status", "seconds", "result"),
                         [(r["bench"], r["status"], f"{r['seconds']:.0f}", os.path.relpath(r["result"], ROOT))
                          for r in rows]))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
