"""The ``gepa`` command line (assembly, the one error handler) and the package's import structure."""
from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import gepalib
from gepalib import cli
from gepalib.download import DownloadError
from gepalib.faults import NonFiniteLoss, TrainInterrupted

PKG = Path(gepalib.__file__).resolve().parent

# ---------------------------------------------------------------------------
# Import structure: data flows down only

# Layers, lowest first. Top-level modules are the bottom layer unless named here; a
# package's modules share its layer.
LAYERS = {
    "bottom": 0,
    "gepalib.eval": 1, "gepalib.quant": 1, "gepalib.findings": 1,
    "gepalib.train": 2, "gepalib.trainloop": 2,
    "gepalib.run": 3,
    "gepalib.cli": 4, "gepalib.__main__": 4,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(mod: str) -> int:
    parts = mod.split(".")
    if len(parts) >= 2 and ".".join(parts[:2]) in LAYERS:
        return LAYERS[".".join(parts[:2])]
    return LAYERS["bottom"]


def _resolve(name: str, modules: set[str]) -> str | None:
    """The gepalib module ``name`` refers to (a module, or failing that its package)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(node: ast.stmt, mod: str, is_pkg: bool, modules: set[str]) -> list[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative import
            pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
            pkg = pkg[:len(pkg) - node.level + 1]
            base = ".".join(pkg + ([base] if base else []))
        # `from gepalib import dist` imports the module gepalib.dist, not the package
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    return [r for r in (_resolve(n, modules) for n in names if n.split(".")[0] == "gepalib") if r]


def _module_level(body: list[ast.stmt]):
    """Statements executed at import time (not function bodies, not ``if TYPE_CHECKING``)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            sub = getattr(node, field, None)
            if isinstance(sub, list):
                yield from _module_level(sub)


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level imports, all imports incl. inside functions) between gepalib modules."""
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    top: dict[str, set[str]] = {}
    every: dict[str, set[str]] = {}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_pkg = path.name == "__init__.py"
        top[mod] = {t for n in _module_level(tree.body) for t in _imported(n, mod, is_pkg, modules)} - {mod}
        every[mod] = {t for n in ast.walk(tree) for t in _imported(n, mod, is_pkg, modules)} - {mod}
    return top, every


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (c := visit(t)):
                return c
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_import_graph_helpers_see_cycles_and_relative_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    mods = {"gepalib", "gepalib.run", "gepalib.run.stages", "gepalib.rundir", "gepalib.dist"}
    tree = ast.parse("from . import stages\nfrom ..rundir import RunDir\nfrom gepalib import dist\n"
                     "import gepalib.run.stages as S\nfrom gepalib.run import launch\nimport numpy\n")
    got = [t for n in tree.body for t in _imported(n, "gepalib.run.results", False, mods)]
    assert got == ["gepalib.run.stages", "gepalib.rundir", "gepalib.dist", "gepalib.run.stages", "gepalib.run"]
    tree = ast.parse("def f():\n    import gepalib.dist\nif TYPE_CHECKING:\n    import gepalib.run\n"
                     "try:\n    import gepalib.rundir\nexcept ImportError:\n    pass\n")
    assert [t for n in _module_level(tree.body) for t in _imported(n, "gepalib.x", False, mods)] == ["gepalib.rundir"]


def test_no_import_cycle_among_gepalib_modules():
    top, every = import_graph()
    assert len(top) > 30, "the walk found too few modules"
    cycle = find_cycle(top)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)
    # a function-level (lazy) import hides a circle from the import machinery, not from the design
    cycle = find_cycle(every)
    assert cycle is None, "import cycle closed by a lazy (function-level) import: " + " -> ".join(cycle)


def test_a_lazy_import_closing_a_cycle_is_caught():
    """The walk over every import (function bodies included) sees a circle that a lazy import hides."""
    mods = {"gepalib", "gepalib.quant", "gepalib.quant.gptq", "gepalib.quant.hessian"}
    src = {"gepalib.quant.gptq": "def f():\n    from gepalib.quant.hessian import g\n",
           "gepalib.quant.hessian": "from gepalib.quant.gptq import f\n"}
    top = {m: {t for n in _module_level(ast.parse(s).body) for t in _imported(n, m, False, mods)} for m, s in src.items()}
    every = {m: {t for n in ast.walk(ast.parse(s)) for t in _imported(n, m, False, mods)} for m, s in src.items()}
    assert find_cycle(top) is None  # invisible at module level
    assert find_cycle(every) == ["gepalib.quant.gptq", "gepalib.quant.hessian", "gepalib.quant.gptq"]


def test_no_module_imports_a_higher_layer():
    _, every = import_graph()  # imports inside functions count too: a lazy import is still a dependency
    bad = sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                 for m, ts in every.items() for t in ts if layer_of(t) > layer_of(m))
    assert not bad, "\n".join(bad)


def test_argparse_only_in_cli():
    offenders = [module_name(p) for p in PKG.rglob("*.py")
                 if "argparse" in {a.name for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                                   if isinstance(n, ast.Import) for a in n.names}
                 and not module_name(p).startswith("gepalib.cli")]
    assert not offenders, offenders


# ---------------------------------------------------------------------------
# The command line


def test_every_subcommand_is_registered_from_cli_modules():
    assert all(m.startswith("gepalib.cli.") for m in cli.CLI_MODULES)
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"data", "train", "quantize", "artifact", "eval", "reproduce", "info"}
    data = next(a for a in sub.choices["data"]._actions if isinstance(a, argparse._SubParsersAction))
    assert set(data.choices) == {"prepare", "download", "check"}
    flags = {o for a in sub.choices["eval"]._actions for o in a.option_strings}
    assert {"--sliding", "--ttt", "--streaming", "--weights", "--no-record", "--ttt-lr", "--set"} <= flags
    assert "--quick" in {o for a in sub.choices["reproduce"]._actions for o in a.option_strings}
    for m in cli.CLI_MODULES:
        assert callable(importlib.import_module(m).add_cli), m


def _exc(kind: str) -> BaseException:
    """The failure ``kind``, built from the classes the package raises."""
    import errno

    from gepalib.data import ShardError
    from gepalib.faults import NonFiniteResult
    from gepalib.fsio import DamagedFile, WriteFailed
    from gepalib.runlock import RunDirLocked

    return {
        "value": ValueError("bad value"), "missing": FileNotFoundError("no such file"), "key": KeyError("nope"),
        "nan_loss": NonFiniteLoss("non-finite train loss at step 3"),
        "nan_eval": NonFiniteResult("stage int6_roundtrip: val_bpb=nan"),
        "signal": TrainInterrupted("SIGTERM after step 7/20", 15, 7),
        "hub": DownloadError("hub unreachable"),
        "locked": RunDirLocked("runs/x is in use by `gepa train` (pid 7)"),
        "enospc": WriteFailed(errno.ENOSPC, "No space left on device", "runs/x/summary.json"),
        "eacces": PermissionError(errno.EACCES, "Permission denied", "runs/x"),
        "shard": ShardError("shard x_val_000000.bin: bad magic 7"),
        "damaged": DamagedFile("runs/x/model_ema.pt: sha256 mismatch"),
    }[kind]


# One class of failure per exit code, the same for every subcommand (README, "Exit codes").
# On the original code a busy run dir, a full disk, a permission error and an unreachable hub
# all gave 1 (as a non-finite loss does), and a damaged shard or weights file 2.
@pytest.mark.parametrize("kind, code, line", [
    ("value", 2, "gepa info: error: bad value"),
    ("missing", 2, "gepa info: error: no such file"),
    ("key", 2, "gepa info: error: nope"),
    ("nan_loss", 1, "gepa info: error: non-finite train loss at step 3"),
    ("nan_eval", 1, "gepa info: error: stage int6_roundtrip: val_bpb=nan"),
    ("signal", 128 + 15, "gepa info: SIGTERM after step 7/20"),
    ("hub", 4, "gepa info: error: hub unreachable"),
    ("locked", 4, "gepa info: error: runs/x is in use by `gepa train` (pid 7)"),
    ("enospc", 4, "gepa info: error: cannot write runs/x/summary.json: no space left on device"),
    ("eacces", 4, "gepa info: error: runs/x: permission denied"),
    ("shard", 3, "gepa info: error: shard x_val_000000.bin: bad magic 7"),
    ("damaged", 3, "gepa info: error: runs/x/model_ema.pt: sha256 mismatch"),
])
def test_one_error_handler_maps_failures_to_exit_codes(monkeypatch, capsys, kind, code, line):
    import gepalib.cli.info as info_cli

    exc = _exc(kind)

    def boom(args):
        raise exc

    monkeypatch.setattr(info_cli, "cmd_info", boom)
    assert cli.main(["info", "tiny"]) == code
    assert capsys.readouterr().err.strip() == line


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    import gepalib.cli.info as info_cli

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(info_cli, "cmd_info", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["info", "tiny"])


def test_data_subcommand_errors_name_the_action(capsys, tmp_path):
    assert cli.main(["data", "check", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("gepa data check: error: ")


def test_python_dash_m_gepalib_is_the_cli():
    r = subprocess.run([sys.executable, "-m", "gepalib", "info", "tiny", "--model-dim", "64"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert out["model.model_dim"] == "64" and "identity" in out
    r = subprocess.run([sys.executable, "-m", "gepalib", "train", "--run-dir", "x"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "gepa train: error: pass --preset" in r.stderr


def test_unknown_flag_gets_the_subcommands_usage_and_the_closest_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--preset", "tiny", "--run-dir", "x", "--stepz", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: gepa train ")
    assert err.strip().endswith("gepa train: error: unrecognized argument --stepz; did you mean --steps?")
    with pytest.raises(SystemExit):
        cli.main(["data", "check", "somewhere", "--deeep"])
    assert "gepa data check: error: unrecognized argument --deeep; did you mean --deep?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["info", "tiny", "--qqqqqq=1"])
    assert "gepa info: error: unrecognized argument --qqqqqq (see gepa info --help)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["info", "tiny", "extra"])
    assert "gepa info: error: unrecognized arguments: extra" in capsys.readouterr().err


def test_a_closed_stdout_pipe_ends_quietly():
    """`gepa info --fields | head -1`: the reader leaves before the output is written."""
    p = subprocess.Popen([sys.executable, "-m", "gepalib", "info", "--fields"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # closed before the child (still importing torch) writes a byte
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 128 + 13  # as if killed by SIGPIPE
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize("command", [["train"], ["eval"], ["quantize"], ["artifact"], ["info"], ["reproduce"],
                                     ["data"], ["data", "prepare"], ["data", "download"], ["data", "check"]])
def test_help_is_written_for_users(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        cli.main([*command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: gepa {' '.join(command)} ")
    assert "example" in out
    for dev in ("``", "GEPA_INJECT", "hook", "SPEC", ":func:", ":mod:"):
        assert dev not in out, f"gepa {' '.join(command)} --help shows {dev!r}"
    assert EXIT_CODES_HELP in out, f"gepa {' '.join(command)} --help does not list the exit codes"
    assert len(out.splitlines()[0]) <= 200, "the field flags are one usage item"


# The table every --help ends with (and the README's "Exit codes" section lists).
EXIT_CODES_HELP = """exit codes:
  0      done
  1      a non-finite training loss or evaluation (nothing was recorded as a result)
  2      usage or config error: a bad flag, value or path (nothing was written)
  3      data error: a damaged or inconsistent shard, manifest, tokenizer, checkpoint, weights or artifact
  4      I/O or lock: disk full, read-only, permission, run dir in use, hub unreachable (retry later)
  5      gepa reproduce: a notebook failed (the others ran; each failure is listed)
  128+N  stopped by signal N (training left a checkpoint: rerun the same command); 141 = stdout closed
