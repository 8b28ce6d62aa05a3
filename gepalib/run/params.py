"""A notebook's papermill parameters, checked: ``check_parameters(globals())``.

Each notebook's first code cell after its ``parameters`` cell calls
:func:`check_parameters`. The parameters cell is the one place that names the
parameters, their defaults and so their types (an annotation where a default cannot
say it, e.g. ``ttt_val_tokens: "Optional[int]" = 32768``). Papermill executes that
cell, then its own ``injected-parameters`` cell (``# Parameters`` and one assignment
per ``-p``), then the check; IPython's input history (``In``) holds all three sources,
so the check sees which names were injected and what the defaults were:

* a name the parameters cell does not define fails (papermill itself only warns and runs
  the defaults): ``unknown notebook parameter 'seedz' (did you mean 'seeds'?)``;
* a value of the wrong type fails with one line naming the parameter and the type;
* strings are parsed where that is unambiguous (``papermill -p`` passes ``[42]`` as a
  string): lists from ``[42, 43]`` or ``42,43`` (a single value is a one-item list), numbers
  from ``"0.5"``, dicts from ``{"ttt_lr": 0.1}``; bools, ints and floats by the one rule of
  CLI overrides (:func:`gepalib.config.parse_scalar`: true/false, yes/no, on/off, 1/0); ints
  are accepted for floats; the parsed values replace the raw ones in the namespace.

Run outside papermill (JupyterLab, a script) there is nothing injected and every value
is checked the same way.
"""
from __future__ import annotations

import ast
import difflib
import json
from dataclasses import dataclass
from typing import Any, MutableMapping

from gepalib.config import parse_scalar

INJECTED_HEADER = "# Parameters"  # the first line of papermill's injected-parameters cell
SCALARS = ("int", "float", "bool", "str")
NONE = ("none", "null", "~")


class ParameterError(ValueError):
    """A notebook parameter the notebook does not define, or a value of the wrong type."""


@dataclass(frozen=True)
class Kind:
    """What a parameter holds: int, float, bool, str, list (of ``item``), dict or any."""

    name: str
    item: Kind | None = None
    optional: bool = False

    def __str__(self) -> str:
        base = f"a list of {self.item}" if self.name == "list" and self.item and self.item.name != "any" else (
            "a list" if self.name == "list" else "a dict" if self.name == "dict" else self.name)
        return f"{base} or None" if self.optional and self.name != "any" else base


ANY = Kind("any", optional=True)


def kind_of(default: Any) -> Kind:
    """The kind a default value implies (None: anything)."""
    if default is None:
        return ANY
    for t in (bool, int, float, str, dict):  # bool before int
        if isinstance(default, t):
            return Kind(t.__name__)
    if isinstance(default, (list, tuple)):
        items = {kind_of(v) for v in default}
        if items == {Kind("int"), Kind("float")}:
            items = {Kind("float")}
        return Kind("list", items.pop() if len(items) == 1 else ANY)
    return ANY


