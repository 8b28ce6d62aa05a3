"""Runs as tables: one row per run, metrics per step, the stage ledger (pandas inside).

    df = run.load_runs("runs/tiny-*")          # one row per run directory
    m = run.load_metrics(df.run_dir[0])        # metrics.jsonl, one row per logged step
    run.stage_table(df.run_dir[0])             # the stage ledger
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gepalib.config import FIELD_INDEX
from gepalib.paths import resolve_path
from gepalib.findings import trajectory_from_metrics
from gepalib.rundir import RunDir, as_rundir, identity_hash
from gepalib.run.stages import ledger_order


def _expand(paths_or_glob: Any) -> list[Path]:
    items = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike, RunDir)) else list(paths_or_glob)
    out: list[Path] = []
    for it in items:
        if isinstance(it, RunDir):
            out.append(it.path)
            continue
        s = str(resolve_path(it))
        if any(ch in s for ch in "*?["):
            out += [Path(p) for p in sorted(glob.glob(s)) if (Path(p) / "config.json").exists()]
        else:
            p = Path(s)
            if (p / "config.json").exists():
                out.append(p)
            elif p.is_dir():  # a runs root: every run directory inside it
                out += sorted(q.parent for q in p.glob("*/config.json"))
            else:
                raise FileNotFoundError(f"{p}: no such run directory")
    seen, uniq = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


def run_record(run: RunDir | str | os.PathLike) -> dict[str, Any]:
    """One run as a flat dict: ``run_dir``, ``name``, ``preset``, ``run_key`` (its identity
    hash), every config field (flat names), ``train_*`` summary numbers, ``artifact_bytes``,
    and per stage ``<stage>_bpb`` / ``<stage>_loss`` / ``<stage>_seconds``."""
    rd = as_rundir(run)
    cfg = rd.load_config()
    d = cfg.to_dict()
    rec: dict[str, Any] = {"run_dir": str(rd.path), "name": rd.path.name, "preset": cfg.preset,
                           "run_key": identity_hash(cfg)}
    for k, (sec, _) in FIELD_INDEX.items():
        v = d[sec][k]
        rec[k] = tuple(v) if isinstance(v, list) else v
    s = rd.read_summary()
    for k, v in (s.get("train") or {}).items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            rec[f"train_{k}"] = v
    rec["artifact_bytes"] = rd.artifact.stat().st_size if rd.artifact.exists() else None
    for name, row in (s.get("stages") or {}).items():
        rec[f"{name}_bpb"] = row.get("val_bpb")
        rec[f"{name}_loss"] = row.get("val_loss")
        rec[f"{name}_seconds"] = row.get("seconds")
    return rec


def load_runs(paths_or_glob: Any = "runs/*"):
    """A DataFrame with one :func:`run_record` row per run directory.

    Accepts a glob (``"runs/tiny-*"``), a run directory, a runs root (all runs inside it),
    a RunDir, or a list of any of these."""
    import pandas as pd

    return pd.DataFrame([run_record(p) for p in _expand(paths_or_glob)])


def load_metrics(run: RunDir | str | os.PathLike):
    """metrics.jsonl of one run as a DataFrame (one row per logged step, a ``run`` column)."""
    import pandas as pd

    rd = as_rundir(run)
    df = pd.DataFrame(rd.read_metrics())
    df.insert(0, "run", rd.path.name)
    return df


def mean_trajectory(run_dirs: Sequence[RunDir | str | os.PathLike], column: str = "val_bpb"):
    """(steps, mean value, per-run values [runs x steps]) over runs evaluated at the same steps."""
    curves = [trajectory_from_metrics(as_rundir(r).read_metrics(), column) for r in run_dirs]
    if not curves:
        raise ValueError("mean_trajectory: no runs")
    steps = curves[0][0]
    for (s, _), r in zip(curves, run_dirs):
        if s.shape != steps.shape or (s != steps).any():
            raise ValueError(f"mean_trajectory: {r} was evaluated at different steps than {run_dirs[0]}")
    vals = np.stack([v for _, v in curves])
    return steps, vals.mean(axis=0), vals


def stage_table(run: RunDir | str | os.PathLike):
    """The run's stage ledger as a DataFrame (one row per stage, in ledger order)."""
    import pandas as pd

    stages = as_rundir(run).stages()
    cols = ["val_bpb", "val_loss", "tokens", "bytes", "seconds"]
    return pd.DataFrame([{"stage": n, **{c: stages[n].get(c) for c in cols}} for n in ledger_order(stages)])


def artifact_bytes(run: RunDir | str | os.PathLike) -> int:
    """Size in bytes of the run's compressed int6 artifact file (the model bytes of the size rule)."""
    rd = as_rundir(run)
    if not rd.artifact.exists():
        raise FileNotFoundError(f"{rd.artifact} does not exist; run run.ensure_artifact({str(rd.path)!r}) first")
    return rd.artifact.stat().st_size


def relative_paths(runs: Sequence[RunDir | str | os.PathLike]) -> list[str]:
    """Each run directory as a path relative to the project root (absolute where it lies outside
    it): what findings records store, so a clone elsewhere reads them the same."""
    from gepalib.paths import project_root

    root = project_root().resolve()
    out = []
    for r in runs:
        p = (r.path if isinstance(r, RunDir) else resolve_path(r)).resolve()
        try:
            out.append(p.relative_to(root).as_posix())
        except ValueError:
            out.append(str(p))
    return out
