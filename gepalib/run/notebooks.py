"""Executing the notebooks headlessly (papermill) and tabulating the findings: ``gepa reproduce``.

Steps: prepare the embedded dataset if needed; train every run the notebooks plan, several
at once (:func:`gepalib.run.study.pretrain`; a run that fails is retried by its notebook,
which then reports it); execute each notebook with papermill
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
from gepalib.run.plans import plan_notebook
from gepalib.run.study import pretrain

NOTEBOOKS = ("00_quickstart", "01_train", "02_artifact_and_eval", "10_warmdown", "11_compressibility",
             "12_sgd_vs_adamw", "13_freezing", "14_ttt_share", "15_ttt_families", "16_quantizers")
KERNEL = "python3"

# Three budgets, one code path: every notebook's parameters cell holds the calibrated study's
# values (``gepa reproduce --study``, ``make study``); the reduced values below are the only
# other place parameters live. DEMO (``gepa reproduce``, ``make demo``): the same experiments,
# shorter and with two seeds, so every verdict reads "inconclusive" and says why (< 15 min on 2
# cores). QUICK (``--quick`` and the test-suite): the smallest runs that still exercise every
# code path (two ladder rungs, two seeds, a one-point held-out sweep).
_LADDER_DEMO = {"ladder_steps": [150, 300], "ladder_warmdown": [70, 120], "val_every": 25}
_TTT_DEMO = {"ttt_val_tokens": 32768, "sweep_lrs": {}, "sweep_chunk_tokens": [], "sweep_epochs": []}
_SGD_DEMO = {"ttt_optimizer": "sgd", "ttt_lr": 0.02, "ttt_momentum": 0.9, "ttt_epochs": 3, "ttt_freeze_blocks": 1,
             "ttt_chunk_tokens": 4096}
DEMO_COMMON: dict[str, Any] = {"scale": "cpu"}
DEMO_PARAMETERS: dict[str, dict[str, Any]] = {
    "00_quickstart": {"steps": 100},
    "01_train": {"steps": 300},  # = the demo ladder's longest rung (seed 42)
    "02_artifact_and_eval": {"steps": 300},
    "10_warmdown": {**_LADDER_DEMO, "seeds": [42, 43], "constant_steps": 0},
    "11_compressibility": {**_LADDER_DEMO, "constant_steps": 0},
    "12_sgd_vs_adamw": {**_LADDER_DEMO, **_TTT_DEMO, "seeds": [42, 43], "sgd": _SGD_DEMO,
                        "adamw": {"ttt_optimizer": "adamw", "ttt_lr": 0.001, "ttt_freeze_blocks": 1},
                        "compare_sliding": False},
    "13_freezing": {**_LADDER_DEMO, **_TTT_DEMO, "seeds": [42, 43], "sgd": _SGD_DEMO, "freeze_blocks": [0, 1]},
    "14_ttt_share": {**_LADDER_DEMO, **_TTT_DEMO, "sgd": _SGD_DEMO, "baseline_steps": 150},
    "15_ttt_families": {**_LADDER_DEMO, "seeds": [42, 43], "ttt_val_tokens": 16384, "phase_docs": [5, 10],
                        "sweep_lrs": {}, "family_sweeps": {}},
    "16_quantizers": {**_LADDER_DEMO},
}
_LADDER_QUICK = {"ladder_steps": [10, 20], "ladder_warmdown": None}
_TTT_QUICK = {"ttt_val_tokens": None, "sweep_lrs": {"sgd": [0.01]}, "sweep_chunk_tokens": [], "sweep_epochs": []}
QUICK_COMMON: dict[str, Any] = {"scale": "quick", "val_every": 2}
QUICK_PARAMETERS: dict[str, dict[str, Any]] = {
    "00_quickstart": {"steps": 10},  # = the ladder's first rung (seed 42): trained once, reused
    "01_train": {"steps": 20},  # = the ladder's last rung
    "02_artifact_and_eval": {"steps": 20},
    "10_warmdown": {**_LADDER_QUICK, "seeds": [42, 43], "constant_steps": 20},
    "11_compressibility": {**_LADDER_QUICK, "constant_steps": 20},
    "12_sgd_vs_adamw": {**_LADDER_QUICK, **_TTT_QUICK, "seeds": [42, 43],
                        "sweep_lrs": {"sgd": [0.01], "adamw": [0.001]}},
    "13_freezing": {**_LADDER_QUICK, **_TTT_QUICK, "seeds": [42, 43], "freeze_blocks": [0, 1]},
    "14_ttt_share": {**_LADDER_QUICK, **_TTT_QUICK, "baseline_steps": 3},
    "15_ttt_families": {**_LADDER_QUICK, "seeds": [42, 43], "ttt_val_tokens": 4096, "phase_docs": [1, 2],
                        "sweep_lrs": {}, "family_sweeps": {"lora_doc": {"ttt_lora_lr": [0.01]}}},
    "16_quantizers": {**_LADDER_QUICK},
}
BUDGETS = ("demo", "study", "quick")


def budget_parameters(name: str, budget: str) -> dict[str, Any]:
    """The parameters a budget injects into notebook ``name`` (the study: none, the notebook's own)."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if budget == "study":
        return {}
    common, per = (DEMO_COMMON, DEMO_PARAMETERS) if budget == "demo" else (QUICK_COMMON, QUICK_PARAMETERS)
    return {**common, **per.get(name, {})}


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


def reproduce(notebooks: Sequence[str] | None = None, *, quick: bool = False, budget: str | None = None,
              out: str = "runs/notebooks", figures: str = "figures", runs_root: str = "runs",
              data_dir: str = "data/sotu_sp1024", parameters: dict[str, Any] | None = None,
              log_output: bool = False, workers: int | None = None) -> dict[str, Any]:
    """Execute the notebooks (all by default, in order) and write ``<figures>/findings.md``.

    ``budget``: ``demo`` (the default; :data:`DEMO_PARAMETERS`), ``study`` (the notebooks' own
    parameters: the calibrated study) or ``quick`` (``quick=True``; :data:`QUICK_PARAMETERS`).
    First every training run the notebooks plan is trained, ``workers`` at a time
    (:func:`gepalib.run.study.pretrain`; default one per usable core; with ``nproc`` > 1 one
    at a time), then the notebooks run and reuse them. Returns {"notebooks": [{notebook,
    status, seconds, output, error}], "findings_md": path, "seconds": total, "pretrain_seconds"}."""
    budget = "quick" if quick else (budget or "demo")
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
    all_params = {}
    for name in names:
        params = {"data_dir": data_dir, "runs_root": runs_root, "figures_dir": str(fig_dir)}
        params.update(budget_parameters(name, budget))
        params.update(parameters or {})
        all_params[name] = params
    t0 = time.perf_counter()
    plans = [plan_notebook(n, p) for n, p in all_params.items()]
    cfgs = [c for pl in plans for _, c in pl.all_runs()]
    serial = any(pl.nproc > 1 for pl in plans)
    print(f"pretrain: {len(cfgs)} planned runs", flush=True)
    try:
        pretrain(cfgs, workers=1 if serial else workers, runs_root=runs_root,
                 log=lambda m: print(m, flush=True))
    except Exception as e:  # noqa: BLE001 -- the notebooks that need the run retry it and report
        lines = str(e).splitlines()
        why = [ln.strip() for ln in lines[1:] if "error:" in ln][:1]  # the trainer's one-line reason
        print(f"pretrain: a run failed; its notebooks will try again and report it: "
              f"{'; '.join(lines[:1] + why)}", flush=True)
    pre_s = time.perf_counter() - t0
    print(f"pretrain_seconds:{pre_s:.1f}", flush=True)
    rows = []
    for name in names:
        params = all_params[name]
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
    what = {"study": "the calibrated study (the notebooks' own parameters)",
            "demo": "demo (reduced parameters, two seeds: a smoke run, not the study; run `gepa reproduce --study`)",
            "quick": "quick (smoke-test parameters)"}[budget]
    note = (f"Budget: {what}; executed notebooks in `{out}`; figures in `{figures}`; training {pre_s:.0f} s "
            f"(parallel), total {total:.0f} s.")
    md = write_findings_md(fig_dir, notebook_rows=rows, note=note)
    print(f"findings_md:{md} seconds:{total:.1f}", flush=True)
    return {"notebooks": rows, "findings_md": str(md), "seconds": total, "pretrain_seconds": pre_s, "budget": budget}
