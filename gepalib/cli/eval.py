"""``gepa eval RUN_DIR``: score a run's weights and record the stage ledger (see docs/evaluation.md).

    gepa eval runs/tiny --sliding --ttt                      # int6 artifact: roundtrip, sliding, TTT
    gepa eval runs/tiny --streaming --weights ema            # float EMA weights
    gepa eval runs/tiny --ttt --ttt-optimizer adamw --ttt-epochs 1 --ttt-lr 5e-5 --ttt-freeze-blocks 0
    torchrun --nproc_per_node 4 -m gepalib eval runs/gepa11 --sliding --ttt

The non-overlapping evaluation always runs (stage ``int6_roundtrip`` for the artifact,
``float_ema`` / ``float_live`` for the float weights); ``--sliding``, ``--ttt`` and
``--streaming`` add ``<w>_sliding``, ``<w>_sliding_ttt`` (``<w>_streaming_ttt`` with
``--ttt-scoring streaming``) and ``<w>_streaming``. When an override changes what a stage
measures relative to the run's config, the stage name carries it, e.g.
``int6_sliding_ttt[adamw,e1,f0,lr5e-05]``, and every row stores its settings. Rank 0 writes.
"""
from __future__ import annotations

import argparse
import os
import time

from gepalib.cli.common import DEFAULTS_NOTE, add_override_args, add_parser, collect_overrides
from gepalib.run.pipeline import evaluate_run
from gepalib.run.stages import WEIGHTS


def cmd_eval(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    evaluate_run(args.run_dir, sliding=args.sliding, ttt=args.ttt, streaming=args.streaming, weights=args.weights,
                 record=not args.no_record, log=lambda s: print(s, flush=True), **collect_overrides(args))
    if os.environ.get("RANK", "0") == "0":
        print(f"eval_total_seconds:{time.perf_counter() - t0:.1f}", flush=True)
    return 0


EPILOG = """\
examples:
  gepa eval runs/tiny --sliding --ttt                  # int6 artifact: roundtrip, sliding, TTT
  gepa eval runs/tiny --streaming --weights ema        # float EMA weights
  gepa eval runs/tiny --ttt --ttt-optimizer adamw --ttt-epochs 1 --ttt-lr 5e-5 --ttt-freeze-blocks 0
  torchrun --nproc_per_node 4 -m gepalib eval runs/gepa11 --sliding --ttt

The non-overlapping evaluation always runs (stage int6_roundtrip, or float_ema / float_live);
--sliding, --ttt and --streaming add <w>_sliding, <w>_sliding_ttt and <w>_streaming. A field
flag that changes what a stage measures tags its name, e.g. int6_sliding_ttt[adamw,e1,f0,lr5e-05].
Any config field works as a flag; the evaluation ones are listed above.
"""


def add_cli(subparsers) -> None:
    p = add_parser(subparsers, "eval", help="evaluate a run (non-overlapping, sliding, TTT, streaming)",
                   description="Score a run's weights and record the stage ledger (see docs/evaluation.md).",
                   epilog=EPILOG + "\n" + DEFAULTS_NOTE)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (config.json + weights)")
    p.add_argument("--sliding", action="store_true", help="also run the stride-64 sliding-window evaluation")
    p.add_argument("--ttt", action="store_true", help="also run legal score-first TTT")
    p.add_argument("--streaming", action="store_true", help="also run the banded-attention streaming evaluation")
    p.add_argument("--weights", choices=WEIGHTS, default="artifact",
                   help="int6 artifact (default), or the float EMA / live weights")
    p.add_argument("--no-record", action="store_true", help="do not write the stage ledger")
    add_override_args(p, sections=("data", "eval", "ttt"))
    p.set_defaults(func=cmd_eval)
