"""A notebook's papermill parameters, checked: ``check_parameters(globals())``.

Each notebook's first code cell (its plan cell) calls :func:`check_parameters`. The
parameters cell is the one place that declares the parameters: one annotated assignment
each (``seeds: list[int] = [42, 43, 44]``, ``val_tokens: Optional[int] = 131072``), so
the names, their types and defaults are what the notebook declares -- Python keeps the
annotations in the namespace's ``__annotations__``, and :func:`parameters_cell` with
:func:`parameters_spec` / :func:`parameter_defaults` read the same cell from the notebook file
(AST), as ``papermill.inspect_notebook`` does. Comments on the parameters cell hold no ``=``
(papermill's reader takes a line with two for a line it cannot parse).

* a name papermill injected that the parameters cell does not declare fails (papermill only
  warns): ``unknown notebook parameter 'seedz' (did you mean 'seeds'?)`` -- such a name is a
  plain value assigned after the last declared parameter, before the plan cell's first import;
* a value of the wrong type fails with one line naming the parameter and the type;
* strings are parsed where that is unambiguous (``papermill -p`` passes ``[42]`` as a
  string): lists from ``[42, 43]`` or ``42,43`` (a single value is a one-item list), numbers
  from ``"0.5"``, dicts from ``{"ttt_lr": 0.1}``; bools, ints and floats by the one rule of
  CLI overrides (:func:`gepalib.config.parse_scalar`: true/false, yes/no, on/off, 1/0); ints
  are accepted for floats; the parsed values replace the raw ones in the namespace.

"""
from __future__ import annotations

import ast
import difflib
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, MutableMapping

from gepalib.config import parse_scalar

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
    """Name -> kind of every parameter a parameters cell declares (its annotated assignments),
    in order."""
    return {n.target.id: kind_from_annotation(n.annotation) for n in ast.parse(source).body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def parameter_defaults(source: str) -> dict[str, Any]:
    """Name -> default of every parameter a parameters cell declares (literal values)."""
    return {n.target.id: ast.literal_eval(n.value) for n in ast.parse(source).body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.value is not None}


def parameters_cell(path: str | os.PathLike) -> str:
    """The source of the cell tagged ``parameters`` of a notebook (``.ipynb``); ValueError if none."""
    cells = [c for c in json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise ValueError(f"{path}: no cell tagged parameters")
    src = cells[0]["source"]
    return "".join(src) if isinstance(src, list) else src


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




def _annotation_source(a: Any) -> str:
    """An evaluated annotation (``list[int]``, ``typing.Optional[int]``, ``int``) as source."""
    if isinstance(a, str):
        return a
    if typing.get_origin(a) is None and isinstance(a, type):
        return a.__name__
    return repr(a).replace("typing.", "")


def kind_of_annotation(a: Any) -> Kind:
    try:
        return kind_from_annotation(ast.parse(_annotation_source(a), mode="eval").body)
    except SyntaxError:
        return ANY


PLAIN = (type(None), bool, int, float, str, list, tuple, dict)  # what papermill can inject


def injected_unknowns(namespace: Mapping[str, Any], declared: Mapping[str, Any]) -> list[str]:
    """Names papermill assigned that the parameters cell does not declare: the plain values
    the namespace gained after its last declared parameter and before the next module,
    function or class (the plan cell's first import); ``_``-names are IPython's."""
    names = list(namespace)
    last = max((i for i, n in enumerate(names) if n in declared), default=None)
    out: list[str] = []
    for n in names[last + 1:] if last is not None else []:
        if not isinstance(namespace[n], PLAIN):
            break
        if not n.startswith("_"):
            out.append(n)
    return out


def unknown_error(name: str, known: list[str]) -> ParameterError:
    close = difflib.get_close_matches(name, known, n=1)
    return ParameterError(f"unknown notebook parameter {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; this notebook's parameters: {', '.join(known)}")


def check_parameters(namespace: MutableMapping[str, Any]) -> dict[str, Any]:
    """Check (and parse) a notebook's parameters in ``namespace`` (the notebook's ``globals()``).

    The parameters are the names the parameters cell annotates (``namespace["__annotations__"]``).
    Raises :class:`ParameterError` for a name papermill injected that is not one of them
    (:func:`injected_unknowns`) or a value that is not of its parameter's kind; returns {name:
    parsed value} (and writes the parsed values back into ``namespace``). Without annotations
    (a fresh kernel that skipped the parameters cell) there is nothing to check: {}."""
    ann = namespace.get("__annotations__")
    if not isinstance(ann, Mapping) or not ann:
        return {}
    spec = {name: kind_of_annotation(a) for name, a in ann.items()}
    for name in injected_unknowns(namespace, spec):
        raise unknown_error(name, list(spec))
    values = {name: coerce(name, namespace[name], kind) for name, kind in spec.items() if name in namespace}
    namespace.update(values)
    return values
