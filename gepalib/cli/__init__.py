"""The ``gepa`` command line.

Each concern module registers its own subcommands through ``add_cli(subparsers)``;
this file only assembles them. Config fields are exposed as flat flags
(``--steps 100 --model-dim 128``), the same names as in Python and papermill.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from gepalib.cli.common import add_override_args, collect_overrides  # noqa: F401

# Modules that contribute subcommands, in help order.
CLI_MODULES = ["gepalib.data_cli", "gepalib.train", "gepalib.quant_cli", "gepalib.eval_cli", "gepalib.reproduce", "gepalib.info"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gepa", description="gepalib: the GEPA Parameter Golf reproduction")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in CLI_MODULES:
        importlib.import_module(mod).add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as e:  # user errors: one clear line
        msg = e.args[0] if (isinstance(e, KeyError) and e.args) else str(e)
        print(f"gepa {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
