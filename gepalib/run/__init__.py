"""Runs from Python: launch under torchrun, reuse what exists, load results into pandas.

    from gepalib import run
    rd = run.launch(run.base_config("tiny", "cpu", overrides={"steps": 300}), nproc=2)  # or reuse
    run.ensure_artifact(rd)                      # int6 artifact (reused if present)
    rows = run.ensure_stages(rd, ttt=True)       # stage rows (reused if recorded)
    df = run.load_runs("runs/*")                 # one row per run

Modules: :mod:`~gepalib.run.stages` (the stage ledger), :mod:`~gepalib.run.pipeline`
(quantize and evaluate a run in-process), :mod:`~gepalib.run.launch` (torchrun),
:mod:`~gepalib.run.results` (tables), :mod:`~gepalib.run.configs` (the configs the notebooks
build: scales, ladders), :mod:`~gepalib.run.plans` (:class:`Plan`: what a notebook records it
trains and evaluates), :mod:`~gepalib.run.params` (its parameters, checked),
:mod:`~gepalib.run.notebooks` (``gepa reproduce``: the notebooks of a folder, their plans, their
execution) and :mod:`~gepalib.run.bill` (a plan's GPU-hours, or CPU process-hours at
:mod:`~gepalib.run.rates`' CPU rates, ``gepa reproduce --plan``). A run's identity
is :func:`gepalib.rundir.identity` (see docs/runs.md).

``run.run_key`` (the notebooks' name) is :func:`~gepalib.rundir.identity_hash`. Note that
``gepalib.run.launch`` is the function; the module is ``sys.modules["gepalib.run.launch"]``
(``from gepalib.run.launch import run_streamed`` works as usual).
"""
from gepalib.rundir import (BOOKKEEPING_FIELDS, IDENTITY_SECTIONS, PATH_FIELDS, RESUMABLE_FIELDS, default_run_dir,
                            identity, identity_diff, identity_hash, is_finished)
from gepalib.run.configs import (BASELINE_SWITCHES, SCALES, base_config, baseline_config, ensure_data, ladder_configs,
                                 longest_rung_configs, scale_overrides, with_length)
from gepalib.run.launch import (KILL_GRACE_S, TAIL_LINES, RunFailed, ensure_artifact, ensure_stages, launch,
                                launch_many, run_streamed, torchrun_command)
from gepalib.run.bill import DryRun, format_bill, plan_reproduce, price_plans, stop_if_dry_run
from gepalib.run.rates import load_rates
from gepalib.run.notebooks import execute_notebook, load_parameters_file, notebook_names, record_plans, reproduce
from gepalib.run.params import check_parameters
from gepalib.run.plans import Plan, PlannedEval
from gepalib.run.pipeline import describe_artifact, evaluate_run, quantize_run
from gepalib.run.results import (artifact_bytes, load_metrics, load_runs, mean_trajectory, relative_paths,
                                 run_record, stage_table)
from gepalib.run.stages import (STAGES, find_stage, format_ledger, stage_bpb, stage_config, stage_kinds,
                                stage_settings, ttt_gain)

run_key = identity_hash  # the notebooks' name for a run's identity hash

__all__ = [
    "BASELINE_SWITCHES", "BOOKKEEPING_FIELDS", "DryRun", "IDENTITY_SECTIONS", "KILL_GRACE_S", "PATH_FIELDS", "Plan",
    "PlannedEval", "RESUMABLE_FIELDS", "RunFailed", "SCALES", "STAGES", "TAIL_LINES", "artifact_bytes", "base_config",
    "baseline_config", "check_parameters", "default_run_dir", "describe_artifact", "ensure_artifact", "ensure_data",
    "ensure_stages", "evaluate_run", "execute_notebook", "find_stage", "format_bill", "format_ledger", "identity",
    "identity_diff", "identity_hash", "is_finished", "ladder_configs", "launch", "launch_many", "load_metrics",
    "load_parameters_file", "load_rates", "load_runs", "longest_rung_configs", "mean_trajectory", "notebook_names",
    "plan_reproduce", "price_plans", "quantize_run", "record_plans", "relative_paths", "reproduce", "run_key",
    "run_record", "run_streamed",
    "scale_overrides", "stage_bpb", "stage_config", "stage_kinds", "stage_settings", "stage_table",
    "stop_if_dry_run", "torchrun_command", "ttt_gain", "with_length",
]