"""


def test_gepa_help_and_the_readme_list_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert EXIT_CODES_HELP in capsys.readouterr().out
    readme = (PKG.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n### Exit codes\n") + 1:].split("\n#")[0]
    for row in EXIT_CODES_HELP.splitlines()[1:]:
        code = row.split()[0]
        assert f"| {code} |" in section, f"README's Exit codes section lacks {code}"


def test_a_keyboard_interrupt_is_one_line_and_130(monkeypatch, capsys):
    import gepalib.cli.info as info_cli

    def boom(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info_cli, "cmd_info", boom)
    assert cli.main(["info", "tiny"]) == 130
    assert capsys.readouterr().err.strip() == "gepa info: interrupted (SIGINT)"


def test_train_help_lists_every_config_field_by_section(capsys, monkeypatch):
    from gepalib import config as C

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    for sec in C.SECTIONS:
        assert f"{sec} fields:" in lines
    for name in C.FIELD_INDEX:
        assert any(ln.lstrip().startswith(f"--{name.replace('_', '-')} ") for ln in lines), name
    row = next(ln for ln in lines if ln.lstrip().startswith("--warmdown "))
    assert row.split() == "--warmdown INT linear decay to zero over the last `warmdown` steps [8000]".split()
    row = next(ln for ln in lines if ln.lstrip().startswith("--mlp-act "))
    assert "star_relu2 | relu2 | leaky_relu2 [star_relu2]" in row
    assert out.index("model fields:") < out.index("--num-layers INT") < out.index("train fields:")
    assert "[--FIELD VALUE ...]" in lines[0] and "--num-layers" not in lines[0]


@pytest.mark.parametrize("flag, value, msg", [
    ("--grad-clip", "-1", "grad_clip must be >= 0, got -1.0"),
    ("--warmdown", "99999", "warmdown=99999 is larger than steps=600"),
    ("--eval-stride", "100000", "eval_stride=100000 is larger than the evaluation sequence length 256"),
    ("--micro-batch-tokens", "16384", "micro_batch_tokens=16384 is larger than batch_tokens=8192"),
    ("--batch-tokens", "12288", "batch_tokens=12288 is not a multiple of micro_batch_tokens=8192"),
])
def test_train_rejects_bad_values_before_the_run_dir_exists(tmp_path, capsys, flag, value, msg):
    rd = tmp_path / "run"
    assert cli.main(["train", "--preset", "tiny", "--run-dir", str(rd), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gepa train: error: ") and msg in err and len(err.strip().splitlines()) == 1
    assert not rd.exists()


def test_cli_overrides_no_private_argparse_method():
    """The help layout uses argparse's public API: no subclass in gepalib/cli defines an
    underscore method of argparse's (``_format_usage`` and the like)."""
    import argparse
    private = {n for k in (argparse.HelpFormatter, argparse.ArgumentParser) for n in dir(k) if n.startswith("_")
               and not n.startswith("__")}
    bad = []
    for p in (PKG / "cli").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bad += [f"{p.name}:{node.name}.{f.name}" for f in node.body
                        if isinstance(f, ast.FunctionDef) and f.name in private]
    assert not bad, bad
