"""How a training run stops early: SIGTERM/SIGINT (a checkpoint, then :class:`TrainInterrupted`),
a non-finite loss or gradient norm (:class:`NonFiniteLoss`, nothing applied), and the test
hooks that provoke both, read once from the environment when a trainer is built:

  GEPA_INJECT_NAN_AT_STEP=k  multiply the loss of step k (1-based) by NaN
  GEPA_SIGNAL_AT_STEP=k      the process sends itself SIGTERM during step k

The launcher passes the environment on to torchrun's children, so the hooks work there too.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

NAN_ENV = "GEPA_INJECT_NAN_AT_STEP"
SIGNAL_ENV = "GEPA_SIGNAL_AT_STEP"


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN/inf; the run stopped before applying that step."""


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
