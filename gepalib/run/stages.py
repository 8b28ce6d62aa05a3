"""The stage ledger: stage names, the settings each stage depends on, lookups, the table.

A run's summary.json holds under ``"stages"`` one row per measured number (written by
:meth:`gepalib.rundir.RunDir.record_stage`: val_bpb, val_loss, tokens, bytes, seconds,
plus what the writer adds -- ``weights``, ``settings``, ``source``). The trainer records
``float_live`` and ``float_ema``; ``gepa quantize`` records ``int6_roundtrip``; ``gepa eval``
records the rest. A stage measured with settings that differ from the run's own config
carries them in its name, e.g. ``int6_sliding_ttt[adamw,e1,f0,lr5e-05]``, so one run's
ledger holds many evaluations side by side (see docs/runs.md).
"""
from __future__ import annotations

import json
import os
from typing import Any

from gepalib.config import FIELD_INDEX, RunConfig, override
from gepalib.rundir import RunDir, as_rundir

# Known stages, in ledger order.
STAGES = ("float_live", "float_ema", "int6_roundtrip", "int6_sliding", "int6_sliding_ttt")

# Which weights a stage scores, and the stage names they give.
WEIGHTS = ("artifact", "ema", "live")
STAGE_BASE = {"artifact": "int6", "ema": "float_ema", "live": "float_live"}
ROUNDTRIP_STAGE = {"artifact": "int6_roundtrip", "ema": "float_ema", "live": "float_live"}

# What each stage's number depends on (besides the weights).
COMMON_FIELDS = ("val_tokens", "eval_seq_len")
SLIDING_FIELDS = COMMON_FIELDS + ("eval_stride", "tail_rescore")
STREAM_FIELDS = COMMON_FIELDS + ("stream_prefix",)
TTT_FIELDS = ("ttt_optimizer", "ttt_epochs", "ttt_freeze_blocks", "ttt_lr", "ttt_chunk_tokens", "ttt_momentum",
              "ttt_grad_clip", "ttt_warmup_div", "ttt_adam_beta1", "ttt_adam_beta2", "ttt_adam_wd",
              "ttt_reset_per_doc", "ttt_scoring") + SLIDING_FIELDS + ("stream_prefix",)
# The TTT families' settings (gepalib.eval.doc_ttt, gepalib.eval.phased): part of every TTT row.
TTT_FAMILY_FIELDS = ("ttt_family", "ttt_lora_rank", "ttt_lora_alpha", "ttt_lora_targets", "ttt_lora_optimizer",
                     "ttt_lora_lr", "ttt_lora_beta1", "ttt_lora_beta2", "ttt_lora_wd", "ttt_lora_chunk_tokens",
                     "ttt_lora_batch_docs", "ttt_lora_steps", "ttt_lora_warm_start_a", "ttt_phase_docs",
                     "ttt_phase_lr", "ttt_phase_epochs")
TTT_FIELDS += TTT_FAMILY_FIELDS
# Quant fields that change the int6 weights (and so tag the round-trip stage).
WEIGHT_FIELDS = ("quant_mode", "quant_embed", "passthrough_numel")
SHORT = {"ttt_epochs": "e", "ttt_freeze_blocks": "f", "ttt_lr": "lr", "ttt_chunk_tokens": "c", "eval_stride": "s",
         "val_tokens": "v", "eval_seq_len": "w", "ttt_momentum": "m", "ttt_grad_clip": "clip",
         "ttt_warmup_div": "wd", "stream_prefix": "pre", "ttt_lora_rank": "r", "ttt_lora_alpha": "alpha",
         "ttt_lora_lr": "llr", "ttt_lora_beta1": "lb1", "ttt_lora_beta2": "lb2", "ttt_lora_wd": "lwd",
         "ttt_lora_chunk_tokens": "lc", "ttt_lora_batch_docs": "ld", "ttt_lora_steps": "ls", "ttt_phase_docs": "ph",
         "ttt_phase_lr": "plr", "ttt_phase_epochs": "pe"}
