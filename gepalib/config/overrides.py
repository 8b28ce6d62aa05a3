"""Flat overrides: a field by its name alone (``steps=200 model_dim=128``), routed to its section.

:func:`parse_scalar` is the one rule turning a CLI flag, an :func:`override` value or a notebook
parameter into a bool, int or float; :func:`parse_value` adds tuples and strings and names the
field in its error; :func:`field_help` is each field's one-line help, read from its section's source.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
from dataclasses import fields, replace
from typing import Any

from gepalib.config.sections import SECTIONS, RunConfig


def _field_index() -> dict[str, tuple[str, dataclasses.Field]]:
    idx: dict[str, tuple[str, dataclasses.Field]] = {}
    for sec, klass in SECTIONS.items():
        for f in fields(klass):
            if f.name in idx:
                raise RuntimeError(f"duplicate config field name {f.name!r}")
            idx[f.name] = (sec, f)
    return idx


FIELD_INDEX = _field_index()


@functools.cache
def field_help() -> dict[str, str]:
    """Each config field's one-line help: the comment ending the line that defines it in its
    section class (``    name: type = default  # help``), read once from the class source
    (``inspect.getsource``; ``ast`` finds the field definitions, ``tokenize`` the comments)."""
    out: dict[str, str] = {}
    for klass in SECTIONS.values():
        src = textwrap.dedent(inspect.getsource(klass))
        comments = {t.start[0]: t.string.lstrip("#").strip()
                    for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}
        for node in ast.parse(src).body[0].body:
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None
                    and node.target.id in FIELD_INDEX and node.lineno in comments):
                out.setdefault(node.target.id, comments[node.lineno])
    return out


def field_type(name: str) -> type:
    """Python type of a flat field (bool, int, float, str or tuple)."""
    sec, f = FIELD_INDEX[name]
    default = getattr(SECTIONS[sec](), name)
    return type(default)


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_scalar(raw: Any, t: type) -> Any:
    """``raw`` as ``t`` (bool, int or float): the one rule for CLI overrides, :func:`override`
    and notebook parameters. TypeError for a value of the wrong kind, ValueError for a string
    that does not parse.

    * bool: a bool; the int 0 or 1; a string in :data:`TRUE_WORDS` / :data:`FALSE_WORDS`
      (case and surrounding spaces ignored). Nothing else is true or false.
    * int: an int (not a bool); an integral float (2.0); a string of digits, or a float
      literal with an integral value ("1e3", "2.0").
    * float: an int or float (not a bool); a float literal string.
    """
    if t is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if not isinstance(raw, str):
            raise TypeError(raw)
        if raw.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return raw.strip().lower() in TRUE_WORDS
        raise ValueError(raw)
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise TypeError(raw)
    if t is float:
        return float(raw.strip() if isinstance(raw, str) else raw)
    if t is not int:
        raise TypeError(f"parse_scalar: {t!r} is not bool, int or float")
    if isinstance(raw, int):
        return raw
    s = raw.strip() if isinstance(raw, str) else None
    if s is not None and s.lstrip("+-").isdigit():
        return int(s)
    v = float(s) if s is not None else raw
    if v.is_integer():
        return int(v)
    raise ValueError(raw)


def parse_value(name: str, raw: Any) -> Any:
    """Coerce a CLI/papermill value to the field's type (:func:`parse_scalar`'s rule; a tuple
    from a sequence or a "1,2" / "(1, 2)" string), with a clear error."""
    if name not in FIELD_INDEX:
        raise KeyError(f"unknown config field {name!r}; see `gepa info --fields`")
    t = field_type(name)
    what = "a bool" if t is bool else t.__name__
    try:
        if t is tuple:
            if not isinstance(raw, str):
                return tuple(raw)
            s = raw.strip().strip("()[] ")
            return tuple(int(x) for x in s.replace(",", " ").split()) if s else ()
        if t is str:
            if isinstance(raw, str):
                return raw.strip()
            raise TypeError(raw)
        return parse_scalar(raw, t)
    except TypeError:
        raise TypeError(f"field {name!r} expects {what}, got {raw!r}") from None
    except (ValueError, OverflowError):
        raise ValueError(f"field {name!r}: cannot parse {raw!r} as {t.__name__}") from None


def override(cfg: RunConfig, **kv: Any) -> RunConfig:
    """Return ``cfg`` with flat fields replaced, e.g. ``override(cfg, steps=100, model_dim=128)``."""
    per_sec: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for k, v in kv.items():
        if k == "preset":
            top[k] = v
            continue
        sec, _ = FIELD_INDEX.get(k, (None, None))
        if sec is None:
            raise KeyError(f"unknown config field {k!r}; see `gepa info --fields`")
        per_sec.setdefault(sec, {})[k] = parse_value(k, v)
    for sec, changes in per_sec.items():
        top[sec] = replace(getattr(cfg, sec), **changes)
    return replace(cfg, **top)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``["steps=100", "model_dim=128"]`` into typed values."""
    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"override {it!r} is not of the form name=value")
        k, v = it.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_")
        out[k] = parse_value(k, v)
    return out
