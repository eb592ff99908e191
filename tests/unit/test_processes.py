"""The test suite's process hygiene (tests/processes.py): orphans come back to the session and
are found, children die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.processes import descendants, stop_processes
from tests.support import wait_until

_MARK = "6211"


def _sleepers() -> dict[int, str]:
    return {p: n for p, n in descendants().items() if n == "sleep"
            and _MARK.encode() in _cmdline(p)}


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:  # it exited meanwhile
        return b""


def test_an_orphaned_grandchild_is_found_and_stopped() -> None:
    # the shell exits at once; its background sleep is orphaned and re-parented to us
    subprocess.run(["sh", "-c", f"sleep {_MARK}0 >/dev/null 2>&1 &"], check=True, timeout=10)
    wait_until(lambda: bool(_sleepers()), 10, "the orphan to show among our descendants")
    orphans = _sleepers()
    assert all(os.getppid() != p for p in orphans)
    stop_processes(orphans, grace=5)
    wait_until(lambda: not _sleepers(), 10, "the orphan to be gone")


def test_die_with_parent_stops_the_child_of_a_killed_process() -> None:
    code = ("import subprocess, sys, time; from tests.processes import die_with_parent; "
            f"subprocess.Popen(['sleep', '{_MARK}1'], preexec_fn=die_with_parent); "
            "print('started', flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "started"
        wait_until(lambda: bool(_sleepers()), 10, "the grandchild")
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: not _sleepers(), 10, "the grandchild to die with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
        stop_processes(_sleepers())
