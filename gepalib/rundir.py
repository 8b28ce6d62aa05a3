"""Run-directory layout and atomic writers.

A run directory holds::

    config.json        resolved RunConfig
    env.json           versions, device, world size, git commit
    metrics.jsonl      one JSON object per logged step
    train.log          greppable key:value lines (rank 0)
    summary.json       final numbers, incl. the stage ledger under "stages"
    checkpoints/       resumable training state
    model_ema.pt       final EMA weights (state dict; what gets quantized)
    model_live.pt      final live weights
    final_model.int6.gpz   the int6 artifact (gepalib container, no pickle)

Every write goes to a temp file in the same directory and is renamed into
place, so a killed process never leaves a half-written file behind.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from gepalib.fsio import atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text, json_default  # noqa: F401

STAGES = ("float_live", "float_ema", "int6_roundtrip", "int6_sliding", "int6_sliding_ttt")


class RunDir:
    """Paths and small read/write helpers for one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- layout ----------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def env(self) -> Path:
        return self.path / "env.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def ema_weights(self) -> Path:
        return self.path / "model_ema.pt"

    @property
    def live_weights(self) -> Path:
        return self.path / "model_live.pt"

    @property
    def artifact(self) -> Path:
        return self.path / "final_model.int6.gpz"

    # -- config / summary ------------------------------------------------
    def exists(self) -> bool:
        return self.config.exists()

    def load_config(self):
        from gepalib.config import load_config

        if not self.config.exists():
            raise FileNotFoundError(f"{self.path}: not a run directory (no config.json)")
        return load_config(self.config)

    def read_summary(self) -> dict[str, Any]:
        if not self.summary.exists():
            return {}
        with open(self.summary, encoding="utf-8") as f:
            return json.load(f)

    def update_summary(self, **kv: Any) -> dict[str, Any]:
        """Merge top-level keys into summary.json (dicts are merged one level deep)."""
        s = self.read_summary()
        for k, v in kv.items():
            if isinstance(v, dict) and isinstance(s.get(k), dict):
                s[k] = {**s[k], **v}
            else:
                s[k] = v
        atomic_write_json(self.summary, s)
        return s

    def record_stage(self, name: str, *, val_bpb: float, val_loss: float, tokens: int, bytes: int,
                     seconds: float, **extra: Any) -> dict[str, Any]:
        """Record one row of the stage ledger (summary.json -> "stages" -> name)."""
        row = {"val_bpb": float(val_bpb), "val_loss": float(val_loss), "tokens": int(tokens),
               "bytes": int(bytes), "seconds": float(seconds), "recorded_at": time.time(), **extra}
        return self.update_summary(stages={name: row})

    def stages(self) -> dict[str, dict[str, Any]]:
        return self.read_summary().get("stages", {})

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        rows = []
        with open(self.metrics, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    rows.append(json.loads(line))
        return rows

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def format_ledger(stages: dict[str, dict[str, Any]]) -> str:
    """The stage ledger as an aligned text table (known stages first, in order)."""
    names = [s for s in STAGES if s in stages] + sorted(s for s in stages if s not in STAGES)
    w = max([22] + [len(n) + 2 for n in names])
    lines = [f"{'stage':<{w}}{'val_bpb':>12}{'val_loss':>11}{'tokens':>12}{'bytes':>13}{'seconds':>10}"]
    for n in names:
        r = stages[n]
        lines.append(f"{n:<{w}}{r['val_bpb']:>12.6f}{r['val_loss']:>11.5f}{r['tokens']:>12,}"
                     f"{r['bytes']:>13,}{r['seconds']:>10.1f}")
    return "\n".join(lines)
