from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import (
    become_subreaper,
    children,
    descendants,
    reap_orphans,
    stop_processes,
)
from tests.support import Mosquitto, running_mosquitto

become_subreaper()  # a test's orphaned grandchildren come back to us, not to PID 1
LEAK_GRACE_S = 10.0  # a process a test stopped may take a moment to exit (chromium's helpers)


def _session_helper(pid: int) -> bool:
    """multiprocessing's resource tracker and forkserver (the index worker's parent,
    rebuilder/debian/indexproc.py): one per session by design, each exits with it."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(helper in cmdline for helper in (b"multiprocessing.resource_tracker",
                                                b"multiprocessing.forkserver"))


@pytest.fixture(autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    """Every process a test started is gone when it ends, whatever its outcome; the leftovers
    are stopped (SIGTERM, then SIGKILL) and the test fails naming them."""
    before = set(descendants())
    keep = before | children()  # a fixture's process that exits meanwhile is its own to reap
    yield
    reap_orphans(keep)
    deadline = time.monotonic() + LEAK_GRACE_S
    while (leaked := {p: n for p, n in descendants().items()
                      if p not in before and not _session_helper(p)}) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    if leaked:
        stop_processes(leaked)
        reap_orphans(keep)
        pytest.fail(f"the test left {len(leaked)} process(es) running: "
                    + ", ".join(f"{n}[{p}]" for p, n in sorted(leaked.items())), pytrace=False)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto broker on a free port, for this test only."""
    d = tmp_path / "mosquitto"
    d.mkdir()
    with running_mosquitto(d) as broker:
        yield broker


def _unmount_stale_build_trees() -> None:
    """Build trees a killed node left mounted (rebuilder/_buildfs.py) under pytest's temporary
    directories: unmounted, so that pytest can remove old runs' directories."""
    import getpass
    import subprocess
    import tempfile

    root = str(Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}")
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = [f.split()[4] for f in lines if len(f.split()) > 4]
    for point in sorted((p for p in points if p.startswith(root + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=60)


def pytest_sessionstart(session: pytest.Session) -> None:
    _unmount_stale_build_trees()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _unmount_stale_build_trees()
