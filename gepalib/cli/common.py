"""Shared command-line helpers: config overrides as flat flags (``--steps 100``), listed in
``--help`` one section at a time, and the help layout every subcommand uses."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from gepalib import config as C
from gepalib.errors import exit_codes_text

METAVARS = {int: "INT", float: "FLOAT", bool: "BOOL", str: "STR", tuple: "INTS"}
DEFAULTS_NOTE = ("Field defaults in [brackets] are the config's own (the gepa11 preset); a preset changes\n"
                 "some: `gepa info PRESET` shows its values, `gepa info --fields` lists every field.")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples in the epilog keep their lines; flags get a wider column so one field fits one line."""

    def __init__(self, prog: str, **kw: Any):
        kw.setdefault("max_help_position", 32)
        super().__init__(prog, **kw)


def add_parser(subparsers, name: str, *, help: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """A subcommand with a short user-facing description, an examples epilog and the exit codes
    (the same table for every subcommand)."""
    epilog = "\n\n".join(x for x in (epilog.strip("\n"), exit_codes_text()) if x)
    return subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                 formatter_class=HelpFormatter)


field_help = C.field_help  # the fields' help lives with the fields (gepalib/config.py)


def _shown(v: Any) -> str:
    return "''" if v == "" else str(v)


def add_override_args(p: argparse.ArgumentParser, sections: Sequence[str] | None = None) -> None:
    """Add ``--<field>`` for every config field, plus ``--set name=value``.

    The fields of ``sections`` (default: all) are listed in ``--help``, one argument group per
    section (flag, type, one-line help, default); the others work the same but are not listed.
    Call it after the subcommand's own arguments: the usage line is the parser's usage so far
    followed by ``[--FIELD VALUE ...]``."""
    shown = set(C.SECTIONS if sections is None else sections)
    if p.usage is None:  # the usage line lists the flags so far, then the field flags as one item
        p.usage = p.format_usage().removeprefix("usage: ").rstrip("\n").replace("%", "%%") + " [--FIELD VALUE ...]"
    helps = field_help()
    groups = {sec: p.add_argument_group(f"{sec} fields") for sec in C.SECTIONS if sec in shown}
    for name, (sec, _f) in C.FIELD_INDEX.items():
        t = C.field_type(name)
        default = getattr(C.SECTIONS[sec](), name)
        text = f"{helps.get(name, '')} [{_shown(default)}]".strip().replace("%", "%%")
        groups.get(sec, p).add_argument("--" + name.replace("_", "-"), dest="ov_" + name, default=None,
                                        metavar=METAVARS.get(t, "V"), help=text if sec in shown else argparse.SUPPRESS)
    g = p.add_argument_group("config overrides")
    g.add_argument("--set", dest="ov_set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a config field, e.g. --set steps=100 (the same as --steps 100)")


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in C.FIELD_INDEX:
        v = getattr(args, "ov_" + name, None)
        if v is not None:
            out[name] = C.parse_value(name, v)
    out.update(C.parse_overrides(getattr(args, "ov_set", []) or []))
    return out
