"""One writer per run directory: an exclusive ``flock`` on ``<run>/run.lock`` (see docs/runs.md).

``gepa train``, ``gepa quantize`` and a recording ``gepa eval`` take it before they read or
write anything; a second writer fails at once with :class:`RunDirLocked`, naming the holder
(pid, host, command, start time). The kernel drops a flock when its process dies, so the
lock of a killed process is taken over. Under torchrun only rank 0 (the writer) takes it and
every rank learns the outcome (:func:`lock_run_dir`).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from gepalib import dist
from gepalib.fsio import write_failed
from gepalib.procs import pid_alive
from gepalib.rundir import RunDir


class RunDirLocked(RuntimeError):
    """Another process holds the run directory's lock; ``holder`` is its record (may be {})."""

    def __init__(self, msg: str, holder: dict[str, Any] | None = None):
        super().__init__(msg)
        self.holder = holder or {}


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

    def _holder(self, wait_s: float = 1.0) -> dict[str, Any]:
        """The holder's record; a holder that has just taken the lock writes it right after, so an
        empty record is read again for up to ``wait_s`` before it is reported as unknown."""
        deadline = time.monotonic() + wait_s
        while True:
            rec = self._record()
            if rec or time.monotonic() >= deadline:
                return rec
            time.sleep(0.01)

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
            raise self._busy(self._holder()) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            held = self._record()  # no flock here: trust a live holder's record
            if held and (held.get("host") != socket.gethostname() or pid_alive(int(held.get("pid", -1)))):
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
