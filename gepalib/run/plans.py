"""What each notebook trains and evaluates, as a function of its parameters (the registry
behind ``gepa reproduce --plan`` and every notebook's ``dry_run``).

    plan = run.plan_notebook("10_warmdown", globals())     # in a notebook, after its parameters
    run.stop_if_dry_run(plan, dry_run)                      # dry_run: print the bill, run nothing more
    rds = run.launch_many(plan.configs, nproc=nproc, runs_root=runs_root)

A planner builds the notebook's configs with the same :mod:`gepalib.run.configs` calls the
notebook makes (the notebooks launch ``plan.configs``, so the two cannot drift) and lists the
evaluations the notebook asks for (``ensure_artifact``/``ensure_stages`` calls, their
overrides). Nothing here touches a run directory; :mod:`gepalib.run.bill` checks what exists
and prices the rest.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from gepalib.config import RunConfig
from gepalib.paths import project_root
from gepalib.run.configs import base_config, baseline_config, ladder_configs, longest_rung_configs, with_length


@dataclass(frozen=True)
class PlannedEval:
    """One evaluation call on training run ``run`` (an index into the plan's configs):
    ``kind`` artifact (int6 export + round trip) | stages (``ensure_stages``) | quantizers
    (each quant mode x compressor, with a round trip per mode) | ttt_cost (one more TTT
    evaluation measuring wall time and memory)."""

    run: int
    kind: str
    sliding: bool = False
    ttt: bool = False
    streaming: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # eval/ttt fields and val_tokens
    label: str = ""
    modes: tuple[str, ...] = ()  # quantizers: quant modes
    compressors: tuple[str, ...] = ()  # quantizers: compressors


@dataclass(frozen=True)
class NotebookPlan:
    notebook: str
    nproc: int
    runs_root: str
    configs: list[RunConfig]  # training runs, in launch order
    evals: list[PlannedEval]
    extra: dict[str, RunConfig] = field(default_factory=dict)  # named runs outside ``configs`` (14: baseline)
    parameters: dict[str, Any] = field(default_factory=dict)

    def all_runs(self) -> list[tuple[str, RunConfig]]:
        """(label, config) of every training run: ``configs`` then the named extra runs."""
        return [(f"run {i}", c) for i, c in enumerate(self.configs)] + list(self.extra.items())


# ---------------------------------------------------------------------------
# Parameters: the notebook's defaults (its parameters cell) under what is injected


def parameters_cell(name: str, notebooks_dir: str | os.PathLike | None = None) -> str:
    """The source of ``notebooks/<name>.py``'s cell tagged ``parameters``."""
    path = os.path.join(str(notebooks_dir or project_root() / "notebooks"), f"{name}.py")
    lines = open(path, encoding="utf-8").read().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("# %%") and "parameters" in ln), None)
    if start is None:
        raise ValueError(f"{path}: no cell tagged parameters")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("# %%")), len(lines))
    return "\n".join(lines[start + 1:end])


