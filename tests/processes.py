"""No test leaks a process: the test session is a child subreaper (orphaned descendants of a
test come back to it), and after each test every new descendant still alive is stopped and
reported. ``die_with_parent`` makes a child exit when the test process dies (SIGKILL included).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import time
from pathlib import Path

__all__ = [
    "become_subreaper",
    "catches",
    "children",
    "descendants",
    "die_with_parent",
    "reap_orphans",
    "stop_processes",
]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def become_subreaper() -> bool:
    """Orphaned descendants re-parent to this process instead of PID 1 (Linux)."""
    return _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the process that started it dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, state, command name) of ``pid``, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], name


def descendants(root: int | None = None) -> dict[int, str]:
    """Live (not zombie) descendants of ``root`` (default: this process): pid -> name."""
    root = os.getpid() if root is None else root
    parents: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        st = _stat(int(p.name))
        if st is None or st[1] == "Z":
            continue
        parents.setdefault(st[0], []).append(int(p.name))
        names[int(p.name)] = st[2]
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        for child in parents.get(stack.pop(), []):
            found[child] = names[child]
            stack.append(child)
    return found


def catches(pid: int, sig: int) -> bool:
    """Whether ``pid`` has a handler for ``sig`` now (``SigCgt`` of /proc/<pid>/status): until
    then the signal's default action applies, e.g. SIGTERM kills it (status -15)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next((int(line.split()[1], 16) for line in text.splitlines()
                 if line.startswith("SigCgt:")), 0)
    return bool(mask >> (sig - 1) & 1)


def children() -> set[int]:
    """Direct children of this process, zombies included."""
    me = os.getpid()
    return {int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and (st := _stat(int(p.name))) is not None and st[0] == me}


def reap_orphans(keep: set[int]) -> int:
    """Reap exited children of this process not in ``keep``: orphans re-parented to the
    subreaper (bwrap's helpers, say) that nobody else will wait for. Returns how many."""
    me = os.getpid()
    reaped = 0
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in keep:
            continue
        st = _stat(int(p.name))
        if st is not None and st[0] == me and st[1] == "Z":
            try:
                if os.waitpid(int(p.name), os.WNOHANG)[0]:
                    reaped += 1
            except ChildProcessError:
                continue
    return reaped


def stop_processes(pids: dict[int, str], grace: float = 5.0) -> None:
    """SIGTERM, then after ``grace`` seconds SIGKILL, each of ``pids`` still alive."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z"
