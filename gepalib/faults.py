"""How a training run stops early: SIGTERM/SIGINT (a checkpoint, then :class:`TrainInterrupted`),
a non-finite loss or gradient norm (:class:`NonFiniteLoss`, nothing applied), and the test
hooks that provoke both, read once from the environment when a trainer is built:

  GEPA_INJECT_NAN_AT_STEP=k  multiply the loss of step k (1-based) by NaN
  GEPA_SIGNAL_AT_STEP=k      the process sends itself SIGTERM during step k
  GEPA_FAULT_AT_WRITE=k[:what]  at the k-th atomic file write of this process (its temp file
                             written, not yet renamed): ``kill`` (default) sends SIGKILL to the
                             process, ``enospc`` / ``erofs`` / ``eacces`` raise that OSError

Evaluations that produce a NaN/inf number raise :class:`NonFiniteResult`: such a number is
never recorded as a result.

The launcher passes the environment on to torchrun's children, so the hooks work there too.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

NAN_ENV = "GEPA_INJECT_NAN_AT_STEP"
SIGNAL_ENV = "GEPA_SIGNAL_AT_STEP"
WRITE_ENV = "GEPA_FAULT_AT_WRITE"
WRITE_ERRORS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "eacces": errno.EACCES}
_writes = 0  # atomic writes by this process (gepalib.fsio calls on_write before each rename)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN/inf; the run stopped and saved nothing of that step."""


class NonFiniteResult(ValueError):
    """An evaluation gave a NaN/inf loss or bpb (or the weights hold NaN/inf): not a result."""


class TrainInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was written and the run stopped cleanly."""

    def __init__(self, msg: str, signum: int, step: int):
        super().__init__(msg)
        self.signum, self.step = signum, step


class StopFlag:
    """Set by SIGTERM/SIGINT while entered; a second SIGINT interrupts immediately."""

    def __init__(self, signum: int = 0):
        self.signum = signum
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
        return False


@dataclass(frozen=True)
class FaultHooks:
    """Test-only faults at 1-based steps. :meth:`from_env` returns None when no variable is
    set, so the trainer's step loop skips the hooks with one ``is None`` check."""

    nan_at_step: int = -1
    signal_at_step: int = -1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FaultHooks | None:
        def read(name: str) -> int:
            v = environ.get(name, "").strip()
            return int(v) if v else -1

        hooks = cls(read(NAN_ENV), read(SIGNAL_ENV))
        return hooks if hooks.nan_at_step > 0 or hooks.signal_at_step > 0 else None

    def on_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """Each micro-step's loss of 0-based ``step``."""
        return loss * float("nan") if step + 1 == self.nan_at_step else loss

    def after_backward(self, step: int) -> None:
        """After the micro-steps of 0-based ``step``, before the gradient all-reduce."""
        if step + 1 == self.signal_at_step:
            os.kill(os.getpid(), signal.SIGTERM)


def on_write(path: os.PathLike | str) -> None:
    """Called by every atomic write between writing its temp file and renaming it into place;
    acts on the write that :data:`WRITE_ENV` names (test-only, see the module docstring)."""
    global _writes
    spec = os.environ.get(WRITE_ENV, "").strip()
    _writes += 1
    if not spec:
        return
    k, _, what = spec.partition(":")
    if int(k) != _writes:
        return
    what = what or "kill"
    if what == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if what not in WRITE_ERRORS:
        raise ValueError(f"{WRITE_ENV}={spec!r}: unknown fault {what!r} (kill | {' | '.join(WRITE_ERRORS)})")
    code = WRITE_ERRORS[what]
    raise OSError(code, os.strerror(code), str(path))
