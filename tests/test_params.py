"""Notebook parameters: the parameters cell declares them (annotated assignments); unknown
names and wrong types fail with one line naming the parameter; strings from ``papermill -p``
are parsed where that is unambiguous (gepalib.run.params)."""
from __future__ import annotations

import nbformat
import pytest

from gepalib.run import notebooks as NB
from gepalib.run.params import (Kind, ParameterError, check_parameters, coerce, injected_unknowns,
                                kind_of_annotation, parameter_defaults, parameters_spec)

PARAMS = '''from typing import Optional
preset: str = "tiny"                # model family
nproc: int = 1
warmdown_frac: float = 0.4          # the submission: 8,000 of 20,000 steps
seeds: list[int] = [42, 43]
ladder_warmdown: Optional[list[int]] = None  # warmdown steps per rung
ttt_val_tokens: Optional[int] = 32768
baseline_bpb: "Optional[float]" = None
overrides: dict = {}
sgd: dict = {"ttt_optimizer": "sgd", "ttt_lr": 0.002,
             "ttt_epochs": 3}
compile: bool = False
'''
CHECK = "from gepalib.run.params import check_parameters\ncheck_parameters(globals())\n"


def namespace(**injected):
    """A notebook's globals when the check runs: the parameters cell, papermill's injected cell
    (its assignments), then the plan cell's first import."""
    ns: dict = {}
    exec(PARAMS, ns)
    ns.update(injected)
    exec("import os", ns)
    return ns


def test_parameters_cell_gives_names_and_kinds():
    spec = parameters_spec(PARAMS)
    assert list(spec) == ["preset", "nproc", "warmdown_frac", "seeds", "ladder_warmdown", "ttt_val_tokens",
                          "baseline_bpb", "overrides", "sgd", "compile"]
    assert spec["seeds"] == Kind("list", Kind("int")) and str(spec["seeds"]) == "a list of int"
    assert spec["ladder_warmdown"] == Kind("list", Kind("int"), optional=True)
    assert str(spec["ttt_val_tokens"]) == "int or None" and spec["compile"] == Kind("bool")
    assert spec["sgd"] == spec["overrides"] == Kind("dict")
    assert spec["baseline_bpb"] == Kind("float", optional=True)
    assert parameter_defaults(PARAMS)["sgd"] == {"ttt_optimizer": "sgd", "ttt_lr": 0.002, "ttt_epochs": 3}
    # what the kernel keeps: the evaluated annotations give the same kinds as the source
    ns = namespace()
    assert {k: kind_of_annotation(a) for k, a in ns["__annotations__"].items()} == spec
    assert parameters_spec("x = 1\ny: int = 2") == {"y": Kind("int")}  # only annotated names are parameters


def test_a_misspelt_parameter_names_itself_and_the_closest():
    with pytest.raises(ParameterError, match=r"^unknown notebook parameter 'seedz' \(did you mean 'seeds'\?\); "
                                             r"this notebook's parameters: preset, nproc, "):
        check_parameters(namespace(seedz=42))


@pytest.mark.parametrize("name, value, expected", [
    ("seeds", "[42]", [42]), ("seeds", "[42, 43]", [42, 43]), ("seeds", "42,43", [42, 43]), ("seeds", 42, [42]),
    ("seeds", "42", [42]), ("seeds", (1, 2), [1, 2]), ("warmdown_frac", "0.5", 0.5), ("warmdown_frac", 1, 1.0),
    ("nproc", "2", 2), ("nproc", 2.0, 2), ("nproc", "1e3", 1000), ("compile", "true", True),
    ("ladder_warmdown", "4000,5000", [4000, 5000]), ("ladder_warmdown", None, None),
    ("ttt_val_tokens", None, None), ("ttt_val_tokens", "None", None), ("baseline_bpb", 1.224, 1.224),
    ("sgd", '{"ttt_lr": 0.1}', {"ttt_lr": 0.1}), ("preset", "small", "small"),
])
def test_values_are_parsed_where_unambiguous(name, value, expected):
    ns = namespace(**{name: value})
    got = check_parameters(ns)
    assert got[name] == expected and type(got[name]) is type(expected) and ns[name] == expected
    assert got["preset"] == ("small" if name == "preset" else "tiny")


