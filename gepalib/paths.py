"""Where relative paths resolve: the package's own defaults under the project root
(``$GEPA_HOME`` or the checkout), paths a user types from the current directory (docs/runs.md)."""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """Root against which relative data/run paths resolve.

    ``$GEPA_HOME`` if set; else the source checkout (when the package is
    installed editable from a repo with a ``pyproject.toml``); else the cwd.
    """
    env = os.environ.get("GEPA_HOME")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd().resolve()


def resolve_path(p: str | os.PathLike) -> Path:
    """Absolute paths pass through; relative ones resolve under :func:`project_root`.

    For the package's own defaults (``data/sotu_sp1024``, ``runs``) and the Python API; the
    ``gepa`` command line first makes the paths a user types absolute (:func:`user_path`)."""
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else project_root() / p


def user_path(p: str | os.PathLike, *, under_root: bool = False) -> Path:
    """A path typed on the command line: ``~`` expanded, a relative one taken from the current
    directory, as every command-line tool does. ``under_root``: a relative one is returned
    relative to :func:`project_root` when it lies under a fixed root ($GEPA_HOME or the
    checkout), so a config.json written in the checkout keeps the spelling it always had (and
    its runs' fingerprints); an absolute one is kept as typed."""
    e = Path(os.path.expanduser(str(p)))
    if e.is_absolute():
        return e
    a = Path(os.path.abspath(e))
    fixed = os.environ.get("GEPA_HOME") or (Path(__file__).resolve().parents[1] / "pyproject.toml").exists()
    if under_root and fixed:
        root = project_root()
        if a == root or root in a.parents:
            return a.relative_to(root)
    return a
