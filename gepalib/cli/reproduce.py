"""``gepa reproduce``: run every notebook headlessly and tabulate the five findings.

    gepa reproduce                          # the demo: reduced parameters (< 15 min on 2 cores)
    gepa reproduce --study                  # the calibrated study: the notebooks' own parameters (< 2 h)
    gepa reproduce --quick                  # smallest parameters (a smoke run, a few minutes)
    gepa reproduce --notebooks NAME [NAME ...]   # a subset of notebooks/ (NN_name.ipynb)
    gepa reproduce --parameters notebooks/NAME.gpu.yaml --notebooks NAME

Steps: prepare the embedded dataset if needed; learn what each notebook runs by executing it
through its plan cell; train every planned run (several at once); execute each notebook with papermill
(kernel ``python3``, cwd = the project root) into ``<out>/<name>.ipynb`` -- the sources
in ``notebooks/`` stay output-free; each findings notebook stores its verdict as
``<figures>/finding_F<n>.json``; finally ``<figures>/findings.md`` tabulates them (the
submission's number, ours, the verdict). A failing notebook is reported and the others
still run; the exit code is then 5.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gepalib.cli.common import add_parser
from gepalib.errors import NOTEBOOK_FAILED
from gepalib.run.notebooks import load_parameters_file, reproduce


def parse_params(items: list[str]) -> dict[str, Any]:
    """``-p name=value`` items as {name: YAML value}."""
    import yaml  # the notebooks extra

    params = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"-p {item!r} is not of the form name=value")
        k, v = item.split("=", 1)
        params[k.strip()] = yaml.safe_load(v)
    return params


def cmd_reproduce(args: argparse.Namespace) -> int:
    params = load_parameters_file(args.parameters) if args.parameters else {}
    params.update(parse_params(args.param or []))
    if args.quick and args.study:
        raise ValueError("--quick and --study exclude each other")
    budget = "quick" if args.quick else ("study" if args.study else "demo")
    if args.plan:
        from gepalib.run.bill import format_bill, plan_reproduce

        print(format_bill(plan_reproduce(args.notebooks, budget=budget, runs_root=args.runs_root,
                                         data_dir=args.data_dir, figures=args.figures, parameters=params,
                                         notebooks_dir=args.notebooks_dir, workers=args.workers,
                                         rates_kind=args.rates)))
        return 0
    res = reproduce(args.notebooks, budget=budget, out=args.out, figures=args.figures, runs_root=args.runs_root,
                    data_dir=args.data_dir, parameters=params, log_output=args.verbose, workers=args.workers,
                    notebooks_dir=args.notebooks_dir)
    failed = [r for r in res["notebooks"] if r["status"] != "ok"]
    print(Path(res["findings_md"]).read_text(encoding="utf-8"))
    if failed:
        print(f"gepa reproduce: {len(failed)} notebook(s) failed: "
              + ", ".join(f"{r['notebook']} ({r['error']}; see {r['output']})" for r in failed), file=sys.stderr)
        return NOTEBOOK_FAILED
    return 0


EPILOG = """\
examples:
  gepa reproduce                          # the demo: reduced parameters (< 15 min on 2 cores)
  gepa reproduce --study                  # the calibrated study: the notebooks' own parameters (< 2 h)
  gepa reproduce --quick                  # smallest parameters (a smoke run, a few minutes)
  gepa reproduce --notebooks NAME [NAME ...]   # some of the notebooks (their NN_name)
  gepa reproduce --parameters notebooks/NAME.gpu.yaml --notebooks NAME -p nproc=8
  gepa reproduce --plan --parameters notebooks/NAME.gpu.yaml --notebooks NAME
  gepa reproduce --plan --study --rates cpu  # the study's bill at this CPU's measured rates

The notebooks are the NN_name.ipynb of --notebooks-dir, run in name order, each executed first
through its plan cell to learn what it trains; the demo's and --quick's parameters are the
NN_name.demo.yaml / .quick.yaml beside it. Executed notebooks go to --out (the sources in
notebooks/ stay output-free); the runs' progress
lines are echoed as they come (--verbose: every line of output). A notebook that fails is
reported and the others still run; the exit code is then 5. A misspelt or mistyped parameter
fails its notebook with a line naming it.
"""


def add_cli(subparsers) -> None:
    p = add_parser(subparsers, "reproduce", help="execute every notebook headlessly and tabulate the findings",
                   description="Execute the notebooks headlessly (papermill) and tabulate the five findings "
                               "in <figures>/findings.md.", epilog=EPILOG)
    p.add_argument("--notebooks", nargs="+", metavar="NAME", default=None,
                   help="some of the notebooks (default: every NN_name.ipynb of --notebooks-dir, in name order)")
    p.add_argument("--notebooks-dir", default=None, metavar="DIR",
                   help="the folder of the notebooks and their parameter files (default notebooks/)")
    p.add_argument("--study", action="store_true",
                   help="the calibrated study: the notebooks' own parameters (default: the demo's reduced ones)")
    p.add_argument("--quick", action="store_true", help="smallest parameters (smoke run)")
    p.add_argument("--workers", type=int, default=None,
                   help="training runs (and plan cells) at once before the notebooks (default: one per usable core)")
    p.add_argument("--out", default="runs/notebooks", help="where executed notebooks go (default runs/notebooks)")
    p.add_argument("--figures", default="figures", help="figures and findings.md (default figures)")
    p.add_argument("--runs-root", default="runs", help="content-addressed run directories (default runs)")
    p.add_argument("--data-dir", default="data/sotu_sp1024", help="dataset (default: the embedded one)")
    p.add_argument("--parameters", default=None, metavar="YAML",
                   help="notebook parameters for every notebook, e.g. notebooks/NAME.gpu.yaml")
    p.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                   help="one notebook parameter (YAML value), e.g. -p nproc=2")
    p.add_argument("--verbose", action="store_true", help="echo the notebooks' cell output")
    p.add_argument("--plan", action="store_true",
                   help="list every run and evaluation the notebooks would launch (commands, what is reused) "
                        "and the estimated GPU-hours (CPU process-hours on a CPU) and wall time; train nothing")
    p.add_argument("--rates", choices=("auto", "cpu", "gpu"), default="auto",
                   help="--plan's rates: cpu = this CPU's bench/results/speed_ledger.json (one thread per process), "
                        "gpu = bench/results/gpu.json or the submission's 4xA100 run; auto (default): cpu when no "
                        "CUDA device is visible, the ledger reads and the plan trains only sizes it measured")
    p.set_defaults(func=cmd_reproduce)
