"""Progress of long loops (evaluation, TTT, quantization): ``for b in track(batches, "eval_sliding")``.

Rank 0 only. The ``progress`` modes are the trainer's (``progress`` config field): ``auto``
is a tqdm bar on a terminal and plain lines elsewhere (papermill, CI, a pipe); ``bar`` and
``log`` force one or the other; ``off`` shows nothing. A bar appears only once a loop has
run for :data:`BAR_DELAY_S` and disappears when it ends; plain lines are greppable
``progress:<what> <unit>:i/total elapsed:..s eta:..s`` every :data:`LOG_EVERY_S` seconds,
so a short loop prints nothing.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")
BAR_DELAY_S = 2.0
LOG_EVERY_S = 30.0
MODES = ("auto", "bar", "log", "off")


def use_progress_bar(progress: str) -> bool:
    """``auto``: a bar only on a TTY and not under CI (papermill/Jupyter stderr is not a TTY)."""
    if progress == "bar":
        return True
    if progress == "log":
        return False
    return bool(sys.stderr.isatty()) and not os.environ.get("CI")


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def track(iterable: Iterable[T], what: str, *, unit: str = "batch", total: int | None = None,
          mode: str = "auto", every_s: float | None = None) -> Iterable[T]:
    """``iterable``, reporting progress on rank 0 as ``mode`` says (module docstring)."""
    if mode not in MODES:
        raise ValueError(f"progress={mode!r}; choose one of {MODES}")
    if mode == "off" or _rank() != 0:
        return iterable
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if use_progress_bar(mode):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=what, unit=unit, leave=False, delay=BAR_DELAY_S,
                    dynamic_ncols=True, file=sys.stderr)
    return _lines(iterable, what, unit, total, LOG_EVERY_S if every_s is None else every_s)


def _lines(iterable: Iterable[T], what: str, unit: str, total: int | None, every_s: float) -> Iterator[T]:
    t0 = last = time.perf_counter()
    done, shown = 0, False
    for x in iterable:
        yield x
        done += 1
        now = time.perf_counter()
        if now - last >= every_s:
            last, shown = now, True
            print(progress_line(what, unit, done, total, now - t0), flush=True)
    if shown:  # a loop that reported on the way also reports its end
        print(progress_line(what, unit, done, total, time.perf_counter() - t0), flush=True)


def progress_line(what: str, unit: str, done: int, total: int | None, elapsed: float) -> str:
    line = f"progress:{what} {unit}:{done}/{total if total is not None else '?'} elapsed:{elapsed:.0f}s"
    if total and 0 < done < total:
        line += f" eta:{elapsed / done * (total - done):.0f}s"
    return line
