"""gepalib.procs: the one pid-liveness rule (launcher and run lock) and the process tree."""
import os
import subprocess
import sys
import time

from gepalib import procs, runlock
from gepalib.run.supervise import _alive, _descendants


def test_pid_alive_live_dead_zombie_and_no_pid():
    assert procs.pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while procs.pid_alive(child.pid) and time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        time.sleep(0.05)
    assert not procs.pid_alive(child.pid), "a zombie counts as gone"
    child.wait()
    assert not procs.pid_alive(child.pid)
    assert procs.pid_alive(-1) and procs.pid_alive(0)  # no single process named: cannot be shown dead
    assert _alive is procs.pid_alive and runlock.pid_alive is procs.pid_alive  # one rule, not twins
    assert _descendants(os.getpid()) == procs.descendants(os.getpid())


def test_descendants_reaches_a_grandchild_in_its_own_session():
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " start_new_session=True); print(p.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(parent.stdout.readline())
        assert grandchild in procs.descendants(parent.pid)
        assert procs.descendants(os.getpid()) and parent.pid in procs.descendants(os.getpid())
    finally:
        for pid in procs.descendants(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
    assert procs.descendants(parent.pid) == []
