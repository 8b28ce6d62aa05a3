"""Processes, through psutil: is a pid alive, and which processes descend from one.

One liveness rule for the whole package (the launcher's kill loop and the run lock's
no-flock fallback): a pid is alive while it exists and is not a zombie (a zombie has exited
and released its files; only its exit status waits to be collected). A pid we may not
signal (another user's) still exists, so it is alive. A pid ≤ 0 names no single process
(``os.kill`` would signal a whole group): it cannot be shown dead, so it counts as alive.
"""
from __future__ import annotations

import psutil


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (module docstring)."""
    if pid <= 0:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, grandchildren, …); empty if it is gone."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


__all__ = ["pid_alive", "descendants"]
