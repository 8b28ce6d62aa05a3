"""Quantizers x compressors on one trained run, in memory: bytes against round-trip val_bpb.

    from gepalib.run import quantizers as Q
    rows = Q.compare_quantizers(rd, ["faithful", "per_row", "gptq"], ["zstd", "brotli", "rans"])
    rows = Q.compare_quantizers(rd, {"gptq+head": {"quant_mode": "gptq", "gptq_tied_head": True}})

For every quantizer (a ``quant_mode``, or a name given to a set of quant fields) the run's EMA
weights are quantized once (``gptq`` first collects its calibration Hessians from the training
shards, see :mod:`gepalib.quant.hessian`); each
compressor then writes the artifact bytes (re-read and checked byte-exact), and the weights
loaded back from those bytes are scored once with the non-overlapping evaluation (every
compressor is lossless, so they all give the same weights). Nothing is written to the run's
own artifact or stage ledger -- the other notebooks' ``final_model.int6.gpz`` stays what it
is -- but each row is cached in summary.json under ``"quantizers"``, keyed by the quant
settings and the evaluation settings, so a re-run reuses it while the EMA weights are older.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence, Union

from gepalib import dist
from gepalib.bpb import build_byte_luts
from gepalib.config import RunConfig, override
from gepalib.paths import resolve_path
from gepalib.data import load_val_tokens
from gepalib.eval.windows import eval_nonoverlapping
from gepalib.quant import artifact as A
from gepalib.quant.gptq import EMBED_NAME, dequantize, quantize_state_dict
from gepalib.quant.hessian import calibration_hessians
from gepalib.quant.report import code_bytes, size_ledger
from gepalib.rundir import RunDir, active_quant, as_rundir
from gepalib.run.pipeline import build_model, load_weights

MODES = ("faithful", "per_row", "gptq")  # the default comparison; "sdclip" is there by name
COMPRESSORS = ("zstd", "brotli", "rans")
QUANT_FIELDS = {f.name for f in dataclasses.fields(RunConfig().quant)}
Log = Callable[[str], Any]
Variants = Union[Sequence[str], Mapping[str, Mapping[str, Any]]]  # quant modes, or names -> quant fields


def _key(cfg: RunConfig) -> str:
    """Cache key: every quant field plus the evaluation settings the number depends on."""
    d = {"quant": active_quant(dataclasses.asdict(cfg.quant)), "val_tokens": cfg.data.val_tokens,
         "eval_seq_len": cfg.eval.eval_seq_len or cfg.train.seq_len}
    return json.dumps(d, sort_keys=True)


def _cached(rd: RunDir, key: str) -> dict | None:
    row = rd.read_summary().get("quantizers", {}).get(key)
    if row is None or not rd.ema_weights.exists():
        return None
    return row if row.get("recorded_at", 0.0) >= os.path.getmtime(rd.ema_weights) else None


def variant_settings(variants: Variants) -> dict[str, dict[str, Any]]:
    """``["faithful", "gptq"]`` -> ``{"faithful": {"quant_mode": "faithful"}, ...}``; a mapping of
    names to quant fields (e.g. ``{"gptq+head": {"quant_mode": "gptq", "gptq_tied_head": True}}``)
    is checked and kept."""
    out = {v: {"quant_mode": v} for v in variants} if not isinstance(variants, Mapping) else \
        {str(k): dict(v) for k, v in variants.items()}
    for name, kv in out.items():
        bad = sorted(set(kv) - QUANT_FIELDS) + (["compressor"] if "compressor" in kv else [])
        if bad or "quant_mode" not in kv:
            raise ValueError(f"quantizer {name!r}: give its quant_mode and only quant fields other than "
                             f"compressor; got {sorted(kv)}")
    return out


def compare_quantizers(run: RunDir | str | os.PathLike, variants: Variants = MODES,
                       compressors: Sequence[str] = COMPRESSORS, *, force: bool = False, log: Log = print,
                       **overrides: Any) -> list[dict[str, Any]]:
    """One row per (quantizer, compressor) for the run: ``model_bytes`` (the artifact file),
    ``total_bytes`` (+ code bytes), ``fits``, ``val_bpb`` of the weights loaded back,
    ``float_ema_bpb`` and ``quant_gap_bpb`` when the float EMA stage was scored on the same
    tokens, and the seconds spent (calibration, quantization, compression). ``variants``: quant
    modes, or names mapped to quant fields (:func:`variant_settings`). ``overrides``: quant
    fields for every variant (e.g. ``gptq_damp``) and ``val_tokens``/``eval_seq_len``."""
    rd = as_rundir(run)
    run_cfg = rd.load_config()
    bad = sorted(k for k in overrides if k not in QUANT_FIELDS | {"val_tokens", "eval_seq_len"}
                 or k in ("quant_mode", "compressor"))
    if bad:
        raise ValueError(f"compare_quantizers: overrides may set quant fields (not quant_mode/compressor), "
                         f"val_tokens or eval_seq_len; got {bad}")
    base = override(run_cfg, **overrides) if overrides else run_cfg
    variants = variant_settings(variants)
    rows: list[dict[str, Any]] = []
    sd = val = None
    calibrations: dict[int, tuple] = {}  # calib batches -> (hessians, info), the head's too if any variant wants it
    heads = {override(base, **kv).quant.gptq_calib_batches for kv in variants.values()
             if override(base, **kv).quant.gptq_tied_head}
    float_row = rd.stages().get("float_ema")
    for name, kv in variants.items():
        cfgs = {c: override(base, **kv, compressor=c) for c in compressors}
        todo = {c: cfg for c, cfg in cfgs.items() if force or _cached(rd, _key(cfg)) is None}
        rows += [{**_cached(rd, _key(cfg)), "quantizer": name} for c, cfg in cfgs.items() if c not in todo]
        if not todo:
            continue
        qcfg = next(iter(todo.values())).quant
        if sd is None:
            sd = load_weights(rd, "ema")
        hessians, calib = None, None
        if qcfg.quant_mode == "gptq":
            nb = qcfg.gptq_calib_batches
            if nb not in calibrations:
                cal_cfg = override(next(iter(todo.values())), gptq_tied_head=nb in heads)
                calibrations[nb] = calibration_hessians(cal_cfg, sd, log=log,
                                                        device=dist.pick_device(base.train.device))
            hessians, calib = calibrations[nb]
            if not qcfg.gptq_tied_head:
                hessians = {k: v for k, v in hessians.items() if k != EMBED_NAME}
        t0 = time.perf_counter()
        qm = quantize_state_dict(sd, qcfg, hessians=hessians)
        t_quant = time.perf_counter() - t0
        bpb = None
        for c, cfg in todo.items():
            t1 = time.perf_counter()
            data = A.artifact_bytes(qm, cfg.quant, meta={"preset": cfg.preset, "quant": dataclasses.asdict(cfg.quant)})
            t_comp = time.perf_counter() - t1
            if bpb is None:  # lossless compressors: every artifact loads the same weights
                back, _ = A.artifact_from_bytes(data)
                val = val or _val_data(base)
                bpb = _score(cfg, dequantize(back), val)
            ledger = size_ledger(len(data), code_bytes(c))
            row = {"run": str(rd.path), "steps": run_cfg.train.steps, "quantizer": name,
                   "quant_mode": qcfg.quant_mode, "compressor": c, "model_bytes": ledger["model_bytes"],
                   "total_bytes": ledger["total_bytes"], "fits": ledger["fits"], "val_bpb": bpb["val_bpb"],
                   "val_loss": bpb["val_loss"], "tokens": bpb["tokens"],
                   "calib_seconds": calib["seconds"] if calib else 0.0, "quantize_seconds": t_quant,
                   "compress_seconds": t_comp, "eval_seconds": bpb["seconds"], "recorded_at": time.time()}
            if calib is not None:
                row["calib_tokens"], row["calib_files"] = calib["tokens"], calib["files"]
            if float_row and float_row.get("tokens") == bpb["tokens"]:
                row["float_ema_bpb"] = float_row["val_bpb"]
                row["quant_gap_bpb"] = bpb["val_bpb"] - float_row["val_bpb"]
            rd.update_summary(quantizers={_key(cfg): row})
            log(f"quantizer:{name} compressor:{c} model_bytes:{row['model_bytes']} val_bpb:{row['val_bpb']:.6f} "
                f"quantize_s:{t_quant:.2f} calib_s:{row['calib_seconds']:.2f} compress_s:{t_comp:.2f}")
            rows.append(row)
    order = {(m, c): i for i, (m, c) in enumerate((m, c) for m in variants for c in compressors)}
    return sorted(rows, key=lambda r: order[r["quantizer"], r["compressor"]])


def _val_data(cfg: RunConfig) -> tuple:
    seq_len = cfg.eval.eval_seq_len or cfg.train.seq_len
    val = load_val_tokens(resolve_path(cfg.data.data_dir), seq_len, cfg.model.vocab_size,
                          max_targets=cfg.data.val_tokens)
    return val, build_byte_luts(cfg.data.tokenizer_file(), cfg.model.vocab_size)


def _score(cfg: RunConfig, sd: dict, val: tuple) -> dict[str, Any]:
    model = build_model(cfg, sd, "artifact", dist.pick_device(cfg.train.device))
    seq_len = cfg.eval.eval_seq_len or cfg.train.seq_len
    r = eval_nonoverlapping(model, val[0], val[1], seq_len, cfg.eval.eval_batch_seqs, autocast=cfg.train.autocast)
    return r.as_row()


def frontier(rows: Sequence[dict[str, Any]], x: str = "total_bytes", y: str = "val_bpb") -> list[dict[str, Any]]:
    """The rows no other row beats on both ``x`` and ``y`` (smaller is better), by ``x``."""
    pts = sorted(rows, key=lambda r: (r[x], r[y]))
    out, best = [], float("inf")
    for r in pts:
        if r[y] < best:
            out.append(r)
            best = r[y]
    return out
