"""Artifact compression vs the entropy bounds (benchmark).

Inputs (state dicts with the model's exact names, shapes and dtypes):

* ``random``       -- ``GPT(cfg)`` at initialisation (orthogonal, zero-init W_o/W_down);
* ``trained_like`` -- synthetic: every quantized matrix is sigma * r_i * c_j * t5
  (Student-t, 5 dof) with log-normal row and column scales r, c (log-sd 0.3; the
  token embedding gets log-sd 0.8 on rows, mimicking rare tokens), sigma = 0.25
  (0.5 for E_tok), so most rows clip above the 1/31 scale floor; control vectors
  are 1 + N(0, 0.1^2), gamma/beta N(1|0, 0.2^2). Illustrative only: the structure
  a real run has is unknown until one exists (pass ``--run-dir``);
* ``run``          -- the EMA weights of a real run (``--run-dir DIR``).

For each input and quant mode: quantize time, then every (compressor, packing)
pair -- zstd-22, lzma-9, brotli-11 x (none, shuffle, pack6, shuffle_pack6), and
rans -- with payload bytes, compress and decompress seconds (each payload is
decoded again and checked byte-exact), against the per-tensor and the per-row
entropy bounds measured on the same quantized model.

    .venv/bin/python bench/compression.py                 # gepa11 shapes, random + trained_like
    .venv/bin/python bench/compression.py --quick         # tiny preset, trained_like, faithful, fast codecs
    .venv/bin/python bench/compression.py --run-dir runs/X
Writes bench/results/compression.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gepalib.config import QuantConfig, get_preset  # noqa: E402
from gepalib.model import GPT  # noqa: E402
from gepalib.quant import container as C  # noqa: E402
from gepalib.quant import report as R  # noqa: E402
from gepalib.quant.gptq import is_control, quantize_state_dict  # noqa: E402


def model_shapes(cfg) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with torch.device("meta"):
        sd = GPT(cfg).state_dict()
    return {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}


def trained_like_state_dict(cfg, passthrough_numel: int = 65536, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (shape, dtype) in model_shapes(cfg).items():
        numel = math.prod(shape)
        if numel > passthrough_numel and len(shape) == 2:
            emb = name == "tok_emb.weight"
            sigma, row_sd = (0.5, 0.8) if emb else (0.25, 0.3)
            r = torch.exp(torch.randn(shape[0], 1, generator=g) * row_sd)
            c = torch.exp(torch.randn(1, shape[1], generator=g) * 0.3)
            # Student-t(5) = N / sqrt(chi2_5 / 5)
            z = torch.randn(shape, generator=g)
            chi2 = torch.randn((5,) + shape, generator=g).square().sum(0)
            w = sigma * r * c * z / torch.sqrt(chi2 / 5)
        elif name.endswith("mlp.gamma"):
            w = 1 + 0.2 * torch.randn(shape, generator=g)
        elif name.endswith("mlp.beta") or not is_control(name):
            w = 0.2 * torch.randn(shape, generator=g)
        else:
            w = 1 + 0.1 * torch.randn(shape, generator=g)
        out[name] = w.to(dtype)
    return out


def random_state_dict(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return GPT(cfg).state_dict()


def run_state_dict(run_dir: str) -> tuple[dict[str, torch.Tensor], str]:
    from gepalib.rundir import RunDir

    rd = RunDir(run_dir)
    cfg = rd.load_config()
    if not rd.ema_weights.exists():
        raise FileNotFoundError(f"{rd.ema_weights}: no EMA weights in this run directory")
    return torch.load(rd.ema_weights, map_location="cpu", weights_only=True), cfg.preset


def bench_one(label: str, sd: dict, mode: str, methods, workers: int = 1) -> dict:
    qcfg = QuantConfig(quant_mode=mode)
    t0 = time.perf_counter()
    qm = quantize_state_dict(sd, qcfg)
    tq = time.perf_counter() - t0
    rep = R.compression_report(qm, methods=methods, workers=workers)
    mse = {k: e.mse for k, e in qm.quantized().items()}
    rep.update(input=label, quantize_seconds=tq, mean_tensor_mse=sum(mse.values()) / max(len(mse), 1))
    if any(c == "rans" for c, _ in (R.REPORT_METHODS_FULL if methods == "full" else R.REPORT_METHODS_FAST)):
        # diagnostic: rans with one model per tensor (no row/column clustering)
        sections, raw = C.sections_of(C.tensor_table(qm)), C.raw_payload(qm)
        t0 = time.perf_counter()
        flat = C.encode_payload(raw, sections, "rans", "shuffle", 22, rans_configs=((1, 1),))
        t1 = time.perf_counter()
        assert C.decode_payload(flat, sections, "rans", "shuffle") == raw
        b = rep["bounds"]
        rep["methods"]["rans-per-tensor/shuffle"] = {
            "compressor": "rans", "packing": "shuffle", "rans_configs": [[1, 1]], "bytes": len(flat),
            "vs_per_tensor_bound": len(flat) / b["per_tensor_bound_bytes"] - 1,
            "vs_per_row_bound": len(flat) / b["per_row_bound_bytes"] - 1,
            "compress_seconds": t1 - t0, "decompress_seconds": time.perf_counter() - t1}
    zstd = rep["methods"].get("zstd-22/none")
    if zstd:
        for row in rep["methods"].values():
            row["vs_zstd22"] = row["bytes"] / zstd["bytes"] - 1.0
    return rep


def print_report(rep: dict) -> None:
    b = rep["bounds"]
    print(f"\n== {rep['input']} / {rep['quant_mode']}: {rep['num_params']:,} params, raw {rep['raw_bytes']:,} B, "
          f"quantize {rep['quantize_seconds']:.1f}s, {b['code_bits_per_symbol']:.3f} bits/code")
    print(f"   per-tensor bound {b['per_tensor_bound_bytes']:,.0f} B   per-row bound "
          f"{b['per_row_bound_bytes']:,.0f} B (rows' entropy {b['row_entropy_bytes']:,.0f} + description "
          f"{b['row_description_bytes']:,.0f})")
    print(f"   {'method':<24}{'bytes':>12}{'vs tensor bnd':>15}{'vs row bnd':>12}{'vs zstd22':>11}"
          f"{'comp s':>9}{'decomp s':>10}")
    for name, r in rep["methods"].items():
        print(f"   {name:<24}{r['bytes']:>12,}{r['vs_per_tensor_bound']:>+14.3%}{r['vs_per_row_bound']:>+12.3%}"
              f"{r.get('vs_zstd22', float('nan')):>+11.3%}{r['compress_seconds']:>9.2f}{r['decompress_seconds']:>10.2f}")
    print(f"   best: {rep['best']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny preset shapes (smoke run)")
    ap.add_argument("--preset", default=None, help="model shapes (default gepa11; tiny with --quick)")
    ap.add_argument("--inputs", default=None, help="comma list of random, trained_like (default both; "
                                                   "trained_like with --quick)")
    ap.add_argument("--run-dir", default=None, help="also benchmark this run's EMA weights")
    ap.add_argument("--modes", default=None, help="quant modes (default faithful,per_row; faithful with --quick)")
    ap.add_argument("--methods", default=None, help="full | fast (default: full; fast with --quick)")
    ap.add_argument("--workers", type=int, default=1, help="measure methods in parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "compression.json"))
    ap.add_argument("--append", action="store_true",
                    help="merge into an existing --out file (replacing the same input/mode entries)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = args.preset or ("tiny" if args.quick else "gepa11")
    methods = args.methods or ("fast" if args.quick else "full")
    args.inputs = args.inputs or ("trained_like" if args.quick else "random,trained_like")
    args.modes = args.modes or ("faithful" if args.quick else "faithful,per_row")
    cfg = get_preset(preset).model
    inputs = []
    for name in [s for s in args.inputs.split(",") if s]:
        if name == "random":
            inputs.append((f"random/{preset}", lambda: random_state_dict(cfg)))
        elif name == "trained_like":
            inputs.append((f"trained_like/{preset}", lambda: trained_like_state_dict(cfg)))
        elif name in ("run", "none"):  # only --run-dir (added below)
            continue
        else:
            raise ValueError(f"unknown input {name!r} (random | trained_like | run)")
    if args.run_dir:
        inputs.append((f"run/{args.run_dir}", lambda: run_state_dict(args.run_dir)[0]))
    results = []
    for label, make in inputs:
        sd = make()
        for mode in [m for m in args.modes.split(",") if m]:
            rep = bench_one(label, sd, mode, methods, args.workers)
            print_report(rep)
            results.append(rep)
    if args.append and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        new_keys = {(r["input"], r["quant_mode"]) for r in results}
        results = [r for r in old.get("results", []) if (r["input"], r["quant_mode"]) not in new_keys] + results
    out = {"benchmark": "compression", "preset": preset, "quick": args.quick,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "note": "compression times are single-threaded codec calls; the box may be shared"},
           "trained_like_recipe": "sigma * r_i * c_j * t5, log-sd(r)=0.3 (0.8 for tok_emb), log-sd(c)=0.3, "
                                  "sigma=0.25 (0.5 tok_emb); see module docstring",
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from gepalib.fsio import atomic_write_json

    atomic_write_json(args.out, out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
