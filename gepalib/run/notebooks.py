"""Executing the notebooks headlessly (papermill) and tabulating the findings: ``gepa reproduce``.

Steps: prepare the embedded dataset if needed; execute each notebook with papermill
(kernel ``python3``, cwd = the project root) into ``<out>/<name>.ipynb`` -- the sources
in ``notebooks/`` stay output-free; each findings notebook computes its verdict with
:mod:`gepalib.findings` and stores it with :func:`gepalib.findings.report.save_finding`
as ``<figures>/finding_F<n>.json``; finally :func:`gepalib.findings.report.write_findings_md`
tabulates them into ``<figures>/findings.md`` (the submission's number, ours, the
verdict). A failing notebook is reported and the others still run.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from gepalib.paths import project_root, resolve_path
from gepalib.findings.report import ALL_RECORDS, FINDINGS, load_findings, save_finding, write_findings_md  # noqa: F401
from gepalib.run.configs import ensure_data

NOTEBOOKS = ("00_quickstart", "01_train", "02_artifact_and_eval", "10_warmdown", "11_compressibility",
             "12_sgd_vs_adamw", "13_freezing", "14_ttt_share", "15_ttt_families", "16_quantizers")
KERNEL = "python3"

# --quick (and the test-suite): the "quick" scale and the shortest experiments that still
# exercise every code path (several evaluations per phase, two seeds, two ladder rungs).
QUICK_COMMON: dict[str, Any] = {"scale": "quick", "val_every": 2}
QUICK_PARAMETERS: dict[str, dict[str, Any]] = {
    "00_quickstart": {"steps": 10},  # = the ladder's first rung (seed 42): trained once, reused
    "01_train": {"steps": 20},  # = the ladder's last rung
    "02_artifact_and_eval": {"steps": 20},
    "10_warmdown": {"ladder_steps": [10, 20], "seeds": [42, 43]},
    "11_compressibility": {"ladder_steps": [10, 20]},
    "12_sgd_vs_adamw": {"ladder_steps": [10, 20], "seeds": [42, 43], "ttt_val_tokens": None},
    "13_freezing": {"ladder_steps": [10, 20], "seeds": [42, 43], "freeze_blocks": [0, 1], "ttt_val_tokens": None},
    "14_ttt_share": {"ladder_steps": [10, 20], "baseline_steps": 3, "ttt_val_tokens": None},
    "15_ttt_families": {"ladder_steps": [10, 20], "seeds": [42, 43], "ttt_val_tokens": 4096, "phase_docs": [1, 2]},
    "16_quantizers": {"ladder_steps": [10, 20]},
}


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


# ---------------------------------------------------------------------------
# Executing notebooks


def load_parameters_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping of notebook parameters (e.g. ``notebooks/<name>.gpu.yaml``)."""
    import yaml  # the notebooks extra

    p = resolve_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: parameters file not found")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of parameter names to values")
    return data


# The cells' output lines that show a notebook is alive: the runs' own key:value lines
# (step:20/400 train_loss:..., int6_roundtrip val_bpb:...) and launch/reuse notices.
PROGRESS_LINE = re.compile(r"^(launching |reusing |final |[A-Za-z_][\w.\[\],=-]*:\S)")
STEP_ECHO_S = 10.0  # at most one plain training-step line per this many seconds


class ProgressEcho:
    """A file-like sink for papermill's live cell output: each complete line that
    :data:`PROGRESS_LINE` matches is printed as ``  <notebook> | <line>`` (plain step lines at
    most every :data:`STEP_ECHO_S` seconds; evaluation lines always), or every line with
    ``all_lines``."""

    def __init__(self, name: str, *, all_lines: bool = False, out: TextIO | None = None,
                 step_every_s: float = STEP_ECHO_S):
        self.name, self.all_lines, self.out, self.step_every_s = name, all_lines, out, step_every_s
        self.partial, self.last_step = "", -float("inf")

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self._line(line.rsplit("\r", 1)[-1].rstrip())  # a progress bar's last redraw
        return len(text)

    def flush(self) -> None:
        (self.out or sys.stdout).flush()

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        if not self.all_lines:
            if not PROGRESS_LINE.match(line):
                return
            if line.startswith("step:") and "val_" not in line:
                now = time.monotonic()
                if now - self.last_step < self.step_every_s:
                    return
                self.last_step = now
        print(f"  {self.name} | {line}", file=self.out or sys.stdout, flush=True)


