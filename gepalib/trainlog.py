"""What the trainer writes besides weights: ``train.log``, the progress bar, ``metrics.jsonl``
rows and the provenance of ``env.json`` (versions, device, host, git commit)."""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import gepalib
from gepalib import dist
from gepalib.fsio import atomic_write_text
from gepalib.rundir import RunDir


class Logger:
    """rank-0 ``train.log`` (append) + stdout, or tqdm bar with log lines written above it."""

    def __init__(self, rd: RunDir, is_main: bool, total: int, start: int, progress: str):
        self.is_main, self.bar = is_main, None
        self.f = open(rd.log, "a", encoding="utf-8") if is_main else None
        if is_main and use_progress_bar(progress):
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)

    def line(self, msg: str, echo: bool = True) -> None:
        if not self.is_main:
            return
        self.f.write(msg + "\n")
        self.f.flush()
        if echo:
            if self.bar is not None:
                self.bar.write(msg)
            else:
                print(msg, flush=True)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def step(self, msg: str, postfix: str = "") -> None:
        """A step line: file + (bar postfix or stdout)."""
        if self.bar is not None:
            self.line(msg, echo=False)
            if postfix:
                self.bar.set_postfix_str(postfix)
        else:
            self.line(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.f is not None:
            self.f.close()
            self.f = None


def use_progress_bar(progress: str) -> bool:
    """``auto``: a bar only on a TTY and not under CI (papermill/Jupyter stderr is not a TTY)."""
    if progress == "bar":
        return True
    if progress == "log":
        return False
    return bool(sys.stderr.isatty()) and not os.environ.get("CI")


def git_commit() -> str | None:
    root = Path(gepalib.__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(info: dist.DistInfo, accum: int) -> dict[str, Any]:
    """env.json: versions, device, host, process count, git commit, command line."""
    dev = info.device
    return {
        "gepalib": gepalib.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "hostname": socket.gethostname(),
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
        "cuda": torch.version.cuda, "world_size": info.world_size, "accum": accum,
        "torch_threads": torch.get_num_threads(), "git_commit": git_commit(), "argv": list(sys.argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def append_metrics(rd: RunDir, row: dict[str, Any]) -> None:
    with open(rd.metrics, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def truncate_metrics(rd: RunDir, last_step: int) -> None:
    """Drop metric rows logged after ``last_step`` (they are re-logged after a resume)."""
    rows = [r for r in rd.read_metrics() if r.get("step", 0) <= last_step]
    atomic_write_text(rd.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