@pytest.mark.parametrize("name, value, msg", [
    ("warmdown_frac", "abc", "'warmdown_frac' expects float, got 'abc' (str)"),
    ("seeds", "4x2", "'seeds' expects a list of int, got '4x2' (str)"),
    ("seeds", "[42, 4.5]", "'seeds' expects a list of int, got '[42, 4.5]' (str)"),
    ("nproc", "2.5", "'nproc' expects int, got '2.5' (str)"),
    ("nproc", True, "'nproc' expects int, got True (bool)"),
    ("nproc", None, "'nproc' expects int, got None (NoneType)"),
    ("compile", "maybe", "'compile' expects bool, got 'maybe' (str)"),
    ("sgd", "[1]", "'sgd' expects a dict, got '[1]' (str)"),
    ("preset", ["tiny"], "'preset' expects str, got ['tiny'] (list)"),
    ("ttt_val_tokens", "lots", "'ttt_val_tokens' expects int or None, got 'lots' (str)"),
])
def test_a_wrong_type_is_one_line_naming_the_parameter(name, value, msg):
    with pytest.raises(ParameterError) as e:
        check_parameters(namespace(**{name: value}))
    assert str(e.value) == f"notebook parameter {msg}"


def test_injected_names_are_the_plain_values_after_the_parameters():
    """A name papermill injected sits after the last declared parameter and before the plan
    cell's first import; what later cells define (interactively, out of order) is not one."""
    ns = namespace(seedz=42, _i2="# Parameters")
    assert injected_unknowns(ns, ns["__annotations__"]) == ["seedz"]
    ns = namespace()
    exec("cfgs = [1, 2]\nrds = []", ns)  # later cells, after the import
    assert injected_unknowns(ns, ns["__annotations__"]) == [] and check_parameters(ns)["nproc"] == 1
    assert check_parameters({"x": 1}) == {}  # no parameters cell ran: nothing to compare against
    assert coerce("x", "7", Kind("int")) == 7


def _synthetic_notebook(folder):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("seeds: list[int] = [42]\nwarmdown_frac: float = 0.4",
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(CHECK + 'print(f"seeds:{seeds} warmdown_frac:{warmdown_frac}")\n'
                                          'print("chatter that is no progress line")\n'
                                          'print("step:1/2 train_loss:1.0000")\n')]
    nbformat.write(nb, folder / "tiny_nb.ipynb")


@pytest.mark.timeout(300)
def test_papermill_execution_fails_on_a_typo_and_parses_strings(tmp_path, monkeypatch, capsys):
    import papermill as pm

    (tmp_path / "nb").mkdir()
    _synthetic_notebook(tmp_path / "nb")
    monkeypatch.setattr(NB, "notebooks_dir", lambda: tmp_path / "nb")
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown notebook parameter 'seedz' \(did you mean "
                                                         r"'seeds'\?\)"):
        NB.execute_notebook("tiny_nb", tmp_path / "out", {"seedz": 42})
    capsys.readouterr()
    out = NB.execute_notebook("tiny_nb", tmp_path / "out", {"seeds": "42,43", "warmdown_frac": "0.5"})
    assert out == tmp_path / "out" / "tiny_nb.ipynb"
    echoed = capsys.readouterr().out.splitlines()  # the progress lines, echoed while the cell ran
    assert "  tiny_nb | seeds:[42, 43] warmdown_frac:0.5" in echoed
    assert "  tiny_nb | step:1/2 train_loss:1.0000" in echoed
    assert not any("chatter" in ln for ln in echoed)