# kind (as returned by gepalib.run.ensure_stages) -> ledger stage for the default settings
KIND_STAGE = {"roundtrip": "int6_roundtrip", "sliding": "int6_sliding", "streaming": "int6_streaming",
              "ttt": "int6_sliding_ttt"}


# ---------------------------------------------------------------------------
# Names and settings


def setting(cfg: RunConfig, name: str) -> Any:
    """The value of an evaluation setting (a data, eval, ttt or train field) in ``cfg``."""
    for sec in ("data", "eval", "ttt", "train"):
        s = getattr(cfg, sec)
        if hasattr(s, name):
            return getattr(s, name)
    raise KeyError(name)


def settings_of(cfg: RunConfig, fields: tuple[str, ...]) -> dict[str, Any]:
    """``{field: value}`` for ``fields`` (what a stage row records as its ``settings``)."""
    return {f: setting(cfg, f) for f in fields}


def _norm(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


def stage_settings(cfg: RunConfig, fields: tuple[str, ...]) -> dict[str, Any]:
    """:func:`settings_of` as it reads back from summary.json (tuples as lists)."""
    return _norm(settings_of(cfg, fields))


def stage_name(base: str, run_cfg: RunConfig, cfg: RunConfig, fields: tuple[str, ...]) -> str:
    """``base`` plus a bracketed tag of the settings in ``fields`` that differ from the run's config."""
    tags = []
    for f in fields:
        v, v0 = setting(cfg, f), setting(run_cfg, f)
        if v == v0:
            continue
        if f in ("ttt_optimizer", "ttt_scoring", "ttt_family"):
            tags.append(str(v))
        elif f == "ttt_lora_optimizer":
            tags.append(f"lora{v}")
        elif f == "ttt_lora_targets":
            tags.append("lora=" + "-".join(x.strip() for x in str(v).split(",")))
        elif f == "ttt_lora_warm_start_a":
            tags.append("warmA" if v else "nowarmA")
        elif isinstance(v, (tuple, list)):
            tags.append(f"{SHORT.get(f, f + '=')}{'-'.join(map(str, v))}")
        elif f == "ttt_reset_per_doc":
            tags.append("docreset" if v else "nodocreset")
        elif f == "tail_rescore":
            tags.append("rescore" if v else "norescore")
        elif f in SHORT:
            tags.append(f"{SHORT[f]}{v:g}" if isinstance(v, float) else f"{SHORT[f]}{v}")
        else:
            tags.append(f"{f}={v}")
    return f"{base}[{','.join(tags)}]" if tags else base


def roundtrip_stage_name(run_cfg: RunConfig, cfg: RunConfig) -> str:
    """``int6_roundtrip``, tagged with the :data:`WEIGHT_FIELDS` that differ from the run's config."""
    tags = []
    for f in WEIGHT_FIELDS:
        v, v0 = getattr(cfg.quant, f), getattr(run_cfg.quant, f)
        if v != v0:
            tags.append(str(v) if f == "quant_mode" else ("embed" if v else "noembed") if f == "quant_embed"
                        else f"pass{v}")
    return "int6_roundtrip" + (f"[{','.join(tags)}]" if tags else "")


def stage_kinds(cfg: RunConfig) -> dict[str, tuple[str, tuple[str, ...]]]:
    """kind -> (stage base name, settings fields) for the int6 stages of ``gepa eval``."""
    ttt_base = "int6_sliding_ttt" if cfg.ttt.ttt_scoring == "sliding" else "int6_streaming_ttt"
    return {"roundtrip": ("int6_roundtrip", COMMON_FIELDS), "sliding": ("int6_sliding", SLIDING_FIELDS),
            "streaming": ("int6_streaming", STREAM_FIELDS), "ttt": (ttt_base, TTT_FIELDS)}


def stage_config(run: RunDir | str | os.PathLike, **overrides: Any) -> RunConfig:
    """The run's config with evaluation overrides (eval/ttt fields, ``val_tokens``) applied."""
    rd = as_rundir(run)
    bad = sorted(k for k in overrides if FIELD_INDEX.get(k, ("?",))[0] not in ("eval", "ttt")
                 and k != "val_tokens")
    if bad:
        raise ValueError(f"evaluation overrides may only set eval/ttt fields or val_tokens; got {bad}")
    cfg = rd.load_config()
    return override(cfg, **overrides) if overrides else cfg


# ---------------------------------------------------------------------------
# Lookups and the table


def ledger_order(stages: dict[str, Any]) -> list[str]:
    """Stage names: the known :data:`STAGES` first, in order, then the others sorted."""
    return [s for s in STAGES if s in stages] + sorted(s for s in stages if s not in STAGES)


def find_stage(run: RunDir | str | os.PathLike, base: str, settings: dict[str, Any],
               weights: str = "artifact") -> dict[str, Any] | None:
    """The stage row named ``base`` or ``base[...]`` recorded with exactly ``settings``
    (and ``weights``), as ``{"name": ..., **row}``; None if there is none."""
    rd = as_rundir(run)
    want = _norm(settings)
    for name, row in rd.stages().items():
        if (name == base or name.startswith(base + "[")) and row.get("weights") == weights \
                and _norm(row.get("settings")) == want:
            return {"name": name, **row}
    return None


def stage_bpb(run: RunDir | str | os.PathLike, stage: str, rows: dict[str, dict[str, Any]] | None = None) -> float:
    """val_bpb of ``stage``: "int6_roundtrip" / "int6_sliding" / "int6_sliding_ttt" from an
    :func:`gepalib.run.ensure_stages` result ``rows`` when given (those carry the requested
    settings), else any stage of the run's ledger (e.g. "float_live")."""
    kind = {v: k for k, v in KIND_STAGE.items()}.get(stage)
    if rows is not None and kind in rows:
        return float(rows[kind]["val_bpb"])
    rd = as_rundir(run)
    stages = rd.stages()
    if stage not in stages:
        raise ValueError(f"{rd.path}: no stage {stage!r} in the ledger (have {sorted(stages)})")
    return float(stages[stage]["val_bpb"])


def ttt_gain(rows: dict[str, dict[str, Any]]) -> float:
    """TTT gain of an :func:`gepalib.run.ensure_stages` result: TTT bpb − the same scoring without
    TTT (negative = TTT helped): the streaming row for streaming-scored TTT when it is there,
    else the sliding row."""
    streamed = (rows.get("ttt") or {}).get("settings", {}).get("ttt_scoring") == "streaming"
    base = "streaming" if streamed and "streaming" in rows else "sliding"
    if "ttt" not in rows or base not in rows:
        raise ValueError("ttt_gain needs an ensure_stages(..., ttt=True) result with sliding=True "
                         "(or streaming=True for streaming-scored TTT)")
    return float(rows["ttt"]["val_bpb"]) - float(rows[base]["val_bpb"])


def format_ledger(stages: dict[str, dict[str, Any]]) -> str:
    """The stage ledger as an aligned text table (known stages first, in order)."""
    names = ledger_order(stages)
    w = max([22] + [len(n) + 2 for n in names])
    lines = [f"{'stage':<{w}}{'val_bpb':>12}{'val_loss':>11}{'tokens':>12}{'bytes':>13}{'seconds':>10}"]
    for n in names:
        r = stages[n]
        lines.append(f"{n:<{w}}{r['val_bpb']:>12.6f}{r['val_loss']:>11.5f}{r['tokens']:>12,}"
                     f"{r['bytes']:>13,}{r['seconds']:>10.1f}")
    return "\n".join(lines)
