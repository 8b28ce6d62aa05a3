"""What one TTT evaluation of a run costs: wall time and peak memory (for the TTT families notebook).

The stage ledger records each evaluation's seconds; memory needs a probe around the
computation itself, so :func:`ttt_cost` loads the run's int6 artifact, scores it with
:func:`gepalib.eval.ttt.run_ttt` under the given TTT settings, and measures:

* on CUDA: ``torch.cuda.max_memory_allocated`` during the call, its peak reset at the start,
  minus what was allocated at the start (``method="cuda_max_allocated"``);
* on the CPU: the growth of the process's peak resident set during the call
  (``method="rss_peak"``): freed heap memory is first returned to the system (``gc.collect``,
  glibc's ``malloc_trim``), the peak (VmHWM) is reset to the current resident size by writing
  ``5`` to ``/proc/self/clear_refs`` (Linux), and the result is VmHWM at the end minus VmRSS
  at the start. Where /proc is not writable it is the plain ``resource.getrusage`` ru_maxrss
  delta, which is 0 whenever the process had peaked higher before (``method="maxrss_delta"``).

Single process only; the weights are the artifact's, as in ``gepa eval``.
"""
from __future__ import annotations

import ctypes
import gc
import os
import resource
import time
from typing import Any

import torch

from gepalib import dist
from gepalib.bpb import build_byte_luts
from gepalib.paths import resolve_path
from gepalib.data import load_val_tokens
from gepalib.eval.ttt import run_ttt
from gepalib.run.pipeline import build_model, load_weights
from gepalib.run.stages import stage_config
from gepalib.rundir import RunDir, as_rundir


def _status_kb(key: str) -> int | None:
    """VmRSS / VmHWM of this process in KiB (None without /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context: peak memory growth (MiB) of the enclosed code on ``device`` (module docstring)."""

    def __init__(self, device: torch.device):
        self.device, self.mib, self.method = device, float("nan"), ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            self.method = "cuda_max_allocated"
        else:
            _trim_heap()
            rss = _status_kb("VmRSS")
            reset = rss is not None and _reset_peak_rss()
            self.start = rss if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "rss_peak" if reset else "maxrss_delta"
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        else:
            peak = _status_kb("VmHWM") if self.method == "rss_peak" else None
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if peak is None else peak
            self.mib = max(0, peak - self.start) / 1024
        return False


def ttt_cost(run: RunDir | str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Score the run's artifact with TTT under ``overrides`` (eval/ttt fields, ``val_tokens``)
    and return {"seconds", "peak_mib", "memory_method", "val_bpb", "tokens", "device"}."""
    rd = as_rundir(run)
    cfg = stage_config(rd, **{k: v for k, v in overrides.items() if v is not None})
    device = dist.init(cfg.train.device).device
    seq_len = cfg.eval.eval_seq_len or cfg.train.seq_len
    model = build_model(cfg, load_weights(rd, "artifact"), str(rd.artifact), device)
    val = load_val_tokens(resolve_path(cfg.data.data_dir), seq_len, cfg.model.vocab_size,
                          max_targets=cfg.data.val_tokens)
    luts = build_byte_luts(cfg.data.tokenizer_file(), cfg.model.vocab_size)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        r = run_ttt(model, val, luts, seq_len, cfg.ttt, cfg.eval, autocast=cfg.train.autocast)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mib": mem.mib, "memory_method": mem.method, "val_bpb": r.val_bpb,
            "tokens": r.tokens, "device": str(device)}
