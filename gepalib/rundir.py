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
strict (no NaN). One process at a time writes a run directory: :class:`RunLock`
(``gepa train``, ``gepa quantize`` and ``gepa eval`` take it; a second one fails
at once, naming the holder). A stage that fails is recorded under ``failures``
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

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import torch

from gepalib import dist
from gepalib.config import RunConfig, load_config, resolve_path
from gepalib.faults import NonFiniteResult
from gepalib.fsio import (atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text,  # noqa: F401
                          DamagedFile, checksum_path, json_default, loads_strict, remove_stale_temps, verify_file,
                          write_failed)

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
        if not self.summary.exists():
            return {}
        return loads_strict(self.summary.read_text(encoding="utf-8"), str(self.summary))

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
        try:
            self.record_failure(name, error, **extra)
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


# ---------------------------------------------------------------------------
# One writer per run directory


class RunDirLocked(RuntimeError):
    """Another process holds the run directory's lock; ``holder`` is its record (may be {})."""

    def __init__(self, msg: str, holder: dict[str, Any] | None = None):
        super().__init__(msg)
        self.holder = holder or {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive ``flock`` on ``<run>/run.lock``, holding a JSON record of the holder (pid,
    host, command, start time). The kernel drops a flock when its process dies, however it
    dies, so a lock file left behind by a dead process is simply taken over (``stale`` then
    holds that process's record). Where the file system has no flock, the record decides: a
    live pid on this host (or any other host's record) holds the directory.

        with RunLock(rd.path, "train"):
            ...   # the only writer of rd
    """

    def __init__(self, run_dir: str | os.PathLike, command: str):
        self.path = Path(run_dir) / "run.lock"
        self.command = command
        self.fd: int | None = None
        self.stale: dict[str, Any] = {}

    def _record(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def _busy(self, holder: dict[str, Any]) -> RunDirLocked:
        who = (f"`gepa {holder.get('command', '?')}` (pid {holder.get('pid', '?')} on host "
               f"{holder.get('host', '?')}, since {holder.get('started', '?')})") if holder else "another process"
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            who += " -- this process: close the other Trainer first"
        return RunDirLocked(f"{self.path.parent} is in use by {who}; wait for it to finish or stop it. "
                            f"Only one process at a time may write a run directory", holder)

    def acquire(self) -> RunLock:
        """Take the lock without waiting; RunDirLocked names the holder when it is taken."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise write_failed(e, self.path) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy(self._record()) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            held = self._record()  # no flock here: trust a live holder's record
            if held and (held.get("host") != socket.gethostname() or _pid_alive(int(held.get("pid", -1)))):
                os.close(fd)
                raise self._busy(held) from None
        self.stale = self._record()
        rec = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "started_at": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(rec, sort_keys=True) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise write_failed(e, self.path) from e
        self.fd = fd
        return self

    def release(self) -> None:
        """Empty the record and drop the lock (idempotent)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a read-only or full disk: the kernel still drops the lock below
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def __del__(self):
        self.release()


def lock_run_dir(run_dir: str | os.PathLike, command: str, *, is_main: bool = True,
                 device: torch.device | None = None) -> RunLock | None:
    """Rank 0 takes :class:`RunLock` (it is the only writer); under torchrun every rank then
    learns whether it did and all raise together, so no rank waits in a collective for a
    rank that gave up. The holder then deletes the temp files a killed writer left. Returns
    the lock on rank 0, None elsewhere."""
    lock, err = None, None
    if is_main:
        try:
            lock = RunLock(run_dir, command).acquire()
        except (RunDirLocked, OSError) as e:
            err = e
    if dist.active():
        failed = dist.all_reduce_sum(torch.tensor([float(err is not None)], device=device or "cpu")).item()
        if failed and err is None:
            raise RunDirLocked(f"{run_dir}: rank 0 could not lock the run directory (its error says why)")
    if err is not None:
        raise err
    if lock is not None:  # the temp files of a writer that was killed (none is live now)
        RunDir(run_dir).remove_stale_temps()
    if lock is not None and lock.stale:
        s = lock.stale
        print(f"run_dir:{Path(run_dir)} took over the lock left by `gepa {s.get('command', '?')}` (pid "
              f"{s.get('pid', '?')} on host {s.get('host', '?')}, no longer running)", flush=True)
    return lock
