"""Shared command-line helpers: config overrides as flat flags (``--steps 100``)."""
from __future__ import annotations

import argparse
from typing import Any

from gepalib import config as C


def add_override_args(p: argparse.ArgumentParser) -> None:
    """Add ``--<field>`` for every config field, plus ``--set name=value``."""
    g = p.add_argument_group("config overrides (any config field, see `gepa info --fields`)")
    for name in C.FIELD_INDEX:
        g.add_argument("--" + name.replace("_", "-"), dest="ov_" + name, default=None, metavar="V",
                       help=argparse.SUPPRESS)
    g.add_argument("--set", dest="ov_set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a config field, e.g. --set steps=100 (or use --steps 100)")


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in C.FIELD_INDEX:
        v = getattr(args, "ov_" + name, None)
        if v is not None:
            out[name] = C.parse_value(name, v)
    out.update(C.parse_overrides(getattr(args, "ov_set", []) or []))
    return out
