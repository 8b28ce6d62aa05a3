"""``gepa reproduce``: the notebooks of a folder, their plans, their headless execution.

The notebooks are the ``NN_name.ipynb`` files of ``notebooks/`` (or ``--notebooks-dir``), run
in name order. Each declares its parameters (cell ``parameters``: the study's values; the
demo's and the smoke run's are ``NN_name.demo.yaml`` / ``NN_name.quick.yaml`` beside it) and
its runs and evaluations (cell ``plan``: :class:`gepalib.run.Plan`). :func:`reproduce` learns
every plan by executing each notebook through that cell (:func:`record_plans`), trains the union
of the planned runs several at once (:func:`gepalib.run.study.pretrain`), executes the notebooks
with papermill into ``<out>/<name>.ipynb`` (the sources stay output-free) and tabulates the
records they saved in ``<figures>/findings.md``. A failing notebook is reported, the others run.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

from gepalib.findings.report import save_finding, write_findings_md  # noqa: F401 (re-exported)
from gepalib.paths import project_root, resolve_path
from gepalib.run.configs import ensure_data
from gepalib.run.launch import usable_cores
from gepalib.run.params import parameters_cell, parameters_spec, unknown_error
from gepalib.run.plans import RECORD_ENV, Plan, read_published
from gepalib.run.study import pretrain

KERNEL = "python3"
NAME = re.compile(r"^\d\d_\w+$")  # NN_name
# The study: the notebooks' own parameters; the demo (shorter, two seeds: inconclusive verdicts
# that say why) and the smoke run (the smallest runs through every code path): their yaml files.
BUDGETS = ("demo", "study", "quick")


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def _dir(folder: str | os.PathLike | None) -> Path:
    return resolve_path(folder) if folder else notebooks_dir()


def notebook_names(folder: str | os.PathLike | None = None) -> list[str]:
    """The notebooks of ``folder`` (default ``notebooks/``): every ``NN_name.ipynb``, in name order."""
    return sorted(p.stem for p in _dir(folder).glob("[0-9][0-9]_*.ipynb") if NAME.match(p.stem))


def select_notebooks(notebooks: Sequence[str] | None, folder: str | os.PathLike | None = None) -> list[str]:
    """``notebooks`` (all by default) in name order; ValueError naming any that ``folder`` lacks."""
    known = notebook_names(folder)
    unknown = [n for n in notebooks or () if n not in known]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown} in {_dir(folder)}; choose from {', '.join(known)}")
    return [n for n in known if not notebooks or n in notebooks]


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


def budget_parameters(name: str, budget: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The parameters a budget injects into notebook ``name``: its ``<name>.<budget>.yaml`` (demo,
    quick; none when the file is missing); the study: none, the notebook's own. A name the
    notebook does not declare raises ValueError naming the file."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    path = _dir(folder) / f"{name}.{budget}.yaml"
    if budget == "study" or not path.is_file():
        return {}
    given = load_parameters_file(path)
    declared = list(parameters_spec(parameters_cell(_dir(folder) / f"{name}.ipynb")))
    for k in given:
        if k not in declared:
            raise ValueError(f"{path}: {unknown_error(k, declared)}")
    return given


def reproduce_parameters(name: str, budget: str, *, data_dir: str, runs_root: str, figures: str,
                         parameters: Mapping[str, Any] | None = None,
                         folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """What ``gepa reproduce`` injects into ``name``: the paths, the budget's values, the user's
    (their ``data_dir`` wins)."""
    data_dir = str((parameters or {}).get("data_dir", data_dir))
    return {"data_dir": data_dir, "runs_root": runs_root, "figures_dir": figures,
            **budget_parameters(name, budget, folder), **(parameters or {})}


# ---------------------------------------------------------------------------
# Executing notebooks


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


def _kernel_env() -> str:
    """The project root, after putting it on PYTHONPATH and setting ``GEPA_HOME`` and
    ``OMP_WAIT_POLICY=PASSIVE`` (unless set) in the environment the kernel inherits."""
    root = str(project_root())
    pp = os.environ.get("PYTHONPATH", "")
    if root not in pp.split(os.pathsep):
        os.environ["PYTHONPATH"] = root + (os.pathsep + pp if pp else "")
    os.environ.setdefault("GEPA_HOME", root)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as gepalib.run.launch does for its subprocesses
    return root


def _source(name: str, folder: str | os.PathLike | None) -> Path:
    src = _dir(folder) / f"{name}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such notebook; choose from {', '.join(notebook_names(folder))}")
    return src


def execute_notebook(name: str, out_dir: str | os.PathLike, parameters: dict[str, Any], *,
                     log_output: bool = False, kernel: str = KERNEL, echo: bool = True,
                     notebooks_dir: str | os.PathLike | None = None) -> Path:
    """Execute ``<notebooks_dir>/<name>.ipynb`` with papermill into ``<out_dir>/<name>.ipynb``, with
    cwd = the project root (:func:`_kernel_env`). While it runs, the runs' progress lines are
    echoed as they come (:class:`ProgressEcho`; ``log_output``: every line the cells print,
    stderr too; ``echo=False``: nothing). A failing cell raises papermill's
    PapermillExecutionError (the executed copy shows where)."""
    import papermill as pm  # the notebooks extra

    src = _source(name, notebooks_dir)
    out = resolve_path(out_dir) / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    root = _kernel_env()
    sinks = {}
    if echo:
        sinks["stdout_file"] = ProgressEcho(name, all_lines=log_output)
        if log_output:
            sinks["stderr_file"] = ProgressEcho(name, all_lines=True, out=sys.stderr)
    pm.execute_notebook(str(src), str(out), parameters=parameters, kernel_name=kernel, cwd=root,
                        progress_bar=False, **sinks)
    return out


def _record_one(name: str, parameters: dict[str, Any], folder: str | os.PathLike | None, kernel: str) -> Plan:
    """Execute a copy of the notebook that ends with its cell tagged ``plan`` and read back the
    plan that cell published. ValueError naming the notebook when it fails or publishes none."""
    import nbformat
    import papermill as pm

    nb = nbformat.read(_source(name, folder), as_version=4)
    cut = next((i for i, c in enumerate(nb.cells) if "plan" in c.get("metadata", {}).get("tags", [])), None)
    if cut is None:
        raise ValueError(f"{name}: no cell tagged plan")
    nb.cells = nb.cells[:cut + 1]
    with tempfile.TemporaryDirectory(prefix="gepa-plan-") as tmp:
        path = str(Path(tmp) / f"{name}.ipynb")
        nbformat.write(nb, path)
        try:
            done = pm.execute_notebook(path, path, parameters=parameters, kernel_name=kernel, progress_bar=False)
        except pm.PapermillExecutionError as e:
            raise ValueError(f"{name}: its plan cell failed: {e.ename}: {e.evalue}") from None
    plan = read_published(done, name)
    if plan is None:
        raise ValueError(f"{name}: its plan cell published no plan (it ends with run.stop_if_dry_run(plan, dry_run))")
    return plan


def _record_all(params: Mapping[str, dict[str, Any]], folder: str | os.PathLike | None = None,
                workers: int | None = None, kernel: str = KERNEL) -> dict[str, Plan | ValueError]:
    """{name: its plan, or the ValueError of its plan cell}, ``workers`` notebooks at a time
    (default one per usable core); every kernel starts in the project root with
    :data:`~gepalib.run.plans.RECORD_ENV` set."""
    root = _kernel_env()
    os.environ[RECORD_ENV] = "1"
    try:
        with contextlib.chdir(root), cf.ThreadPoolExecutor(max_workers=max(1, workers or usable_cores())) as ex:
            futs = {n: ex.submit(_record_one, n, p, folder, kernel) for n, p in params.items()}
            out: dict[str, Plan | ValueError] = {}
            for n, f in futs.items():
                try:
                    out[n] = f.result()
                except Exception as e:  # noqa: BLE001 -- a dead kernel too: that notebook's plan is unknown
                    out[n] = e if isinstance(e, ValueError) else ValueError(f"{n}: {type(e).__name__}: {e}")
    finally:
        os.environ.pop(RECORD_ENV, None)
    return out


def _budget(quick: bool, budget: str | None) -> str:
    return "quick" if quick else (budget or "demo")


def record_plans(notebooks: Sequence[str] | None = None, *, quick: bool = False, budget: str | None = None,
                 runs_root: str = "runs", data_dir: str = "data/sotu_sp1024", figures: str = "figures",
                 parameters: dict[str, Any] | None = None, notebooks_dir: str | os.PathLike | None = None,
                 workers: int | None = None) -> list[Plan]:
    """The plans of ``notebooks`` (all by default, in order) with the parameters :func:`reproduce`
    would inject; nothing is trained. ValueError naming each notebook whose plan cell failed."""
    names = select_notebooks(notebooks, notebooks_dir)
    params = {n: reproduce_parameters(n, _budget(quick, budget), data_dir=data_dir, runs_root=runs_root,
                                      figures=figures, parameters=parameters, folder=notebooks_dir) for n in names}
    plans = _record_all(params, notebooks_dir, workers)
    bad = [str(p) for p in plans.values() if isinstance(p, ValueError)]
    if bad:
        raise ValueError("; ".join(bad))
    return [plans[n] for n in names]


def _pretrain(plans: list[Plan], workers: int | None, runs_root: str) -> float:
    """Train every planned run (the union), several at once; the seconds it took."""
    t0 = time.perf_counter()
    cfgs = [c for pl in plans for _, c in pl.all_runs()]
    serial = any(pl.nproc > 1 for pl in plans)
    print(f"pretrain: {len(cfgs)} planned runs", flush=True)
    try:
        pretrain(cfgs, workers=1 if serial else workers, runs_root=runs_root, log=lambda m: print(m, flush=True))
    except Exception as e:  # noqa: BLE001 -- the notebooks that need the run retry it and report
        lines = str(e).splitlines()
        why = [ln.strip() for ln in lines[1:] if "error:" in ln][:1]  # the trainer's one-line reason
        print(f"pretrain: a run failed; its notebooks will try again and report it: "
              f"{'; '.join(lines[:1] + why)}", flush=True)
    pre_s = time.perf_counter() - t0
    print(f"pretrain_seconds:{pre_s:.1f}", flush=True)
    return pre_s


def _run_one(name: str, out: str, params: dict[str, Any], log_output: bool,
             folder: str | os.PathLike | None) -> dict[str, Any]:
    print(f"notebook:{name} status:running", flush=True)
    t0 = time.perf_counter()
    row = {"notebook": name, "status": "ok", "output": str(resolve_path(out) / f"{name}.ipynb"), "error": ""}
    try:
        execute_notebook(name, out, params, log_output=log_output, notebooks_dir=folder)
    except Exception as e:  # noqa: BLE001 -- report and go on with the next notebook
        row["status"] = "failed"
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    row["seconds"] = time.perf_counter() - t0
    print(f"notebook:{name} status:{row['status']} seconds:{row['seconds']:.1f}"
          + (f" error:{row['error']}" if row["error"] else ""), flush=True)
    return row


WHAT = {"study": "the calibrated study (the notebooks' own parameters)",
        "demo": "demo (reduced parameters, two seeds: a smoke run, not the study; run `gepa reproduce --study`)",
        "quick": "quick (smoke-test parameters)"}


def reproduce(notebooks: Sequence[str] | None = None, *, quick: bool = False, budget: str | None = None,
              out: str = "runs/notebooks", figures: str = "figures", runs_root: str = "runs",
              data_dir: str = "data/sotu_sp1024", parameters: dict[str, Any] | None = None,
              log_output: bool = False, workers: int | None = None,
              notebooks_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Execute the notebooks (all of ``notebooks_dir`` by default, in name order) and write
    ``<figures>/findings.md``.

    ``budget``: ``demo`` (the default; each notebook's ``.demo.yaml``), ``study`` (the
    notebooks' own parameters: the calibrated study) or ``quick`` (``quick=True``; ``.quick.yaml``).
    First each notebook's plan is recorded and every run they plan is trained, ``workers`` at
    a time (default one per usable core; with ``nproc`` > 1 one at a time), then the notebooks
    run and reuse them. A notebook whose plan cell fails trains nothing beforehand and fails
    when it runs. Returns {"notebooks": [{notebook, status, seconds, output, error}],
    "findings_md": path, "seconds": total, "pretrain_seconds", "budget"}."""
    budget = _budget(quick, budget)
    names = select_notebooks(notebooks, notebooks_dir)
    t_all = time.perf_counter()
    data_dir = str((parameters or {}).get("data_dir", data_dir))
    ensure_data(data_dir)
    fig_dir = resolve_path(figures)
    fig_dir.mkdir(parents=True, exist_ok=True)
    all_params = {n: reproduce_parameters(n, budget, data_dir=data_dir, runs_root=runs_root, figures=str(fig_dir),
                                          parameters=parameters, folder=notebooks_dir) for n in names}
    recorded = _record_all(all_params, notebooks_dir, workers)
    plans = [p for p in recorded.values() if isinstance(p, Plan)]
    for n, p in recorded.items():
        print(f"plan:{n} " + (f"runs:{len(p.all_runs())} evals:{len(p.evals)}" if isinstance(p, Plan)
                              else f"failed: {p}"), flush=True)
    sources = {f: p.notebook for p in plans for f in p.findings}
    for f in sources:  # a stale verdict must not survive a failed re-run
        (fig_dir / f"finding_{f}.json").unlink(missing_ok=True)
    pre_s = _pretrain(plans, workers, runs_root)
    rows = [_run_one(n, out, all_params[n], log_output, notebooks_dir) for n in names]
    total = time.perf_counter() - t_all
    note = (f"Budget: {WHAT[budget]}; executed notebooks in `{out}`; figures in `{figures}`; training {pre_s:.0f} s "
            f"(parallel), total {total:.0f} s.")
    md = write_findings_md(fig_dir, notebook_rows=rows, note=note, sources=sources)
    print(f"findings_md:{md} seconds:{total:.1f}", flush=True)
    return {"notebooks": rows, "findings_md": str(md), "seconds": total, "pretrain_seconds": pre_s, "budget": budget}
