"""One-command GPU check of gepa11: speed, memory, MFU, compilation, resume, int6 artifact, evaluations.

Made for a GPU lent once for a few minutes: it cannot die before it measures, and one failing
part never costs the others. On one CUDA GPU, with data it makes itself (random 8-token phrases
written as challenge shards, a SentencePiece tokenizer trained on made-up text for the byte
table; no network, no prepared data):

  preflight       imports (numpy, tqdm, sentencepiece, zstandard, papermill, jupytext, scipy, ...),
                  bf16, flash SDPA on the model's attention shape, triton, free GPU memory; the
                  parts are planned from it (a missing package skips what needs it, with why);
  sdpa            the model's forward+backward with SDPA restricted to flash (the kernel it runs);
  train_compiled  gepa11 at the submission's micro-batch (98,304 tokens) through
                  gepalib.train.Trainer, torch.compile with fullgraph=True first (recorded whether
                  it held; else the default compile), the undone 20-step warm-up, 20 timed steps:
                  ms/step, tokens/s, peak memory, MFU, graphs, graph breaks, recompiles;
  train_eager     the same eager, at a micro-batch that fits the free memory (recorded which);
  steps           time per step split into forward+backward, all-reduce, optimizer, host wait;
  resume          checkpoint after step 2, a new trainer resumes: the uninterrupted run's losses
                  and weights (tolerance measured against a repeated run on CUDA);
  quant           int6 GPTQ-lite of the EMA weights -> artifact -> reload, both bpbs;
  eval            non-overlapping, sliding, streaming and legal TTT on a few chunks;
  compile_probe   fullgraph, graph breaks, recompiles, compile seconds of Newton-Schulz,
                  validation and the TTT training pass;
  projection      the full run and the full TTT evaluation from the measured parts only, each
                  with its formula, next to PR #549's reported numbers.

Compiled parts run before eager ones. Each part runs in its own try (an out-of-memory frees the
cache and the check goes on); after ``--budget-s`` seconds (default 420) the remaining parts are
recorded as skipped. bench/results/gpu.json is written atomically after every part.

    PYTHONPATH=. python3 bench/gpu_check.py            # on the GPU machine (make bench-gpu)
    .venv/bin/python bench/gpu_check.py --tiny         # CPU: tiny preset, 2-3 steps a part
    .venv/bin/python bench/gpu_check.py --tiny --simulate-fail eval --simulate-missing zstandard

A ``--tiny`` run never replaces a full result at its --out path (use --force). Exit status 0
when every planned part ran and every check passed, 1 otherwise, 2 for no GPU without --tiny.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the torch import

import torch  # noqa: E402

from bench.common import RESULTS, markdown_table, synthetic_data_dir, write_result  # noqa: E402
from bench.gpu.eval_parts import part_compile_probe, part_eval, part_quant, part_sdpa  # noqa: E402
from bench.gpu.parts import GPU, TINY, Check, part_resume, part_steps, part_train_compiled  # noqa: E402
from bench.gpu.parts import part_train_eager  # noqa: E402
from bench.gpu.preflight import plan_parts, preflight, simulate_missing  # noqa: E402
from bench.gpu.projection import SUBMISSION, projections, summary_rows  # noqa: E402
from gepalib.config import get_preset  # noqa: E402

PARTS = {"sdpa": part_sdpa, "train_compiled": part_train_compiled, "train_eager": part_train_eager,
         "steps": part_steps, "resume": part_resume, "quant": part_quant, "eval": part_eval,
         "compile_probe": part_compile_probe}
GROUPS = {"train": ("train_compiled", "train_eager", "steps")}  # --parts train = the three


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


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny preset, 2-3 steps a part (runs on CPU)")
    ap.add_argument("--out", default=str(RESULTS / "gpu.json"))
    ap.add_argument("--force", action="store_true", help="let a --tiny run replace a full result at --out")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="the compiled training part (auto: on CUDA only)")
    ap.add_argument("--zstd-level", type=int, default=3, help="artifact zstd level (the submission's 22 is slow)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of parts ({', '.join(PARTS)}; train = "
                                                              "train_compiled,train_eager,steps)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="no part starts after this many seconds")
    ap.add_argument("--simulate-fail", default="", help="testing: comma list of parts that raise at their start")
    ap.add_argument("--simulate-missing", default="", help="testing: comma list of packages made unimportable")
    return ap.parse_args(argv)


def pick_parts(spec: str) -> list[str]:
    parts: list[str] = []
    for p in (x for x in spec.split(",") if x):
        for q in GROUPS.get(p, (p,)):
            if q not in parts:
                parts.append(q)
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        raise SystemExit(f"--parts: unknown {bad}; choose from {sorted(PARTS)} or train")
    return [p for p in PARTS if p in parts]  # the fixed order: compiled before eager


def run_part(name: str, chk: Check, res: dict, fails: set[str]) -> None:
    """One part in its own try; an out-of-memory (or anything) is recorded and the cache freed."""
    t0 = time.perf_counter()
    try:
        if name in fails:
            raise RuntimeError(f"simulated failure of part {name} (--simulate-fail)")
        res["parts"][name] = PARTS[name](chk, res)
        res["parts"][name]["wall_s"] = time.perf_counter() - t0
        res["status"][name] = "ok"
    except Exception as e:  # noqa: BLE001 -- keep the other parts' numbers
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        res["errors"][name] = f"{type(e).__name__}: {e}\n" + traceback.format_exc()[-3000:]
        res["status"][name] = "oom" if oom else "failed"
        print(f"gpu_check: part {name} failed after {time.perf_counter() - t0:.1f} s: {type(e).__name__}: "
              f"{str(e)[:300]}", file=sys.stderr, flush=True)
    finally:
        gc.collect()  # the failed part's tensors (reference cycles) before the cache is freed
        if chk.cuda:
            torch.cuda.empty_cache()
    res["seconds"][name] = time.perf_counter() - t0


def print_preflight(pre: dict, planned: list[str], skipped: dict) -> None:
    have = ", ".join(f"{k} {v}" for k, v in pre["imports"].items() if v)
    print(f"preflight: have {have}", flush=True)
    print(f"preflight: missing {', '.join(pre['missing']) or 'nothing'}", flush=True)
    c = pre["cuda"]
    if c.get("available"):
        print(f"preflight: bf16 {c['bf16']}  flash SDPA {c['flash_sdpa']} ({c['flash_sdpa_note']})  triton "
              f"{c['triton']}  free {c['free_bytes'] / 2**30:.1f} of {c['total_bytes'] / 2**30:.1f} GiB", flush=True)
    print(f"preflight: parts {', '.join(planned) or 'none'}", flush=True)
    for k, v in skipped.items():
        print(f"preflight: skip {k}: {v}", flush=True)


def make_data(work: Path, sizes, pre: dict, res: dict) -> Path | None:
    if not pre["imports"].get("numpy"):
        res["errors"]["data"] = "numpy is not installed: no synthetic shards"
        return None
    try:
        return synthetic_data_dir(work / "data", train_tokens=sizes.train_tokens, val_tokens=sizes.val_tokens,
                                  tokenizer=bool(pre["imports"].get("sentencepiece")))
    except Exception as e:  # noqa: BLE001
        res["errors"]["data"] = f"{type(e).__name__}: {e}\n" + traceback.format_exc()[-2000:]
        return None


def record(res: dict, out: Path, t_start: float, sizes) -> None:
    res["projection"] = projections(res["parts"], micro=sizes.micro_batch_tokens)
    if res["tiny"]:
        res["projection"]["note"] = "--tiny shapes: the formulas run, the numbers project nothing"
    res["wall_s"] = time.perf_counter() - t_start
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    write_result(out, res)  # atomic


def run_all(args, dev: torch.device, out: Path) -> dict:
    t_start = time.perf_counter()
    sizes = TINY if args.tiny else GPU
    parts = pick_parts(args.parts)
    fails = {p for p in args.simulate_fail.split(",") if p}
    res = {"bench": "gpu_check", **environment(dev, args.tiny), "sizes": asdict(sizes), "submission": SUBMISSION,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget_s": args.budget_s, "parts": {}, "status": {},
           "seconds": {}, "skipped": {}, "errors": {}, "checks": {}}
    if dev.type == "cuda":
        from gepalib.dist import cuda_settings, set_tf32

        cuda_settings()  # every part, --parts eval included
        res["tf32_api"] = set_tf32()
    cfg = get_preset(sizes.preset)
    pre = preflight(dev, cfg.model, cfg.train.seq_len)
    planned, skipped = plan_parts(parts, pre, dev.type == "cuda", args.compile)
    res.update(preflight=pre, planned=planned, simulated={"fail": sorted(fails), "missing": pre["simulated_missing"]})
    res["skipped"].update(skipped)
    res["status"].update({p: "skipped" for p in skipped})
    print_preflight(pre, planned, skipped)
    with tempfile.TemporaryDirectory(prefix="gepa_gpu_check_") as td:
        work = Path(td)
        data = make_data(work, sizes, pre, res)
        chk = Check(sizes, dev, data, work, args, pre)
        res.update(luts=chk.luts_source, params=chk.n_params)
        record(res, out, t_start, sizes)
        for name in planned:
            if data is None and name not in ("sdpa", "compile_probe"):
                res["skipped"][name], res["status"][name] = "no data (see errors.data)", "skipped"
                continue
            if time.perf_counter() - t_start > args.budget_s:
                res["skipped"][name], res["status"][name] = f"budget of {args.budget_s:.0f} s spent", "skipped"
                continue
            print(f"gpu_check: part {name} ({time.perf_counter() - t_start:.0f} s in)", flush=True)
            run_part(name, chk, res, fails)
            record(res, out, t_start, sizes)
        record(res, out, t_start, sizes)  # the skips after the last part run
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    simulate_missing([m for m in args.simulate_missing.split(",") if m])
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
    res = run_all(args, dev, out)
    ok = not res["errors"] and all(res["checks"].values()) and all(
        v == "ok" for k, v in res["status"].items() if k in res["planned"])
    print()
    print(markdown_table(("part", "", "", "", ""), summary_rows(res)))
    print("status: " + " ".join(f"{k}={v} ({res['seconds'].get(k, 0):.1f} s)" for k, v in res["status"].items()))
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