def notebook_defaults(name: str, notebooks_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """{parameter: default} of the notebook's parameters cell (literal values only)."""
    out: dict[str, Any] = {}
    for node in ast.parse(parameters_cell(name, notebooks_dir)).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and node.value is not None:
            out[target.id] = ast.literal_eval(node.value)
    return out


def resolve_parameters(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook's defaults with the ``given`` values (a notebook's ``globals()`` works:
    only the parameters cell's names are read)."""
    p = notebook_defaults(name)
    p.update({k: given[k] for k in p if k in given})
    return p


# ---------------------------------------------------------------------------
# One planner per notebook


def _base(p: dict[str, Any]) -> RunConfig:
    return base_config(p["preset"], p["scale"], p["data_dir"], p["overrides"])


def _longest(p: dict[str, Any], seeds: list[int]) -> list[RunConfig]:
    return longest_rung_configs(_base(p), p["ladder_steps"], p["warmdown_frac"], seeds, p["val_every"],
                                p["ladder_warmdown"])


def _ladder(p: dict[str, Any]) -> list[RunConfig]:
    return ladder_configs(_base(p), p["ladder_steps"], p["warmdown_frac"], seeds=[p["seed"]],
                          val_every=p["val_every"], warmdowns=p["ladder_warmdown"])


def _stages(runs: int, settings: Mapping[str, dict], val_tokens: Any, scoring: str = "sliding") -> list[PlannedEval]:
    """TTT evaluations of every run with every setting (the TTT notebooks' ``ensure_stages`` calls;
    a held-out sweep may change the LR, chunk size and epochs: priced at the settings given)."""
    vt = {} if val_tokens is None else {"val_tokens": val_tokens}
    sc = {} if scoring == "sliding" else {"ttt_scoring": scoring}
    return [PlannedEval(i, "stages", sliding=scoring == "sliding", streaming=scoring == "streaming", ttt=True,
                        overrides={**vt, **kv, **sc}, label=name)
            for name, kv in settings.items() for i in range(runs)]


def _p00(p):
    cfgs = [with_length(_base(p), p["steps"], p["warmdown_frac"], p["val_every"], seed=42)]
    return cfgs, [PlannedEval(0, "stages", sliding=True)], {}


def _p01(p):
    return [with_length(_base(p), p["steps"], p["warmdown_frac"], p["val_every"], seed=p["seed"])], [], {}


def _p02(p):
    cfgs = _p01(p)[0]
    return cfgs, [PlannedEval(0, "artifact"), PlannedEval(0, "stages", sliding=True, ttt=True)], {}


def _constant(p: dict[str, Any], seed: int) -> dict[str, RunConfig]:
    """The calibration run at constant LR (``constant_steps``; none when 0)."""
    n = int(p.get("constant_steps") or 0)
    return {"constant": with_length(_base(p), n, 0.0, p["val_every"], seed=seed, warmdown=0)} if n else {}


def _p10(p):
    return _longest(p, p["seeds"]), [], _constant(p, p["seeds"][0])


def _p11(p):
    cfgs = _ladder(p)
    return cfgs, [PlannedEval(i, "artifact") for i in range(len(cfgs))], _constant(p, p["seed"])


def _p12(p):
    cfgs = _longest(p, p["seeds"])
    return cfgs, _stages(len(cfgs), {"sgd": p["sgd"], "adamw": p["adamw"]}, p["ttt_val_tokens"],
                         p.get("ttt_scoring", "sliding")), {}


def _p13(p):
    cfgs = _longest(p, p["seeds"])
    settings = {f"freeze {k}": {**p["sgd"], "ttt_freeze_blocks": k} for k in p["freeze_blocks"]}
    return cfgs, _stages(len(cfgs), settings, p["ttt_val_tokens"], p.get("ttt_scoring", "sliding")), {}


def _p14(p):
    cfgs = _ladder(p)
    scoring = p.get("ttt_scoring", "sliding")
    evals = _stages(len(cfgs), {"ttt": p["sgd"]}, p["ttt_val_tokens"], scoring)
    extra = {}
    if p["baseline_bpb"] is None:
        extra["baseline"] = baseline_config(with_length(_base(p), p["baseline_steps"], p["warmdown_frac"],
                                                        p["val_every"], seed=p["seed"]))
        vt = {} if p["ttt_val_tokens"] is None else {"val_tokens": p["ttt_val_tokens"]}
        evals.append(PlannedEval(len(cfgs), "stages", sliding=scoring == "sliding", streaming=scoring == "streaming",
                                 overrides=vt, label="baseline"))
    return cfgs, evals, extra


def _p15(p):
    cfgs = _longest(p, p["seeds"])
    settings = {name: {"ttt_scoring": p["ttt_scoring"], **kv,
                       **({"ttt_phase_docs": tuple(p["phase_docs"])} if kv["ttt_family"].startswith("phased") else {})}
                for name, kv in p["families"].items()}
    evals = _stages(len(cfgs), settings, p["ttt_val_tokens"], p["ttt_scoring"])
    vt = {} if p["ttt_val_tokens"] is None else {"val_tokens": p["ttt_val_tokens"]}
    evals += [PlannedEval(i, "ttt_cost", ttt=True, overrides={**vt, **kv}, label=f"{name} (cost probe)")
              for name, kv in settings.items() for i in range(min(p["cost_seeds"], len(cfgs)))]
    return cfgs, evals, {}


def _p16(p):
    cfgs = _ladder(p)
    modes = tuple(p["quantizers"]) if "quantizers" in p else tuple(p.get("modes", ()))
    return cfgs, [PlannedEval(i, "quantizers", modes=modes, compressors=tuple(p["compressors"]))
                  for i in range(len(cfgs))], {}


PLANNERS: dict[str, Callable[[dict[str, Any]], tuple[list[RunConfig], list[PlannedEval], dict[str, RunConfig]]]] = {
    "00_quickstart": _p00, "01_train": _p01, "02_artifact_and_eval": _p02, "10_warmdown": _p10,
    "11_compressibility": _p11, "12_sgd_vs_adamw": _p12, "13_freezing": _p13, "14_ttt_share": _p14,
    "15_ttt_families": _p15, "16_quantizers": _p16,
}


def plan_notebook(name: str, parameters: Mapping[str, Any]) -> NotebookPlan:
    """The runs and evaluations notebook ``name`` makes with ``parameters`` (its defaults for
    the missing ones)."""
    if name not in PLANNERS:
        raise ValueError(f"no plan for notebook {name!r}; planned: {', '.join(PLANNERS)}")
    p = resolve_parameters(name, parameters)
    cfgs, evals, extra = PLANNERS[name](p)
    return NotebookPlan(name, int(p["nproc"]), str(p["runs_root"]), cfgs, evals, extra, p)
