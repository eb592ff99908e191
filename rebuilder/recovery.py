"""Recovering by itself: a full state filesystem pauses the workers, leftovers are removed.

``DiskGuard`` decides whether the workers may take a job: not while the filesystem holding the
state directory has less than ``node.min_free_mb`` free, nor after a write failed with ENOSPC or
SQLite's "database or disk is full", until space returns. ``clean_leftovers`` removes what an
interrupted attempt left under ``builds/``, ``logs/`` and ``reports/``: everything there that no
job or build row explains::

    guard = DiskGuard(config.node.state_dir, config.node.min_free_mb * MiB)
    if guard.check().paused: ...            # statvfs only; cheap
    removed = await clean_leftovers(config, store)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rebuilder.config import Config
from rebuilder.db import Store

__all__ = [
    "DiskGuard",
    "DiskStatus",
    "clean_leftovers",
    "describe_storage_error",
    "free_bytes",
    "is_disk_full",
    "killed_from_outside",
    "oom_kills",
    "remove_tree",
]

log = logging.getLogger("rebuilder.recovery")
MiB = 1024 * 1024
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13  # SQLITE_FULL, "database or disk is full"
_WORK_DIR = re.compile(r"([0-9]{1,18})-([0-9]{1,9})")


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) says the filesystem is full."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if isinstance(e, sqlite3.Error) and (
            getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL
            or "database or disk is full" in str(e)
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed since boot (None: unknown)."""
    try:
        with open("/proc/vmstat", "rb") as f:
            for line in f:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


# The sandbox's exit status when the command in it died of one of these: 128 + the signal
# (bubblewrap's convention). The node stops a sandbox only by killing bwrap for a limit, which the
# sandbox reports as ``limit``; so these come from someone else (an operator, the OOM killer).
_OUTSIDE_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def killed_from_outside(returncode: int | None, oom_before: int | None,
                        oom_after: int | None, build_oom_kills: int | None = None) -> str | None:
    """Why a sandbox that ended with ``returncode`` (no limit of ours stopped it) was stopped
    from outside, or None when its status is the build's own.

    An OOM kill is told from the build's own cgroup when it has one: ``build_oom_kills``, the
    build's processes an OOM killer took while it was within its own memory limit
    (``SandboxResult.outside_oom_kills``), so that another build stopped at its own limit
    changes nothing here. Without a memory cgroup per build (``build_oom_kills`` None: the
    memory limit is advisory) only the host-wide counter is left, ``oom_kills()`` before and
    after (``oom_before``, ``oom_after``): any OOM kill on the host meanwhile, another build's
    included, then makes a failure an interruption (retried, not signed; the give-up rule
    bounds the retries)."""
    if returncode is None or returncode == 0:
        return None
    if returncode < 0:
        return f"the sandbox was killed by {_signal_name(-returncode)} from outside the node"
    if returncode - 128 in _OUTSIDE_SIGNALS:
        return f"it was killed by {_signal_name(returncode - 128)} from outside the node"
    if build_oom_kills is not None:
        if build_oom_kills > 0:
            return (f"the kernel's OOM killer killed {build_oom_kills} of its process(es) while"
                    " it was within its memory limit (the host ran out of memory)")
        return None
    if oom_before is not None and oom_after is not None and oom_after > oom_before:
        return (f"the kernel's OOM killer killed {oom_after - oom_before} process(es) on the"
                " host meanwhile (this node has no memory cgroup per build to tell whose)")
    return None


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True)
class DiskStatus:
    free_bytes: int
    min_free_bytes: int
    paused: bool
    reason: str | None  # why the workers take no job, when paused

    def to_dict(self) -> dict[str, Any]:
        return {"free_bytes": self.free_bytes, "min_free_bytes": self.min_free_bytes,
                "paused": self.paused, "reason": self.reason}


def describe_storage_error(exc: BaseException, state_dir: Path | None) -> str:
    """One line for an OS or database error, saying so when the state filesystem is full
    (SQLite then often says only "disk I/O error")."""
    text = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.filename \
        else str(exc) or type(exc).__name__
    full = is_disk_full(exc)
    if not full and state_dir is not None:
        with contextlib.suppress(OSError):
            full = free_bytes(state_dir) < MiB
    if full and state_dir is not None:
        return (f"the filesystem holding {state_dir} is full ({text}); free space there, then"
                " run the command again")
    return f"{type(exc).__name__}: {text}"