def kind_from_annotation(node: ast.expr) -> Kind:
    """``int``, ``list[int]``, ``Optional[float]``, ``int | None``, ``dict`` (also quoted)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return kind_from_annotation(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Constant) and node.value is None:
        return Kind("none", optional=True)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        a, b = kind_from_annotation(node.left), kind_from_annotation(node.right)
        if b.name == "none" or a.name == "none":
            k = a if b.name == "none" else b
            return Kind(k.name, k.item, optional=True)
        return ANY
    if isinstance(node, ast.Name):
        name = node.id.lower()
        if name in ("list", "tuple", "sequence"):
            return Kind("list", ANY)
        return Kind(name) if name in (*SCALARS, "dict") else ANY
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        outer = node.value.id.lower()
        if outer == "optional":
            k = kind_from_annotation(node.slice)
            return Kind(k.name, k.item, optional=True)
        if outer in ("list", "tuple", "sequence"):
            inner = node.slice.elts[0] if isinstance(node.slice, ast.Tuple) else node.slice
            return Kind("list", kind_from_annotation(inner))
        if outer == "dict":
            return Kind("dict")
    return ANY


def parameters_spec(source: str) -> dict[str, Kind]:
    """Name -> kind of every parameter a parameters cell assigns, in order."""
    spec: dict[str, Kind] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            spec[node.target.id] = kind_from_annotation(node.annotation)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    try:
                        spec[t.id] = kind_of(ast.literal_eval(node.value))
                    except ValueError:  # not a literal: its type is not checked
                        spec[t.id] = ANY
    return spec


def assigned_names(source: str) -> list[str]:
    return list(parameters_spec(source))


def _only_assignments(source: str) -> bool:
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(n, (ast.Assign, ast.AnnAssign)) for n in body)


def _literal(s: str) -> Any:
    """A Python or JSON literal, or ValueError."""
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError):
        try:
            return json.loads(s)
        except ValueError:
            raise ValueError(s) from None


def coerce(name: str, value: Any, kind: Kind) -> Any:
    """``value`` as ``kind``; ParameterError naming the parameter when it cannot be."""
    raw = value

    def fail():
        return ParameterError(f"notebook parameter {name!r} expects {kind}, got {raw!r} ({type(raw).__name__})")

    if isinstance(value, str) and kind.optional and value.strip().lower() in NONE:
        return None
    if value is None:
        if kind.optional:
            return None
        raise fail()
    if kind.name == "any":
        return value
    s = value.strip() if isinstance(value, str) else None
    try:
        if kind.name in ("bool", "int", "float"):
            return parse_scalar(value, {"bool": bool, "int": int, "float": float}[kind.name])
        elif kind.name == "str":
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
        elif kind.name == "dict":
            if isinstance(value, dict):
                return value
            if s is not None and isinstance(d := _literal(s), dict):
                return d
        elif kind.name == "list":
            if s is not None:
                if s[:1] in "[(":
                    value = _literal(s)
                else:
                    value = [x.strip() for x in s.split(",")] if s else []
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if isinstance(value, (list, tuple)):
                return [coerce(name, v, kind.item or ANY) for v in value]
    except ParameterError:
        raise fail() from None
    except (ValueError, TypeError, OverflowError):
        pass
    raise fail()


def find_cells(history: list[str]) -> tuple[str | None, str | None]:
    """(parameters cell, injected cell or None) from IPython's input history, whose last entry
    is the cell running the check; (None, None) when the cell before it is not a parameters cell."""
    cells = [c for c in history if isinstance(c, str)]
    if len(cells) < 2:
        return None, None
    prev = cells[-2]
    if prev.lstrip().startswith(INJECTED_HEADER) and len(cells) >= 3:
        return cells[-3], prev  # papermill puts its cell right after the parameters cell
    return (prev if _only_assignments(prev) else None), None


def check_parameters(namespace: MutableMapping[str, Any], *, parameters_source: str | None = None,
                     injected_source: str | None = None) -> dict[str, Any]:
    """Check (and parse) a notebook's parameters in ``namespace`` (the notebook's ``globals()``).

    The parameters cell and papermill's injected cell are found in ``namespace["In"]`` unless
    given. Raises :class:`ParameterError` for an injected name the parameters cell does not
    define or a value that is not of its parameter's kind; returns {name: parsed value} (and
    writes the parsed values back into ``namespace``)."""
    if parameters_source is None:
        parameters_source, injected_source = find_cells(list(namespace.get("In") or []))
        if parameters_source is None:
            return {}  # run interactively, out of order: nothing to compare against
    spec = parameters_spec(parameters_source)
    for name in assigned_names(injected_source or ""):
        if name not in spec:
            close = difflib.get_close_matches(name, list(spec), n=1)
            raise ParameterError(f"unknown notebook parameter {name!r}"
                                 + (f" (did you mean {close[0]!r}?)" if close else "")
                                 + f"; this notebook's parameters: {', '.join(spec)}")
    values = {name: coerce(name, namespace[name], kind) for name, kind in spec.items() if name in namespace}
    namespace.update(values)
    return values
