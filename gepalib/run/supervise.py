"""Supervising a launched process: run a command in a session of its own, stream its output line
by line (and keep its tail), and on any interruption stop its whole process tree.

:func:`run_streamed` echoes each line (torchrun's ``[default0]:`` prefix dropped), appends it to
a console log and returns (exit code, the last :data:`TAIL_LINES` lines). Any exception while
it waits -- KeyboardInterrupt from an interrupted notebook cell included -- sends SIGTERM to the
process group (torchrun forwards it; the trainer checkpoints and exits), SIGKILL to whatever
is left of the group and of its descendants after :data:`KILL_GRACE_S`, and is re-raised.
:func:`rank_error_tails` collects the per-rank logs of a failed launch that hold an error.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from gepalib.procs import descendants, pid_alive

TAIL_LINES = 40
KILL_GRACE_S = 15.0


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``. torchrun starts its workers in sessions of their own,
    so a process-group signal alone does not reach them."""
    return descendants(pid)


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        for kill in (os.killpg, os.kill):  # its group if it leads one, else the process
            try:
                kill(pid, sig)
                break
            except (ProcessLookupError, PermissionError):
                continue


def _kill_group(proc: subprocess.Popen, grace: float = KILL_GRACE_S) -> None:
    """Stop the launched process tree: SIGTERM to the launcher's process group (torchrun
    forwards it to its workers, which checkpoint and exit); after ``grace`` seconds SIGKILL
    whatever is left of the group and of its descendants (workers run in their own sessions)."""
    tree = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not any(_alive(p) for p in tree):
            break
        time.sleep(0.1)
    _signal_all([p for p in (proc.pid, *tree) if _alive(p)], signal.SIGKILL)
    proc.wait()


_alive = pid_alive  # a zombie child of a dead torchrun is as good as gone


def _strip_rank_prefix(line: str) -> str:
    """torchrun's tee prefixes lines with ``[default0]:``; drop it for display."""
    if line.startswith("[default") and "]:" in line[:20]:
        return line.split("]:", 1)[1]
    return line


def run_streamed(cmd: Sequence[str], *, console_log: Path | None = None, stream: bool = True,
                 env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 on_line: Callable[[str], None] | None = None, kill_grace: float = KILL_GRACE_S) -> tuple[int, str]:
    """Run ``cmd`` in a new session; echo its output line by line (``stream``), append it to
    ``console_log``; return (exit code, last :data:`TAIL_LINES` lines).

    Any exception while waiting -- KeyboardInterrupt from an interrupted notebook cell
    included -- kills the whole process group and is re-raised.
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    logf = None
    if console_log is not None:
        console_log.parent.mkdir(parents=True, exist_ok=True)
        logf = open(console_log, "a", encoding="utf-8")
        logf.write(f"$ {' '.join(map(str, cmd))}\n")
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True, text=True,
                            bufsize=1, errors="replace")
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = _strip_rank_prefix(raw.rstrip("\n"))
            tail.append(line)
            if logf is not None:
                logf.write(line + "\n")
                logf.flush()
            if stream:
                print(line, flush=True)
            if on_line is not None:
                on_line(line)
        rc = proc.wait()
    except BaseException:
        _kill_group(proc, kill_grace)
        raise
    finally:
        if logf is not None:
            logf.close()
    return rc, "\n".join(tail)


def rank_error_tails(log_dir: Path, since: float, n: int = 15) -> str:
    """Tails of the per-rank logs written by this launch that contain an error."""
    parts = []
    for p in sorted(log_dir.glob("**/*.log")):
        try:
            if p.stat().st_mtime < since:
                continue
            lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        if any(("Error" in ln or "error:" in ln or "Traceback" in ln) for ln in lines):
            parts.append(f"--- {p.relative_to(log_dir)} ---\n" + "\n".join(lines[-n:]))
    return "\n".join(parts)
