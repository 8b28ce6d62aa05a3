"""What the trainer writes besides weights: ``train.log``, the progress bar, ``metrics.jsonl``
rows and the provenance of ``env.json`` (versions, device, host, git commit)."""
from __future__ import annotations

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

import gepalib
from gepalib import dist
from gepalib.fsio import atomic_write_text, dumps_strict, write_failed
from gepalib.progress import use_progress_bar
from gepalib.rundir import RunDir


@torch.no_grad()
def matrix_rms(model: torch.nn.Module) -> float:
    """The RMS over every 2-D weight matrix of ``model`` (all their values together): the
    weight-growth curve logged with each validation (``weight_rms`` in metrics.jsonl)."""
    sq, n = 0.0, 0
    for p in model.parameters():
        if p.ndim == 2:
            sq += float(p.detach().double().square().sum())
            n += p.numel()
    return (sq / n) ** 0.5 if n else 0.0


def write_header(log: Logger, t: Any, group_table: str) -> None:
    """train.log's first lines for trainer ``t`` (run, versions, plan, data, optimizer groups,
    resume warnings, the checkpoint resumed from)."""
    cfg, tc, plan, d = t.cfg, t.cfg.train, t.plan, t.data_info
    log.line(f"==== gepalib train {'resume' if t.steps_done else 'start'} step:{t.steps_done}/{tc.steps} "
             f"time:{time.strftime('%Y-%m-%dT%H:%M:%S')}")
    log.line(f"run_dir:{t.rd.path} preset:{cfg.preset} fingerprint:{t.fingerprint} git:{git_commit()} "
             f"host:{socket.gethostname()}")
    log.line(f"torch:{torch.__version__} device:{t.dev} world_size:{t.info.world_size} accum:{plan.accum} "
             f"micro_batch_tokens:{plan.micro_tokens} batch_tokens:{tc.batch_tokens} seq_len:{plan.seq_len} "
             f"autocast:{tc.autocast} compile:{tc.compile} muon_ns_dtype:{tc.muon_ns_dtype}")
    if plan.note:
        log.line(f"plan: {plan.note}")
    log.line(f"params:{t.n_params} data_dir:{d['data_dir']} train_tokens:{d['train_tokens']} "
             f"val_targets:{t.val_tokens.numel() - 1}")
    if d.get("manifest") == "none":
        log.line(f"data: {d['data_dir']} has no manifest.json; its shards were checked against their headers "
                 f"and the vocabulary only (`gepa data check` says status: no-manifest)")
    for ln in group_table.splitlines():
        log.line("group " + ln, echo=False)
    for note in t.notes:
        log.line(note, echo=False)  # printed when found
    if t.resumed_from is not None:
        log.line(f"resumed_from:{t.resumed_from}")


class Logger:
    """rank-0 ``train.log`` (append) + stdout, or tqdm bar with log lines written above it."""

    def __init__(self, rd: RunDir, is_main: bool, total: int, start: int, progress: str):
        self.is_main, self.bar, self.path = is_main, None, rd.log
        try:
            self.f = open(rd.log, "a", encoding="utf-8") if is_main else None
        except OSError as e:
            raise write_failed(e, rd.log) from e
        if is_main and use_progress_bar(progress):
            from tqdm import tqdm  # only for the bar: a run logging plain lines needs no tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)

    def line(self, msg: str, echo: bool = True) -> None:
        if not self.is_main:
            return
        try:
            self.f.write(msg + "\n")
            self.f.flush()
        except OSError as e:
            raise write_failed(e, self.path) from e
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
            f, self.f = self.f, None
            try:
                f.close()
            except OSError:
                pass  # its last write already failed (and said so)


def git_commit() -> str | None:
    root = Path(gepalib.__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(info: dist.DistInfo, accum: int) -> dict[str, Any]:
    """env.json: versions, device, host, process count, threads, CPU and kernel ISA, git commit,
    command line: what a run needs to be reproduced bit for bit (see docs/runs.md)."""
    dev = info.device
    cpu = cpu_info()
    return {
        "gepalib": gepalib.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "hostname": socket.gethostname(),
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu["model"],
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        "world_size": info.world_size, "accum": accum, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(), "cpu": cpu, "numerics_env": numerics_env(),
        "git_commit": git_commit(), "argv": list(sys.argv), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# Environment variables that change which kernels run, or how many threads they use
NUMERICS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY",
                "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE")


def numerics_env() -> dict[str, str]:
    """The :data:`NUMERICS_ENV` variables that are set."""
    return {k: os.environ[k] for k in NUMERICS_ENV if k in os.environ}


def cpu_info() -> dict[str, Any]:
    """The CPU (model, vendor, cores this process may use, SIMD flags), the ISA torch's kernels
    dispatch to, and the BLAS/oneDNN/OpenMP builds: another CPU model runs other kernels."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, val = line.partition(":")
                if not sep:
                    if fields:
                        break  # the first processor's block is enough
                    continue
                fields.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    simd = sorted(f for f in fields.get("flags", "").split() if f.startswith(("sse4", "avx", "fma", "amx")))
    libs = [ln.strip() for ln in torch.__config__.parallel_info().splitlines()
            if any(k in ln for k in ("Math Kernel Library", "MKL-DNN", "oneDNN", "parallel backend"))]
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "vendor": fields.get("vendor_id"), "family_model_stepping": "/".join(
                fields.get(k, "?") for k in ("cpu family", "model", "stepping")) if fields else None,
            "cores": os.cpu_count(), "usable_cores": usable,
            "kernel_isa": torch.backends.cpu.get_cpu_capability(), "simd_flags": simd, "libraries": libs}


def append_metrics(rd: RunDir, row: dict[str, Any]) -> None:
    """One strict-JSON line, appended with a single write (a kill leaves at most a torn last
    line, which :meth:`RunDir.read_metrics` leaves out and the next resume rewrites)."""
    line = (dumps_strict(row, sort_keys=True) + "\n").encode("utf-8")
    try:
        fd = os.open(rd.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            while line:  # a short write (a nearly full disk) goes on until ENOSPC is raised
                line = line[os.write(fd, line):]
        finally:
            os.close(fd)
    except OSError as e:
        raise write_failed(e, rd.metrics) from e


def truncate_metrics(rd: RunDir, last_step: int) -> None:
    """Drop metric rows logged after ``last_step`` (they are re-logged after a resume)."""
    rows = [r for r in rd.read_metrics() if r.get("step", 0) <= last_step]
    atomic_write_text(rd.metrics, "".join(dumps_strict(r, sort_keys=True) + "\n" for r in rows))