class DiskGuard:
    """Whether the state filesystem has room for another job; logs each change once.

    Below 1 MiB free it is always full, whatever ``min_free_bytes`` says.
    """

    def __init__(self, state_dir: Path, min_free_bytes: int) -> None:
        self.state_dir = state_dir
        self.min_free_bytes = max(MiB, min_free_bytes)
        self._full_error: str | None = None  # a write failed: paused until a probe succeeds
        self._paused_reason: str | None = None

    def note_full(self, what: str) -> None:
        """A write failed because the disk is full: pause until space returns."""
        self._full_error = what
        self._set(self.status())

    def status(self) -> DiskStatus:
        """The current state from one statvfs (never raises; an unreadable state dir pauses)."""
        try:
            free = free_bytes(self.state_dir)
        except OSError as e:
            return DiskStatus(0, self.min_free_bytes, True,
                              f"cannot read the free space of {self.state_dir}: {e.strerror}")
        if free < self.min_free_bytes:
            return DiskStatus(free, self.min_free_bytes, True,
                              f"the state filesystem has {free / MiB:.1f} MiB free, below"
                              f" the floor of {self.min_free_bytes // MiB} MiB"
                              " (node.min_free_mb)")
        if self._full_error is not None:
            return DiskStatus(free, self.min_free_bytes, True,
                              f"the state filesystem is full ({self._full_error})")
        return DiskStatus(free, self.min_free_bytes, False, None)

    def check(self) -> DiskStatus:
        """``status()``; after a full-disk error, also a small write probe to see if it passed."""
        s = self.status()
        if (self._full_error is not None and s.free_bytes >= self.min_free_bytes
                and _probe(self.state_dir)):
            self._full_error = None
            s = self.status()
        self._set(s)
        return s

    def _set(self, s: DiskStatus) -> None:
        if s.paused and self._paused_reason is None:
            log.error("not taking jobs: %s; resuming by itself when space returns", s.reason)
        elif not s.paused and self._paused_reason is not None:
            log.warning("taking jobs again: the state filesystem has %d MiB free",
                        s.free_bytes // MiB)
        self._paused_reason = s.reason if s.paused else None


def _probe(state_dir: Path, size: int = MiB) -> bool:
    """Can ``size`` bytes be written and synced under ``state_dir``? (removed again)"""
    path = state_dir / f".space-probe-{os.getpid()}"
    try:
        with path.open("wb") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` (a killed node leaves its builds' bounded trees
    mounted: rebuilder/_buildfs.py), deepest first."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    root = os.path.realpath(path)
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Remove ``path`` entirely, also where a build left read-only directories or a mounted
    build tree (unmounted first)."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        from rebuilder._buildfs import unmount

        for point in _mounts_under(path):
            unmount(point)
    if not path.is_dir() or path.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return

    def onerror(func: Any, p: str, info: Any) -> None:  # Python 3.11: no onexc yet
        if isinstance(info[1], FileNotFoundError):
            return
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)

    shutil.rmtree(path, onerror=onerror)


async def clean_leftovers(config: Config, store: Store) -> list[Path]:
    """Remove entries of builds/, logs/ and reports/ that no job or build row explains.

    A build directory ``<job>-<attempt>`` is explained while that job is running that attempt;
    a log or a report while a stored build names it. Call it at start-up, after the re-queue,
    when nothing of this node is building. Returns what was removed.
    """
    node = config.node
    running = {(j.id, j.attempts) for j in await store.running_jobs()}
    referenced = await store.referenced_files()
    started = time.monotonic()

    def sweep() -> list[Path]:
        removed: list[Path] = []
        if node.builds_dir.is_dir():
            for entry in node.builds_dir.iterdir():
                m = _WORK_DIR.fullmatch(entry.name)
                if m and (int(m.group(1)), int(m.group(2))) in running:
                    continue
                remove_tree(entry)
                removed.append(entry)
        for d in (node.logs_dir, node.reports_dir):
            if not d.is_dir():
                continue
            for entry in d.iterdir():
                if str(entry.relative_to(node.state_dir)) in referenced:
                    continue
                remove_tree(entry)
                removed.append(entry)
        for probe in node.state_dir.glob(".space-probe-*"):
            remove_tree(probe)
            removed.append(probe)
        return removed

    removed = await asyncio.to_thread(sweep)
    if removed:
        log.warning("removed %d leftover(s) of interrupted attempts in %.1fs: %s", len(removed),
                    time.monotonic() - started,
                    ", ".join(str(p.relative_to(node.state_dir)) for p in removed[:10])
                    + (" ..." if len(removed) > 10 else ""))
    return removed
