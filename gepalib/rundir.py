"""Run-directory layout and the one definition of a run's identity.

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

**Run identity.** :func:`identity` is the part of a :class:`~gepalib.config.RunConfig`
that decides a run directory's contents: the data, model, train and quant sections,
paths resolved, :data:`BOOKKEEPING_FIELDS` left out. The eval and ttt sections are
stage settings, not identity: every stage row records the settings it was measured
with, so one run serves many evaluations. :func:`identity_hash` names
content-addressed run directories (``runs/<preset>-<hash>``).

``resume=True`` narrows it to what decides the training trajectory -- what a
checkpoint must match to be continued: the quant section and
:data:`RESUMABLE_FIELDS` (validation/logging cadence, the wall-clock cap) may change
between a run and its resumption, since neither changes a weight. That view keeps
paths as written: its hash is the fingerprint stored in checkpoints and in
summary.json, and resolving paths would orphan the checkpoints of existing runs.
(see docs/runs.md)
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from gepalib.config import RunConfig, load_config, resolve_path
from gepalib.fsio import atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text, json_default  # noqa: F401

# ---------------------------------------------------------------------------
# Run identity

IDENTITY_SECTIONS = ("data", "model", "train", "quant")
# Never part of a run's identity: they change what is displayed or kept on disk, never a number.
BOOKKEEPING_FIELDS = ("progress", "keep_checkpoints", "checkpoint_every")
# Part of the identity (they decide metrics.jsonl's rows and where a run stops), not of the
# training trajectory: a checkpoint may be resumed under new values (``resume=True``).
RESUMABLE_FIELDS = ("val_every", "log_every", "max_wallclock")
PATH_FIELDS = ("data_dir", "tokenizer_path")


def identity(cfg: RunConfig, *, resume: bool = False) -> dict[str, Any]:
    """The part of ``cfg`` that identifies a run: :data:`IDENTITY_SECTIONS`, paths resolved,
    :data:`BOOKKEEPING_FIELDS` dropped. ``resume=True``: only the training trajectory (no quant
    section, :data:`RESUMABLE_FIELDS` dropped too, paths as written), what a checkpoint must match."""
    d = cfg.to_dict()
    out = {sec: dict(d[sec]) for sec in IDENTITY_SECTIONS if not (resume and sec == "quant")}
    for f in BOOKKEEPING_FIELDS + (RESUMABLE_FIELDS if resume else ()):
        out["train"].pop(f, None)
    for f in PATH_FIELDS if not resume else ():
        if out["data"].get(f):
            out["data"][f] = str(resolve_path(out["data"][f]))
    return json.loads(json.dumps(out, sort_keys=True))  # tuples -> lists, as in config.json


def identity_hash(cfg: RunConfig, *, resume: bool = False) -> str:
    """16-hex content hash of :func:`identity` (the ``<hash>`` of ``runs/<preset>-<hash>``)."""
    return hashlib.sha256(json.dumps(identity(cfg, resume=resume), sort_keys=True).encode()).hexdigest()[:16]


def identity_diff(a: RunConfig, b: RunConfig, *, resume: bool = False) -> list[str]:
    """``"field (old -> new)"`` for every field where the two configs' identities differ."""
    ia, ib = identity(a, resume=resume), identity(b, resume=resume)
    out = []
    for sec in ia:
        for k in sorted(set(ia[sec]) | set(ib[sec])):
            if ia[sec].get(k) != ib[sec].get(k):
                out.append(f"{k} ({ia[sec].get(k)!r} -> {ib[sec].get(k)!r})")
    return out


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

    def load_config(self) -> RunConfig:
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
        """Record one row of the stage ledger (summary.json -> "stages" -> name). Stage names, the
        settings a row records and the lookups are in :mod:`gepalib.run.stages`; the trainer, below
        that layer, writes its float rows through this method too."""
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


def as_rundir(run: RunDir | str | os.PathLike) -> RunDir:
    """``run`` as a RunDir (relative paths resolve under the project root); it must hold a config.json."""
    rd = run if isinstance(run, RunDir) else RunDir(resolve_path(run))
    if not rd.exists():
        raise FileNotFoundError(f"{rd.path}: not a run directory (no config.json)")
    return rd


def default_run_dir(cfg: RunConfig, runs_root: str | os.PathLike = "runs") -> Path:
    """``<runs_root>/<preset>-<identity_hash>`` (relative roots resolve under the project root)."""
    return resolve_path(runs_root) / f"{cfg.preset}-{identity_hash(cfg)}"


def is_finished(rd: RunDir) -> bool:
    """Training completed: summary.json says so and the EMA weights exist."""
    return rd.read_summary().get("train", {}).get("status") == "complete" and rd.ema_weights.exists()
