"""``gepa quantize RUN_DIR`` and ``gepa artifact FILE`` (SPEC §4, issue 5).

    gepa quantize runs/tiny                               # faithful int6 + zstd-22, then the roundtrip eval
    gepa quantize runs/tiny --compressor rans --report full
    gepa quantize runs/tiny --quant-mode per_row --no-eval
    gepa artifact runs/tiny/final_model.int6.gpz          # header, size ledger, compression report

Quantizer flags are config fields: --quant-mode faithful|per_row, --quant-embed true|false,
--passthrough-numel N, --compressor zstd|lzma|brotli|rans|none, --zstd-level N,
--packing none|shuffle|pack6|shuffle_pack6 (rans: none|shuffle); any other field too.

``gepa quantize`` reads the run's config.json and EMA weights (model_ema.pt,
``torch.load(weights_only=True)``), writes ``final_model.int6.gpz`` atomically,
stores the artifact facts, the size ledger and the compression report in
summary.json (keys ``artifact``, ``size``, ``compression``), then loads the
artifact back, dequantizes it into ``GPT(cfg.model)`` and records the
non-overlapping val_bpb as stage ``int6_roundtrip`` (with the float EMA number
and the quantization gap when stage ``float_ema`` exists). Quant settings that
change the weights (quant_mode, quant_embed, passthrough_numel) and differ from
the run's config tag the stage name, e.g. ``int6_roundtrip[per_row]``.
Output lines are greppable ``key:value`` pairs.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from gepalib.quant import artifact as A
from gepalib.config import RunConfig, override, resolve_path
from gepalib.quant.gptq import quantize_state_dict

WEIGHT_FIELDS = ("quant_mode", "quant_embed", "passthrough_numel")  # quant fields that change the weights
REPORTS = ("none", "fast", "full")


def roundtrip_stage_name(run_cfg: RunConfig, cfg: RunConfig) -> str:
    tags = []
    for f in WEIGHT_FIELDS:
        v, v0 = getattr(cfg.quant, f), getattr(run_cfg.quant, f)
        if v != v0:
            tags.append(str(v) if f == "quant_mode" else ("embed" if v else "noembed") if f == "quant_embed"
                        else f"pass{v}")
    return "int6_roundtrip" + (f"[{','.join(tags)}]" if tags else "")


def quantize_run(run_dir, *, report: str = "fast", evaluate: bool = True, log=print, **overrides: Any) -> dict:
    """Python API behind ``gepa quantize``; returns the summary entries it wrote."""
    from gepalib.config import FIELD_INDEX
    from gepalib.eval_cli import load_weights
    from gepalib.rundir import RunDir

    if report not in REPORTS:
        raise ValueError(f"report must be one of {REPORTS}, got {report!r}")
    rd = RunDir(resolve_path(run_dir))
    run_cfg = rd.load_config()
    bad = sorted(k for k in overrides if FIELD_INDEX.get(k, ("?",))[0] == "model")
    if bad:
        raise ValueError(f"cannot override model fields ({', '.join(bad)}): they define the trained weights")
    cfg = override(run_cfg, **overrides) if overrides else run_cfg
    qcfg = cfg.quant
    sd = load_weights(rd, "ema")

    t0 = time.perf_counter()
    qm = quantize_state_dict(sd, qcfg)
    t_quant = time.perf_counter() - t0
    meta = {"preset": cfg.preset, "config_fingerprint": cfg.fingerprint(), "source": rd.ema_weights.name,
            "model": dataclasses.asdict(cfg.model), "quant": dataclasses.asdict(qcfg)}
    info = A.save_artifact(qm, rd.artifact, qcfg, meta=meta)
    mses = [e.mse for e in qm.quantized().values() if e.mse is not None]
    art = {**info.to_dict(), "quant_mode": qcfg.quant_mode, "quant_embed": qcfg.quant_embed,
           "quantize_seconds": t_quant, "mean_tensor_mse": sum(mses) / max(len(mses), 1)}
    code = A.code_bytes(qcfg.compressor)
    ledger = A.size_ledger(info.file_bytes, code)
    out = {"artifact": art, "size": {**ledger, "code_files": code["files"]}}
    for line in A.kv_lines(art, "artifact_") + A.kv_lines(ledger, "size_"):
        log(line)
    if report != "none":
        rep = A.compression_report(qm, methods=report, zstd_level=qcfg.zstd_level)
        out["compression"] = rep
        for name, r in rep["methods"].items():
            log(f"compress:{name} bytes:{r['bytes']} vs_per_tensor_bound:{r['vs_per_tensor_bound']:+.4%} "
                f"vs_per_row_bound:{r['vs_per_row_bound']:+.4%} seconds:{r['compress_seconds']:.2f}")
        b = rep["bounds"]
        log(f"bound_per_tensor_bytes:{b['per_tensor_bound_bytes']:.0f} bound_per_row_bytes:"
            f"{b['per_row_bound_bytes']:.0f} code_bits_per_symbol:{b['code_bits_per_symbol']:.4f}")
    rd.update_summary(**out)
    del sd
    if evaluate:
        out["stage"] = roundtrip_eval(rd, run_cfg, cfg, info, log)
    return out


def roundtrip_eval(rd, run_cfg: RunConfig, cfg: RunConfig, info: A.ArtifactInfo, log=print) -> dict:
    """Artifact -> dequantize -> GPT(cfg.model) -> non-overlapping val_bpb (stage int6_roundtrip)."""
    from gepalib import dist
    from gepalib.bpb import build_byte_luts
    from gepalib.data import load_val_tokens
    from gepalib.eval_cli import build_model
    from gepalib.eval.windows import eval_nonoverlapping

    device = dist.pick_device(cfg.train.device)
    sd = A.load_artifact_state_dict(rd.artifact)
    model = build_model(cfg, sd, str(rd.artifact), device)
    seq_len = cfg.eval.eval_seq_len or cfg.train.seq_len
    data_dir = resolve_path(cfg.data.data_dir)
    val = load_val_tokens(data_dir, seq_len, cfg.model.vocab_size, max_targets=cfg.data.val_tokens)
    luts = build_byte_luts(cfg.data.tokenizer_file(), cfg.model.vocab_size)
    r = eval_nonoverlapping(model, val, luts, seq_len, cfg.eval.eval_batch_seqs, autocast=cfg.train.autocast)
    name = roundtrip_stage_name(run_cfg, cfg)
    extra: dict[str, Any] = {"weights": "artifact", "source": "quantize", "quant_mode": cfg.quant.quant_mode,
                             "compressor": cfg.quant.compressor, "packing": cfg.quant.packing,
                             "artifact_bytes": info.file_bytes, "artifact_sha256": info.file_sha256,
                             "settings": {"val_tokens": cfg.data.val_tokens, "eval_seq_len": cfg.eval.eval_seq_len}}
    float_row = rd.stages().get("float_ema")
    if float_row and float_row.get("tokens") == r.tokens:
        extra["float_ema_val_bpb"] = float_row["val_bpb"]
        extra["quant_gap_bpb"] = r.val_bpb - float_row["val_bpb"]
    rd.record_stage(name, **r.as_row(), **extra)
    log(f"stage:{name} val_bpb:{r.val_bpb:.8f} val_loss:{r.val_loss:.6f} tokens:{r.tokens} bytes:{r.bytes} "
        f"seconds:{r.seconds:.2f}" + (f" quant_gap_bpb:{extra['quant_gap_bpb']:+.6f}" if "quant_gap_bpb" in extra
                                      else ""))
    return {"name": name, **r.as_row(), **extra}


def describe_artifact(path, report: str = "fast", log=print) -> dict:
    """Python API behind ``gepa artifact``: header facts, size ledger, compression report."""
    if report not in REPORTS:
        raise ValueError(f"report must be one of {REPORTS}, got {report!r}")
    path = resolve_path(path)
    data = A.read_artifact_bytes(path)
    qm, h = A.artifact_from_bytes(data, str(path))  # validates everything
    n_int6 = sum(1 for t in h["tensors"] if t["kind"] == "int6")
    facts = {"path": str(path), "format_version": h["format_version"], "quant_mode": h["quant_mode"],
             "compressor": h["compressor"], "level": h["level"], "packing": h["packing"],
             "tensors": len(h["tensors"]), "int6_tensors": n_int6, "passthrough_tensors": len(h["tensors"]) - n_int6,
             "params": qm.num_params(), "raw_bytes": h["raw_len"], "payload_bytes": h["payload_len"],
             "file_bytes": len(data), "content_sha256": h["content_sha256"]}
    mq = h["meta"].get("quant")
    for line in A.kv_lines(facts, "artifact_") + (A.kv_lines(mq, "meta_quant_") if isinstance(mq, dict) else []):
        log(line)
    if isinstance(h["meta"].get("preset"), str):
        log(f"meta_preset:{h['meta']['preset']}")
    for k, v in h["library"].items():
        if isinstance(v, str):
            log(f"library_{k}:{v}")
    ledger = A.size_ledger(len(data), A.code_bytes(h["compressor"]))
    for line in A.kv_lines(ledger, "size_"):
        log(line)
    out = {"artifact": facts, "size": ledger, "header": h}
    if report != "none":
        rep = A.compression_report(qm, methods=report)
        out["compression"] = rep
        b = rep["bounds"]
        log(f"bound_per_tensor_bytes:{b['per_tensor_bound_bytes']:.0f} bound_per_row_bytes:"
            f"{b['per_row_bound_bytes']:.0f} code_bits_per_symbol:{b['code_bits_per_symbol']:.4f}")
        for name, r in rep["methods"].items():
            log(f"compress:{name} bytes:{r['bytes']} vs_per_tensor_bound:{r['vs_per_tensor_bound']:+.4%} "
                f"vs_per_row_bound:{r['vs_per_row_bound']:+.4%} seconds:{r['compress_seconds']:.2f}")
    return out


# ---------------------------------------------------------------------------
# CLI


def _quantize_cli(args: argparse.Namespace) -> int:
    from gepalib.cli import collect_overrides

    t0 = time.perf_counter()
    quantize_run(args.run_dir, report=args.report, evaluate=not args.no_eval,
                 log=lambda s: print(s, flush=True), **collect_overrides(args))
    print(f"quantize_total_seconds:{time.perf_counter() - t0:.1f}", flush=True)
    return 0


def _artifact_cli(args: argparse.Namespace) -> int:
    describe_artifact(args.file, report=args.report, log=lambda s: print(s, flush=True))
    return 0


def add_cli(subparsers) -> None:
    from gepalib.cli import add_override_args

    p = subparsers.add_parser("quantize", help="int6 GPTQ-lite artifact of a run's EMA weights + roundtrip eval",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (config.json + model_ema.pt)")
    p.add_argument("--report", choices=REPORTS, default="fast",
                   help="compression report: fast (zstd + rans), full (every codec/packing; minutes), none")
    p.add_argument("--no-eval", action="store_true", help="skip the roundtrip val_bpb evaluation")
    add_override_args(p)  # --quant-mode, --compressor, --packing, --zstd-level, --quant-embed, ...
    p.set_defaults(func=_quantize_cli)

    p = subparsers.add_parser("artifact", help="show an int6 artifact: header, size ledger, compression report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="an artifact written by `gepa quantize`")
    p.add_argument("--report", choices=REPORTS, default="fast", help="compression report (default fast)")
    p.set_defaults(func=_artifact_cli)
