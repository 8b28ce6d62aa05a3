"""``gepa train``: train a model into a run directory (see docs/training.md, docs/runs.md).

    gepa train --preset tiny --run-dir runs/tiny --steps 300          # any config field is a flag
    gepa train --config runs/tiny/config.json --run-dir runs/tiny2
    gepa train --preset tiny --run-dir runs/tiny --no-resume          # start over
    torchrun --nproc-per-node 2 -m gepalib train --preset tiny --run-dir runs/tiny

A run dir with checkpoints is resumed (the same config is required; cadence fields
such as --val-every may change); a finished one is left as it is. Every field is
checked before the run dir is touched. Exit codes: see gepalib.errors (0 done, 1 non-finite
loss, 2 bad config, 3 bad data, 4 I/O or a busy run dir, 128+N stopped by signal N: a
checkpoint to resume from).
"""
from __future__ import annotations

import argparse

from gepalib.cli.common import DEFAULTS_NOTE, add_override_args, add_parser, collect_overrides
from gepalib.config import PRESETS, RunConfig, get_preset, load_config, override
from gepalib.train import train


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """``--preset`` or ``--config``, then the field flags (each value checked on the way)."""
    if args.config and args.preset:
        raise ValueError("pass either --preset or --config, not both")
    if not (args.config or args.preset):
        raise ValueError(f"pass --preset ({' | '.join(PRESETS)}) or --config path/to/config.json")
    cfg = load_config(args.config) if args.config else get_preset(args.preset)
    ov = collect_overrides(args)
    return override(cfg, **ov) if ov else cfg


def cmd_train(args: argparse.Namespace) -> int:
    train(config_from_args(args), args.run_dir, resume=not args.no_resume)
    return 0


EPILOG = """\
examples:
  gepa train --preset tiny --run-dir runs/tiny --steps 300        # any config field is a flag
  gepa train --config runs/tiny/config.json --run-dir runs/tiny2
  gepa train --preset tiny --run-dir runs/tiny --no-resume        # start over
  torchrun --nproc-per-node 2 -m gepalib train --preset tiny --run-dir runs/tiny

A run dir with checkpoints is resumed (same config; cadence fields such as --val-every may
change); a finished one is left as it is. Every value is checked before the run dir is touched.
Stopped by a signal, a run leaves a checkpoint to resume from: rerun the same command.
"""


def add_cli(subparsers) -> None:
    p = add_parser(subparsers, "train", help="train a model (works under torchrun)",
                   description="Train a model into a run directory (see docs/training.md, docs/runs.md).",
                   epilog=EPILOG + "\n" + DEFAULTS_NOTE)
    p.add_argument("--preset", default=None, help=f"config preset: {' | '.join(PRESETS)}")
    p.add_argument("--config", default=None, help="start from this config.json instead of a preset")
    p.add_argument("--run-dir", required=True, help="run directory (created; resumed if it has checkpoints)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over: delete the run dir's checkpoints, metrics and logs")
    add_override_args(p)
    p.set_defaults(func=cmd_train)
