"""Know the bill before paying it: every run and evaluation the notebooks would launch, what is
already on disk, and the GPU-hours and wall time of the rest (``gepa reproduce --plan``).

    plans = run.record_plans(names)       # each notebook's plan cell, executed (gepalib.run.notebooks)
    bill = run.price_plans(plans)         # nothing is trained
    print(run.format_bill(bill))

**What is reused.** A training run whose content-addressed directory holds the finished run
costs nothing; an interrupted one costs the steps after its newest checkpoint. An evaluation
whose stage rows are in the run's ledger with the same settings costs nothing (the lookups of
:func:`gepalib.run.ensure_stages`). Runs and evaluations that several notebooks share are
priced once, by the first notebook that makes them.

**Rates** (:func:`load_rates`, :mod:`gepalib.run.rates`). On a machine with a CUDA device,
a GPU's: ``bench/results/gpu.json`` when it holds a GPU measurement, else the submission's
4xA100-40GB run, at gepa11's size and scaled to other sizes by training FLOPs per token; the
bill counts GPU-hours. On a CPU machine, the rates this CPU measured in
``bench/results/speed_ledger.json`` (``make bench``): one training process of one torch thread
at a few model sizes, log-log interpolated in FLOPs per token, and the evaluation modes; the
bill counts CPU process-hours, one thread each, and the trainer's periodic validation runs at
the (eager) evaluation rate. A plan that trains a preset the ledger did not measure (gepa11 or
baseline9, as the ``*.gpu.yaml`` parameters do) is priced at the GPU rates it is meant for;
``gepa reproduce --plan --rates cpu|gpu`` forces either. Wall time is process time / nproc (no
communication cost, no compile time: a first-order estimate to decide on, not a promise).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gepalib import checkpoint as ckpt
from gepalib.config import RunConfig, override
from gepalib.paths import resolve_path
from gepalib.data import list_shards, read_shard_header, val_keep
from gepalib.findings.reference import HEADLINE
from gepalib.run.launch import torchrun_command
from gepalib.run.plans import Plan, PlannedEval, publish
from gepalib.run.rates import (GEPA11_FLOPS, RATE_KINDS, Rates, flops_per_token, gpu_rates,  # noqa: F401 (re-exported)
                               load_rates, submission_rates)
from gepalib.run.stages import find_stage, stage_kinds, stage_settings
from gepalib.rundir import RunDir, default_run_dir, is_finished

FINEWEB_VAL_TOKENS = HEADLINE["val_targets"] + 1  # the submission's val split (62,021,633 tokens)


def val_targets(cfg: RunConfig, val_tokens: int | None = None) -> tuple[int | None, str]:
    """Validation targets a run scores (its val_tokens cap, or ``val_tokens``) and a note."""
    T = cfg.eval.eval_seq_len or cfg.train.seq_len
    cap = cfg.data.val_tokens if val_tokens is None else val_tokens
    d = resolve_path(cfg.data.data_dir)
    shards = list_shards(d, "val") if d.is_dir() else []
    note = ""
    if shards:
        total = sum(read_shard_header(s) for s in shards)
    elif "fineweb10B" in d.name:
        total, note = FINEWEB_VAL_TOKENS, "FineWeb's val split (not downloaded yet)"
    else:
        return None, f"{d}: no validation shards, evaluation not priced"
    return val_keep(total, T, cap or 0) - 1, note


# ---------------------------------------------------------------------------
# Pricing


@dataclass
class Item:
    notebook: str
    what: str  # train | eval
    label: str
    status: str  # new | resume from step k | reused | shared with <notebook>
    gpu_s: float
    nproc: int
    run_dir: str
    command: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def wall_s(self) -> float:
        return self.gpu_s / max(1, self.nproc)


def train_command(rd: Path, nproc: int) -> list[str]:
    """The command :func:`gepalib.run.launch` runs for a run directory."""
    args = ["gepalib", "train", "--run-dir", str(rd), "--config", str(rd / "logs" / "launch_config.json")]
    return torchrun_command(args, nproc, rd / "logs" / "torchrun")


def _eval_points(tc, start: int) -> list[int]:
    pts = [0] if start == 0 else []
    if tc.val_every > 0:
        pts += list(range((start // tc.val_every + 1) * tc.val_every, tc.steps, tc.val_every))
    return pts + [tc.steps]


def price_training(cfg: RunConfig, start: int, rates: Rates) -> tuple[float, str]:
    """Seconds (of one GPU or CPU process) of training ``cfg`` from step ``start``: the steps (+
    the compile warm-up) and the periodic validation (live, EMA when ``val_ema`` and always at
    the end)."""
    tc, u = cfg.train, rates.unit
    steps = tc.steps - start + (tc.compile_warmup if tc.compile and start < tc.steps else 0)
    train_s = steps * tc.batch_tokens / rates.train_tok_s_at(cfg)
    n, note = val_targets(cfg)
    pts = _eval_points(tc, start)
    passes = sum(1 if s == 0 else (2 if s == tc.steps or cfg.eval.val_ema else 1) for s in pts)
    val_s = passes * (n or 0) / rates.val_tok_s_at(cfg)
    return train_s + val_s, f"{steps} steps {train_s / 3600:.2f} {u} + {passes} validation passes " \
                            f"{val_s / 3600:.2f} {u}" + (f" ({note})" if note else "")


def price_eval(cfg: RunConfig, ev: PlannedEval, rates: Rates, kinds: list[str]) -> tuple[float, str]:
    """Seconds (of one GPU or CPU process) of the stage ``kinds`` (roundtrip | sliding | ttt) of
    ``ev`` on the run ``cfg``."""
    fwd, ttt_rate = rates.eval_tok_s_at(cfg), rates.ttt_train_tok_s_at(cfg)
    e = override(cfg, **ev.overrides) if ev.overrides and ev.kind != "quantizers" else cfg
    n, note = val_targets(e)
    if n is None:
        return 0.0, note
    T, stride = e.eval.eval_seq_len or e.train.seq_len, e.eval.eval_stride
    secs, parts = 0.0, []
    for k in kinds:
        if k == "roundtrip":
            s = n / fwd * max(1, len(ev.modes))
        elif k == "sliding" or (k == "ttt" and e.ttt.ttt_scoring == "sliding"):
            s = n * T / stride / fwd  # every window's forward
        else:  # streaming scoring: about one forward per token
            s = n / fwd
        if k == "ttt":
            chunks = math.ceil(n / e.ttt.ttt_chunk_tokens)
            s += (chunks - 1) * e.ttt.ttt_chunk_tokens * e.ttt.ttt_epochs / ttt_rate
        secs += s
        parts.append(k)
    fam = "" if e.ttt.ttt_family == "full" or "ttt" not in kinds else f" ({e.ttt.ttt_family}: priced as full TTT)"
    return secs, "+".join(parts) + f" on {n:,} targets" + fam + (f" ({note})" if note else "")


def _missing_kinds(rd: RunDir, ev: PlannedEval) -> list[str]:
    """Which of the evaluation's stage kinds are not yet in the run's ledger (``ensure_stages``
    records the round trip again with its settings, so it comes with every missing kind)."""
    if ev.kind in ("quantizers", "ttt_cost"):  # measured afresh every time
        return ["roundtrip"] if ev.kind == "quantizers" else ["ttt"]
    want = ["roundtrip"] + (["sliding"] if ev.sliding else []) + (["streaming"] if ev.streaming else []) + \
        (["ttt"] if ev.ttt else [])
    if not rd.exists() or not is_finished(rd):
        return want
    cfg = rd.load_config()
    cfg = override(cfg, **ev.overrides) if ev.overrides else cfg
    kinds = stage_kinds(cfg)
    missing = [k for k in want if find_stage(rd, kinds[k][0], stage_settings(cfg, kinds[k][1])) is None]
    return want if missing else []


def _has_artifact(rd: RunDir) -> bool:
    return rd.artifact.exists() and rd.ema_weights.exists() and \
        rd.artifact.stat().st_mtime >= rd.ema_weights.stat().st_mtime


def plan_rates(plans: list[Plan], kind: str = "auto") -> Rates:
    """:func:`load_rates` of ``kind`` for ``plans``. Under auto the CPU rates price only plans
    whose runs are all of preset families the ledger measured (``tiny_baseline`` is of
    ``tiny``'s); one of gepa11 or baseline9 (what the ``*.gpu.yaml`` parameters train) makes
    the plan a GPU plan, priced at the GPU rates."""
    rates = load_rates(kind=kind)
    if kind != "auto" or not rates.sizes:
        return rates
    measured = {name for name, _, _ in rates.sizes}
    other = sorted({cfg.preset.split("_")[0] for plan in plans for _, cfg in plan.all_runs()} - measured)
    if not other:
        return rates
    r = load_rates(kind="gpu")
    return replace(r, source=f"{r.source} (the plan trains {', '.join(other)}, a size the CPU ledger did not "
                             f"measure; --rates cpu prices it on this CPU)")


def price_plans(plans: list[Plan], rates: Rates | None = None, kind: str = "auto") -> dict[str, Any]:
    """Every run and evaluation of ``plans`` with its status and price (nothing is run), at
    ``rates`` (default :func:`plan_rates` of ``kind``)."""
    rates = rates or plan_rates(plans, kind)
    items: list[Item] = []
    seen_runs: dict[str, str] = {}
    seen_evals: dict[tuple, str] = {}
    for plan in plans:
        runs = plan.all_runs()
        for label, cfg in runs:
            rd = default_run_dir(cfg, plan.runs_root)
            key = str(rd)
            t = cfg.train
            desc = f"{cfg.preset} steps {t.steps} (warmdown {t.warmdown}) seed {t.seed}"
            if key in seen_runs:
                items.append(Item(plan.notebook, "train", desc, f"shared with {seen_runs[key]}", 0.0, plan.nproc, key))
                continue
            seen_runs[key] = plan.notebook
            r = RunDir(rd)
            if r.exists() and is_finished(r):
                status, start = "reused (finished)", t.steps
            else:
                last = ckpt.list_checkpoints(r.checkpoints) if r.exists() else []
                start = last[-1][0] if last else 0
                status = f"resume from step {start}" if start else "new"
            gpu_s, detail = (0.0, "") if start >= t.steps else price_training(cfg, start, rates)
            items.append(Item(plan.notebook, "train", desc, status, gpu_s, plan.nproc, key,
                              train_command(rd, plan.nproc) if start < t.steps else [], detail))
        for ev in plan.evals:
            label, cfg = runs[ev.run]
            rd = RunDir(default_run_dir(cfg, plan.runs_root))
            key = (str(rd.path), ev.kind, ev.sliding, ev.ttt, json.dumps(ev.overrides, sort_keys=True, default=str),
                   ev.modes, ev.compressors)
            what = {"stages": " + ".join(["sliding"] * ev.sliding + ["TTT"] * ev.ttt) or "round trip",
                    "ttt_cost": "TTT", "quantizers": "quantizers"}.get(ev.kind, ev.kind)
            name = f"{ev.label + ': ' if ev.label else ''}{what} on {cfg.preset} steps {cfg.train.steps} " \
                   f"seed {cfg.train.seed}"
            if key in seen_evals and ev.kind != "ttt_cost":
                items.append(Item(plan.notebook, "eval", name, f"shared with {seen_evals[key]}", 0.0, plan.nproc,
                                  str(rd.path)))
                continue
            seen_evals[key] = plan.notebook
            akey = (str(rd.path), "artifact")
            if ev.kind in ("artifact", "stages") and akey not in seen_evals:  # ensure_artifact comes first
                seen_evals[akey] = plan.notebook
                done = _has_artifact(rd)
                a_s, a_detail = (0.0, "") if done else price_eval(cfg, PlannedEval(ev.run, "artifact"), rates,
                                                                   ["roundtrip"])
                items.append(Item(plan.notebook, "eval", f"int6 artifact of {cfg.preset} steps {cfg.train.steps} "
                                  f"seed {cfg.train.seed}", "reused" if done else "new", a_s, 1, str(rd.path), [],
                                  "quantize + " + a_detail if a_detail else ""))
            if ev.kind == "artifact":
                continue
            missing = _missing_kinds(rd, ev)
            gpu_s, detail = price_eval(cfg, ev, rates, missing) if missing else (0.0, "")
            if ev.kind == "quantizers":
                detail = f"{len(ev.modes)} quant modes x {len(ev.compressors)} compressors; " + detail
            items.append(Item(plan.notebook, "eval", name, "reused (in the ledger)" if not missing else "new",
                              gpu_s, plan.nproc if ev.kind != "ttt_cost" else 1, str(rd.path), [], detail))
    total = sum(i.gpu_s for i in items)
    return {"rates": rates, "items": items, "gpu_hours": total / 3600, "wall_hours": sum(i.wall_s for i in items) / 3600,
            "train_runs": sum(1 for i in items if i.what == "train" and i.gpu_s > 0),
            "reused_runs": sum(1 for i in items if i.what == "train" and i.gpu_s == 0),
            "evals": sum(1 for i in items if i.what == "eval" and i.gpu_s > 0)}


def _hours(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min"


def format_bill(bill: dict[str, Any], *, commands: bool = True) -> str:
    """The bill as text: one line per run/evaluation (and its command), notebook subtotals, the total."""
    out, rates = [], bill["rates"]
    by_nb: dict[str, list[Item]] = {}
    for i in bill["items"]:
        by_nb.setdefault(i.notebook, []).append(i)
    u = rates.unit
    for nb, items in by_nb.items():
        out.append(f"notebook {nb}:" if nb else "this notebook:")
        for i in items:
            out.append(f"  {i.what:<5} {i.label}  nproc {i.nproc}  [{i.status}]  "
                       f"{i.gpu_s / 3600:.2f} {u}, wall {_hours(i.wall_s)}" + (f"  ({i.detail})" if i.detail else ""))
            if i.what == "train":
                out.append(f"        run_dir {i.run_dir}")
            if commands and i.command:
                out.append("        $ " + " ".join(i.command))
        sub = sum(i.gpu_s for i in items)
        out.append(f"  subtotal {nb}: {sub / 3600:.2f} {u}, wall {_hours(sum(i.wall_s for i in items))}")
    out.append(f"total: {bill['train_runs']} runs to train ({bill['reused_runs']} reused or shared), "
               f"{bill['evals']} evaluations; {bill['gpu_hours']:.2f} {u} ({rates.gpu}), "
               f"wall {_hours(bill['wall_hours'] * 3600)}")
    how = " (other sizes: log-log through the measured sizes' training rates)" if rates.sizes else ""
    out.append(f"rates: {rates.source}; per {rates.per}: train {rates.train_tok_s:,.0f} tok/s, validation "
               f"{rates.val_tok_s:,.0f} tok/s, evaluation {rates.eval_tok_s:,.0f} forward tok/s, TTT train "
               f"{rates.ttt_train_tok_s:,.0f} tok/s at {rates.ref}'s size{how}; wall = {rates.per.split()[0]} time "
               f"/ nproc, no communication or compile time")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# A notebook's dry run, and the bill of gepa reproduce


class DryRun(Exception):
    """Raised by :func:`stop_if_dry_run` with ``dry_run``: the notebook stops after its bill."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this line instead of a traceback
        return [f"DryRun: {self}"]


def stop_if_dry_run(plan: Plan, dry_run: bool) -> None:
    """The plan cell's last call. While ``gepa reproduce`` records plans, publish ``plan``
    (:func:`gepalib.run.plans.publish`) and return. Else with ``dry_run``: print the
    notebook's bill and stop -- in Jupyter or papermill by raising :class:`DryRun` (the
    cells below do not run; papermill reports the stop as the cell's error), as a plain
    script by exiting 0."""
    if publish(plan) or not dry_run:
        return
    print(format_bill(price_plans([plan])), flush=True)
    if "IPython" not in sys.modules or sys.modules["IPython"].get_ipython() is None:
        sys.exit(0)  # a plain script
    raise DryRun("nothing was launched; set dry_run = False to run the notebook")


def plan_reproduce(notebooks: list[str] | None = None, *, rates: Rates | None = None, rates_kind: str = "auto",
                   **kw: Any) -> dict[str, Any]:
    """The bill of ``gepa reproduce`` with the same arguments (``kw``: those of
    :func:`gepalib.run.notebooks.record_plans`, which records the plans); nothing is trained.
    Priced at ``rates`` (default :func:`plan_rates` of ``rates_kind``)."""
    from gepalib.run.notebooks import record_plans

    return price_plans(record_plans(notebooks, **kw), rates, rates_kind)
