"""`gepa info`: show a resolved preset and its parameter count (see docs/model.md).

    gepa info gepa11                      # config, derived layout, param breakdown
    gepa info tiny --mlp-act relu2        # check an ablation before running it
    gepa info --fields                    # every config field: section, type, default

Output lines are greppable ``key: value`` pairs.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from gepalib import config as C
from gepalib.cli.common import DEFAULTS_NOTE, add_override_args, add_parser, collect_overrides
from gepalib.model import GPT, param_breakdown
from gepalib.rundir import identity_hash


def field_table() -> list[tuple[str, str, str, Any]]:
    """(name, section, type name, default) for every config field, in section order."""
    rows = []
    for name, (sec, _f) in C.FIELD_INDEX.items():
        default = getattr(C.SECTIONS[sec](), name)
        rows.append((name, sec, C.field_type(name).__name__, default))
    return rows


def model_layout(m: C.ModelConfig) -> dict[str, Any]:
    """Derived architecture facts users check ablations against."""
    L, n_enc = m.num_layers, m.num_layers // 2
    return {
        "head_dim": m.head_dim,
        "kv_dim": m.num_kv_heads * m.head_dim,
        "encoder_blocks": list(range(n_enc)),
        "decoder_blocks": list(range(n_enc, L)),
        "skips": 0 if m.skip_mode == "none" else n_enc,
        "xsa_blocks": list(range(L - m.xsa_last_n, L)),
        "ve_blocks": list(m.ve_layers),
        "ln_scales": [round((l + 1) ** -0.5, 4) if m.ln_scale else 1.0 for l in range(L)],
    }


def info_lines(cfg: C.RunConfig) -> list[str]:
    lines = [f"preset: {cfg.preset}", f"identity: {identity_hash(cfg)}"]
    for sec in C.SECTIONS:
        for f in dataclasses.fields(C.SECTIONS[sec]):
            lines.append(f"{sec}.{f.name}: {getattr(getattr(cfg, sec), f.name)}")
    for k, v in model_layout(cfg.model).items():
        lines.append(f"layout.{k}: {v}")
    bd = param_breakdown(GPT(cfg.model))
    lines.append(f"params: {bd['total']}")
    for k, v in bd.items():
        if k != "total":
            lines.append(f"params.{k}: {v}")
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    if args.fields:
        for name, sec, tname, default in field_table():
            print(f"{name}: section={sec} type={tname} default={default!r}")
        return 0
    if not args.preset:
        raise ValueError(f"give a preset ({', '.join(sorted(C.PRESETS))}) or --fields")
    cfg = C.get_preset(args.preset, **collect_overrides(args))
    print("\n".join(info_lines(cfg)))
    return 0


EPILOG = """\
examples:
  gepa info gepa11                      # config, derived layout, parameter breakdown
  gepa info tiny --mlp-act relu2        # check an ablation before running it
  gepa info --fields                    # every config field: section, type, default

Output lines are greppable key: value pairs.
"""


def add_cli(subparsers) -> None:
    p = add_parser(subparsers, "info", help="show a preset's resolved config and parameter breakdown",
                   description="Show a preset's resolved config, derived layout and parameter count "
                               "(see docs/model.md).", epilog=EPILOG + "\n" + DEFAULTS_NOTE)
    p.add_argument("preset", nargs="?", default=None, help=f"one of {sorted(C.PRESETS)}")
    p.add_argument("--fields", action="store_true", help="list every config field with section, type, default")
    add_override_args(p, sections=("model",))
    p.set_defaults(func=cmd_info)
