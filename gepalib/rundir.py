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
    *.sha256.json      checksums of the checkpoints and weights files (verified on load)
    run.lock           held by the one process writing the directory (pid, host, start time)

Every write goes to a temp file in the same directory and is renamed into
place, so a killed process never leaves a half-written file behind; JSON is
strict (no NaN). One process at a time writes a run directory: the lock of
:mod:`gepalib.runlock` (``gepa train``, ``gepa quantize`` and ``gepa eval`` take it;
a second one fails at once, naming the holder). A stage that fails is recorded under ``failures``
in summary.json, never as a result.

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
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from gepalib.config import RunConfig, load_config
from gepalib.dist import device_type
from gepalib.muon import resolve_ns_dtype
from gepalib.paths import resolve_path
from gepalib.faults import NonFiniteResult
from gepalib.fsio import (atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text,  # noqa: F401
                          DamagedFile, checksum_path, json_default, loads_strict, remove_stale_temps, verify_file)

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
    :data:`BOOKKEEPING_FIELDS` dropped, ``muon_ns_dtype="auto"`` resolved for the run's device,
    ``data_seed`` only where it shuffles (the default -1 is the order runs had before the field).
    ``resume=True``: only the training trajectory (no quant section, :data:`RESUMABLE_FIELDS`
    dropped too, paths as written), what a checkpoint must match."""
    d = cfg.to_dict()
    out = {sec: dict(d[sec]) for sec in IDENTITY_SECTIONS if not (resume and sec == "quant")}
    # the precision the run trains with, not the word "auto" (an "auto" run on CUDA is the bf16 run)
    out["train"]["muon_ns_dtype"] = resolve_ns_dtype(cfg.train.muon_ns_dtype, device_type(cfg.train.device))
    for f in BOOKKEEPING_FIELDS + (RESUMABLE_FIELDS if resume else ()):
        out["train"].pop(f, None)
    if out["train"].get("data_seed") == -1:  # the submission's order: the trajectory of runs made before the field
        del out["train"]["data_seed"]
    if "quant" in out:
        out["quant"] = active_quant(out["quant"])
    for f in PATH_FIELDS if not resume else ():
        if out["data"].get(f):
            out["data"][f] = str(resolve_path(out["data"][f]))
    return json.loads(json.dumps(out, sort_keys=True))  # tuples -> lists, as in config.json


def active_quant(q: dict[str, Any]) -> dict[str, Any]:
    """The quant fields that act: ``clip_sigmas`` only with ``quant_mode="sdclip"`` (elsewhere it
    changes no number, and runs and results made before the field keep their names)."""
    return {k: v for k, v in q.items() if k != "clip_sigmas" or q.get("quant_mode") == "sdclip"}


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

    @property
    def lock(self) -> Path:
        return self.path / "run.lock"

    # -- config / summary ------------------------------------------------
    def exists(self) -> bool:
        return self.config.exists()

    def load_config(self) -> RunConfig:
        if not self.config.exists():
            raise FileNotFoundError(f"{self.path}: not a run directory (no config.json)")
        return load_config(self.config)

    def remove_stale_temps(self) -> None:
        """Delete the temp files of a writer that was killed (only while holding :class:`RunLock`)."""
        for d in (self.path, self.checkpoints):
            remove_stale_temps(d)

    def clear_training(self) -> None:
        """Start over: delete what training and the stages wrote (metrics, log, summary,
        weights, artifact, checkpoints, their checksums); config.json is rewritten by the trainer."""
        for p in (self.metrics, self.log, self.summary, self.ema_weights, self.live_weights, self.artifact):
            p.unlink(missing_ok=True)
            checksum_path(p).unlink(missing_ok=True)
        shutil.rmtree(self.checkpoints, ignore_errors=True)

    def read_summary(self) -> dict[str, Any]:
        """summary.json. One written before JSON was strict may hold NaN: such a stage row is read
        as that stage's failure (it is no result) and any other NaN as null."""
        if not self.summary.exists():
            return {}
        text = self.summary.read_text(encoding="utf-8")
        try:
            return loads_strict(text, str(self.summary))
        except ValueError:
            s = json.loads(text)  # NaN / Infinity from an older version
        for name, row in list(s.get("stages", {}).items()):
            if not all(isinstance(row.get(k), (int, float)) and math.isfinite(row[k]) for k in ("val_bpb", "val_loss")):
                del s["stages"][name]
                s.setdefault("failures", {})[name] = {"error": f"recorded as val_bpb={row.get('val_bpb')} by an "
                                                               f"older version: not a result", "recorded_at": 0.0}
        return json.loads(json.dumps(s), parse_constant=lambda c: None)

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
        that layer, writes its float rows through :meth:`record_stages`."""
        return self.record_stages({name: dict(val_bpb=val_bpb, val_loss=val_loss, tokens=tokens, bytes=bytes,
                                              seconds=seconds, **extra)})

    def record_stages(self, rows: dict[str, dict[str, Any]], **kv: Any) -> dict[str, Any]:
        """Record several stage rows (each: val_bpb, val_loss, tokens, bytes, seconds, extras) and
        merge the top-level ``kv`` (as :meth:`update_summary`) in one atomic write of summary.json.
        A non-finite val_bpb/val_loss is refused (NonFiniteResult): it is not a result. A recorded
        stage's earlier failure is dropped."""
        s = self.read_summary()
        for name, r in rows.items():
            bpb, loss = r["val_bpb"], r["val_loss"]
            if not (math.isfinite(bpb) and math.isfinite(loss)):
                raise NonFiniteResult(f"stage {name}: val_bpb={bpb} val_loss={loss} is not a finite number; "
                                      f"not recorded")
            row = {**r, "val_bpb": float(bpb), "val_loss": float(loss), "tokens": int(r["tokens"]),
                   "bytes": int(r["bytes"]), "seconds": float(r["seconds"]), "recorded_at": time.time()}
            s.setdefault("stages", {})[name] = row
            s.get("failures", {}).pop(name, None)  # the stage measured now: its failure is history
        for k, v in kv.items():
            s[k] = {**s[k], **v} if isinstance(v, dict) and isinstance(s.get(k), dict) else v
        atomic_write_json(self.summary, s)
        return s

    def record_failure(self, name: str, error: str, **extra: Any) -> dict[str, Any]:
        """Record that stage (or step) ``name`` failed (summary.json -> "failures" -> name), so a
        failed stage leaves a trace but never a result row."""
        row = {"error": str(error), "recorded_at": time.time(), **extra}
        return self.update_summary(failures={name: row})

    def clear_failure(self, name: str) -> None:
        """Forget ``name``'s recorded failure (it has succeeded since)."""
        s = self.read_summary()
        if name in s.get("failures", {}):
            del s["failures"][name]
            atomic_write_json(self.summary, s)

    def try_record_failure(self, name: str, error: str, **extra: Any) -> bool:
        """:meth:`record_failure` when summary.json can be written (a full or read-only disk may
        be why the stage failed); True when recorded."""
        return self.try_update_summary(failures={name: {"error": str(error), "recorded_at": time.time(), **extra}})

    def try_update_summary(self, **kv: Any) -> bool:
        """:meth:`update_summary` unless summary.json cannot be written or read; True when written."""
        try:
            self.update_summary(**kv)
            return True
        except (OSError, ValueError):
            return False

    def stages(self) -> dict[str, dict[str, Any]]:
        return self.read_summary().get("stages", {})

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's rows. A last line without its newline that does not parse is a row
        whose append was cut short (the process was killed): it is left out; any other bad
        line is an error naming the file and line."""
        if not self.metrics.exists():
            return []
        text = self.metrics.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        rows = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(loads_strict(line, f"{self.metrics}:{i}"))
            except ValueError as e:
                if i == len(lines):  # torn final append
                    break
                raise ValueError(f"{self.metrics}:{i}: not a JSON row ({e})") from None
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


def is_finished(rd: RunDir, *, verify: bool = False) -> bool:
    """Training completed: summary.json says so and the EMA weights exist (``verify``: and both
    weights files match their checksums)."""
    if not (rd.read_summary().get("train", {}).get("status") == "complete" and rd.ema_weights.exists()):
        return False
    if verify:
        try:
            for p in (rd.ema_weights, rd.live_weights):
                verify_file(p)
        except (DamagedFile, OSError) as e:
            print(f"warning: {e}; writing the weights again from the last checkpoint", flush=True)
            return False
    return True
