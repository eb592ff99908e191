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


def _session_alive(pytest_dir: Path) -> bool:
    """Whether another, running pytest session owns ``pytest_dir`` (a numbered ``pytest-N``
    directory: pytest writes its pid to ``.lock`` there and removes it when it exits)."""
    import os

    try:
        pid = int((pytest_dir / ".lock").read_text().strip())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return False  # our own session's: ours to unmount
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unmount_stale_build_trees(given: str | None, default: Path | None = None) -> None:
    """Mounts a killed node or test left (bounded build trees, rebuilder/_buildfs.py; overlay
    chroots, rebuilder/debian/_chrootfs.py) under pytest's temporary directories: unmounted, so that
    pytest can remove old runs' directories. Never those of another pytest session still running
    (several sessions share the default root): unmounting a build tree under a running build
    hides its outputs, and the rebuild then finds no .deb to collect."""
    import getpass
    import subprocess
    import tempfile

    if default is None:
        default = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
    roots = [str(default)] + ([str(Path(given).absolute())] if given else [])
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = [f.split()[4] for f in lines if len(f.split()) > 4]
    for point in sorted((p for p in points if any(p.startswith(r + "/") for r in roots)),
                        reverse=True):
        if point.startswith(str(default) + "/"):
            session_dir = default / Path(point).relative_to(default).parts[0]
            if _session_alive(session_dir):
                continue
        subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=60)


def pytest_sessionstart(session: pytest.Session) -> None:
    unmount_stale_build_trees(session.config.option.basetemp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    unmount_stale_build_trees(session.config.option.basetemp)
    # the mmdebstrap tests' chroot cache: no overlay left mounted when CI archives it (the
    # merged view would be archived too); one a running session's build holds stays
    import os

    from rebuilder.debian.environment import unmount_idle

    chroots = Path(os.environ.get("RQ_CHROOT_CACHE")
                   or Path.home() / ".cache" / "repro-quorum" / "chroots")
    if chroots.is_dir():
        unmount_idle(chroots)
