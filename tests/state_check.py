"""What a node's state directory may hold: every file is explained by the config, the database
or a job row. ``unexplained(state_dir)`` lists the rest (leftovers of interrupted attempts).
``small_filesystem`` mounts a real tmpfs of a few MiB and ``fill`` fills it, for full-disk tests.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

_TOP = {"config.toml", "state.db", "state.db-wal", "state.db-shm", "state.db-journal", "keys",
        "cache", "builds", "logs", "reports",
        "log",  # the transparency log's tiles and checkpoint (rebuilder/tlog.py)
        "sandbox-limits.json"}  # which build limits the kernel holds (rebuilder/limits.py)
_WORK = re.compile(r"([0-9]+)-([0-9]+)")


def unexplained(state_dir: Path) -> list[str]:
    """Paths (relative to ``state_dir``) that no job or build row explains."""
    conn = sqlite3.connect(f"file:{state_dir / 'state.db'}?mode=ro", uri=True, timeout=10)
    try:
        running = {(int(r[0]), int(r[1])) for r in conn.execute(
            "SELECT id, attempts FROM jobs WHERE state = 'running'")}
        referenced = {str(r[0]) for r in conn.execute(
            "SELECT log_path FROM builds WHERE log_path IS NOT NULL"
            " UNION SELECT report_html FROM outputs WHERE report_html IS NOT NULL"
            " UNION SELECT report_txt FROM outputs WHERE report_txt IS NOT NULL")}
    finally:
        conn.close()
    found: list[str] = []
    for entry in sorted(state_dir.iterdir()):
        if entry.name not in _TOP:
            found.append(entry.name)
    builds = state_dir / "builds"
    if builds.is_dir():
        for entry in sorted(builds.iterdir()):
            m = _WORK.fullmatch(entry.name)
            if not m or (int(m.group(1)), int(m.group(2))) not in running:
                found.append(f"builds/{entry.name}")
    for d in ("logs", "reports"):
        if (state_dir / d).is_dir():
            for entry in sorted((state_dir / d).iterdir()):
                rel = f"{d}/{entry.name}"
                if rel not in referenced:
                    found.append(rel)
    return found


@contextlib.contextmanager
def small_filesystem(path: Path, size_mb: int) -> Iterator[Path]:
    """A real tmpfs of ``size_mb`` MiB mounted at ``path`` (root only; the test is skipped
    otherwise), unmounted whatever the test's outcome."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs",
                           str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path, leave_bytes: int = 0) -> Path:
    """Write a file in ``directory`` until its filesystem has at most ``leave_bytes`` free
    (0: until the kernel says ENOSPC). Remove the returned file to give the space back."""
    target = directory / f"filler-{len(list(directory.glob('filler-*')))}"
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    budget = max(0, free - leave_bytes) if leave_bytes else None
    chunk = b"\0" * 65536
    written = 0
    with target.open("wb", buffering=0) as f:
        try:
            while budget is None or written < budget:
                n = len(chunk) if budget is None else min(len(chunk), budget - written)
                written += f.write(chunk[:n]) or 0
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return target
