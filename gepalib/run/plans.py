"""A notebook's plan: the runs it trains and the evaluations it asks for, recorded by the
notebook itself, from its parameters, in its cell tagged ``plan``:

    plan = run.Plan(nproc=nproc, runs_root=runs_root, findings=["F1"])
    cfgs = plan.train(run.ladder_configs(base, [450, 1000], seeds=[42, 43]))
    plan.evaluate(cfgs[0], "stages", sliding=True, ttt=True, val_tokens=131072)
    run.stop_if_dry_run(plan, dry_run)          # dry_run: print the bill, run nothing more

Later cells launch ``cfgs``, so the plan and the runs cannot drift; :mod:`gepalib.run.bill`
prices a plan. While ``gepa reproduce`` records plans (:data:`RECORD_ENV` set), the plan cell
publishes its plan as JSON (configs by ``RunConfig.to_dict``) in its output (:func:`publish`,
:func:`read_published`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from gepalib.config import RunConfig

RECORD_ENV = "GEPA_RECORD_PLAN"  # set while gepa reproduce records plans: the plan cell publishes its plan
PLAN_MIME = "application/vnd.gepalib.plan+json"


@dataclass(frozen=True)
class PlannedEval:
    """One evaluation call on training run ``run`` (an index into the plan's runs, see
    :meth:`Plan.all_runs`): ``kind`` artifact (int6 export + round trip) | stages
    (``ensure_stages``) | quantizers (each quant mode x compressor, with a round trip per mode)
    | ttt_cost (one more TTT evaluation measuring wall time and memory)."""

    run: int
    kind: str
    sliding: bool = False
    ttt: bool = False
    streaming: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # eval/ttt fields and val_tokens
    label: str = ""
    modes: tuple[str, ...] = ()  # quantizers: quant modes
    compressors: tuple[str, ...] = ()  # quantizers: compressors


KINDS = ("artifact", "stages", "quantizers", "ttt_cost")


@dataclass
class Plan:
    """What a notebook trains (``configs`` in launch order, then the named ``extra`` runs) and
    evaluates (``evals``), with the processes per run, the runs root and the findings records
    it writes (e.g. ``["F1"]``). ``notebook`` is filled in by whoever reads the plan back."""

    nproc: int = 1
    runs_root: str = "runs"
    findings: Sequence[str] = ()
    configs: list[RunConfig] = field(default_factory=list)
    evals: list[PlannedEval] = field(default_factory=list)
    extra: dict[str, RunConfig] = field(default_factory=dict)
    notebook: str = ""

    def train(self, cfgs: RunConfig | Sequence[RunConfig], name: str | None = None):
        """Plan training ``cfgs`` (one config or a list; returned as given). With ``name`` the
        single config is a named run outside ``configs`` (a calibration or baseline run)."""
        if name is not None:
            if not isinstance(cfgs, RunConfig):
                raise TypeError("Plan.train: a named run is one RunConfig")
            self.extra[name] = cfgs
        else:
            self.configs.extend([cfgs] if isinstance(cfgs, RunConfig) else list(cfgs))
        return cfgs

    def all_runs(self) -> list[tuple[str, RunConfig]]:
        """(label, config) of every training run: ``configs`` then the named extra runs."""
        return [(f"run {i}", c) for i, c in enumerate(self.configs)] + list(self.extra.items())

    def evaluate(self, run: int | RunConfig, kind: str = "stages", *, sliding: bool = False, ttt: bool = False,
                 streaming: bool = False, label: str = "", modes: Sequence[str] = (),
                 compressors: Sequence[str] = (), **overrides: Any) -> PlannedEval:
        """Plan one evaluation of ``run`` (an index into :meth:`all_runs` or a planned config).
        ``overrides`` are the eval/ttt fields and ``val_tokens`` of the ``ensure_stages`` call;
        a value of None means the run's own and is left out, as ``ensure_stages`` does."""
        if kind not in KINDS:
            raise ValueError(f"unknown evaluation kind {kind!r}; choose one of {', '.join(KINDS)}")
        runs = [c for _, c in self.all_runs()]
        if isinstance(run, RunConfig):
            run = next((i for i, c in enumerate(runs) if c is run), -1)
        if not 0 <= run < len(runs):
            raise IndexError(f"Plan.evaluate: no such planned run (plan it with Plan.train first): {run}")
        ev = PlannedEval(run, kind, sliding=sliding, ttt=ttt, streaming=streaming, label=label,
                         overrides={k: v for k, v in overrides.items() if v is not None},
                         modes=tuple(modes), compressors=tuple(compressors))
        self.evals.append(ev)
        return ev

    def to_dict(self) -> dict[str, Any]:
        return {"nproc": int(self.nproc), "runs_root": str(self.runs_root), "findings": list(self.findings),
                "configs": [c.to_dict() for c in self.configs], "evals": [dataclasses.asdict(e) for e in self.evals],
                "extra": {k: c.to_dict() for k, c in self.extra.items()}, "notebook": self.notebook}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], notebook: str | None = None) -> Plan:
        """The plan :meth:`to_dict` gave (lists back to tuples, as the configs hold them)."""
        def ev(e: Mapping[str, Any]) -> PlannedEval:
            ov = {k: tuple(v) if isinstance(v, list) else v for k, v in e.get("overrides", {}).items()}
            return PlannedEval(**{**e, "overrides": ov, "modes": tuple(e.get("modes", ())),
                                  "compressors": tuple(e.get("compressors", ()))})

        return cls(nproc=int(d["nproc"]), runs_root=str(d["runs_root"]), findings=tuple(d.get("findings", ())),
                   configs=[RunConfig.from_dict(c) for c in d["configs"]], evals=[ev(e) for e in d["evals"]],
                   extra={k: RunConfig.from_dict(c) for k, c in d.get("extra", {}).items()},
                   notebook=d.get("notebook", "") if notebook is None else notebook)


def publish(plan: Plan) -> bool:
    """While a plan is being recorded (:data:`RECORD_ENV` set), display ``plan`` as the cell's
    :data:`PLAN_MIME` output; True if it did."""
    if not os.environ.get(RECORD_ENV):
        return False
    try:
        from IPython.display import display  # the kernel's (ipykernel, the notebooks extra)
    except ImportError:
        return False
    display({PLAN_MIME: plan.to_dict()}, raw=True)
    return True


def read_published(nb: Any, notebook: str = "") -> Plan | None:
    """The plan an executed notebook (an nbformat node) published, or None."""
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = out.get("data", {})
            if PLAN_MIME in data:
                return Plan.from_dict(data[PLAN_MIME], notebook)
    return None