def execute_notebook(name: str, out_dir: str | os.PathLike, parameters: dict[str, Any], *,
                     log_output: bool = False, kernel: str = KERNEL, echo: bool = True) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill into ``<out_dir>/<name>.ipynb``.

    Runs with cwd = the project root; the kernel inherits this process's environment, to
    which gepalib's root is added on PYTHONPATH and ``OMP_WAIT_POLICY=PASSIVE`` (unless set).
    While it runs, the runs' progress lines are echoed as they come (:class:`ProgressEcho`;
    ``log_output``: every line the cells print, stderr too; ``echo=False``: nothing).
    A failing cell raises papermill's PapermillExecutionError (the executed copy shows where)."""
    import papermill as pm  # the notebooks extra

    src = notebooks_dir() / f"{name}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such notebook; choose from {', '.join(NOTEBOOKS)}")
    out = resolve_path(out_dir) / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    root = str(project_root())
    pp = os.environ.get("PYTHONPATH", "")
    if root not in pp.split(os.pathsep):  # the kernel inherits the environment
        os.environ["PYTHONPATH"] = root + (os.pathsep + pp if pp else "")
    os.environ.setdefault("GEPA_HOME", root)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as gepalib.run.launch does for its subprocesses
    sinks = {}
    if echo:
        sinks["stdout_file"] = ProgressEcho(name, all_lines=log_output)
        if log_output:
            sinks["stderr_file"] = ProgressEcho(name, all_lines=True, out=sys.stderr)
    pm.execute_notebook(str(src), str(out), parameters=parameters, kernel_name=kernel, cwd=root,
                        progress_bar=False, **sinks)
    return out


def reproduce(notebooks: Sequence[str] | None = None, *, quick: bool = False, out: str = "runs/notebooks",
              figures: str = "figures", runs_root: str = "runs", data_dir: str = "data/sotu_sp1024",
              parameters: dict[str, Any] | None = None, log_output: bool = False) -> dict[str, Any]:
    """Execute the notebooks (all by default, in order) and write ``<figures>/findings.md``.

    Returns {"notebooks": [{notebook, status, seconds, output, error}], "findings_md": path,
    "seconds": total}."""
    names = list(notebooks) if notebooks else list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; choose from {', '.join(NOTEBOOKS)}")
    names = [n for n in NOTEBOOKS if n in names]  # canonical order: 10 trains what 11-14 reuse
    t_all = time.perf_counter()
    data_dir = str((parameters or {}).get("data_dir", data_dir))
    ensure_data(data_dir)
    fig_dir = resolve_path(figures)
    fig_dir.mkdir(parents=True, exist_ok=True)
    for f, nb in ALL_RECORDS.items():  # a stale verdict must not survive a failed re-run
        if nb in names:
            (fig_dir / f"finding_{f}.json").unlink(missing_ok=True)
    rows = []
    for name in names:
        params = {"data_dir": data_dir, "runs_root": runs_root, "figures_dir": str(fig_dir)}
        if quick:
            params.update(QUICK_COMMON)
            params.update(QUICK_PARAMETERS.get(name, {}))
        params.update(parameters or {})
        print(f"notebook:{name} status:running", flush=True)
        t0 = time.perf_counter()
        row = {"notebook": name, "status": "ok", "output": str(resolve_path(out) / f"{name}.ipynb"), "error": ""}
        try:
            execute_notebook(name, out, params, log_output=log_output)
        except Exception as e:  # noqa: BLE001 -- report and go on with the next notebook
            row["status"] = "failed"
            row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        row["seconds"] = time.perf_counter() - t0
        print(f"notebook:{name} status:{row['status']} seconds:{row['seconds']:.1f}"
              + (f" error:{row['error']}" if row["error"] else ""), flush=True)
        rows.append(row)
    total = time.perf_counter() - t_all
    note = (f"Scale: {'quick' if quick else (parameters or {}).get('scale', 'notebook defaults (cpu)')}; "
            f"executed notebooks in `{out}`; figures in `{figures}`; total {total:.0f} s.")
    md = write_findings_md(fig_dir, notebook_rows=rows, note=note)
    print(f"findings_md:{md} seconds:{total:.1f}", flush=True)
    return {"notebooks": rows, "findings_md": str(md), "seconds": total}
