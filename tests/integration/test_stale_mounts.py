"""The test session's clean-up of mounts left under pytest's temporary directories leaves alone
those of another session still running (issue 14: a session starting while the real-packages
rebuild ran unmounted its bounded build tree, and the rebuild found no .deb to collect); and
the chroot cache's overlays are unmounted when idle, never under a build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rebuilder import _buildfs
from rebuilder.debian import _chrootfs
from rebuilder.debian.environment import unmount_idle
from tests.conftest import unmount_stale_build_trees

needs_loop = pytest.mark.skipif(not _buildfs.can_mount()[0], reason=_buildfs.can_mount()[1])


@needs_loop
def test_a_running_sessions_build_tree_stays_mounted_a_dead_ones_is_unmounted(
    tmp_path: Path,
) -> None:
    root = tmp_path / "pytest-of-someone"
    running, dead = root / "pytest-7", root / "pytest-3"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (running / "t0").mkdir(parents=True)
        (running / ".lock").write_text(str(other.pid))
        (dead / "t0").mkdir(parents=True)
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        (dead / ".lock").write_text(str(gone.pid))
        trees = [running / "t0" / "tree", dead / "t0" / "tree"]
        for tree in trees:
            assert _buildfs.mount_bounded(tree, 8 * 2**20) is not None
        (trees[0] / "hello_1_amd64.deb").write_bytes(b"built")

        unmount_stale_build_trees(None, default=root)
        assert os.path.ismount(trees[0])  # its build is still running
        assert (trees[0] / "hello_1_amd64.deb").read_bytes() == b"built"
        assert not os.path.ismount(trees[1])

        other.kill()
        other.wait()
        unmount_stale_build_trees(None, default=root)
        assert not os.path.ismount(trees[0])  # that session is gone now
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        for tree in (running / "t0" / "tree", dead / "t0" / "tree"):
            _buildfs.unmount(tree)


@needs_loop
def test_the_given_basetemp_is_cleaned_whoever_owned_it(tmp_path: Path) -> None:
    """``--basetemp`` is this session's alone (pytest empties it at start): all of it goes."""
    tree = tmp_path / "given" / "t0" / "tree"
    tree.parent.mkdir(parents=True)
    assert _buildfs.mount_bounded(tree, 8 * 2**20) is not None
    try:
        unmount_stale_build_trees(str(tmp_path / "given"), default=tmp_path / "elsewhere")
        assert not os.path.ismount(tree)
    finally:
        _buildfs.unmount(tree)


@pytest.mark.skipif(not _chrootfs.overlay_available()[0], reason=_chrootfs.overlay_available()[1])
def test_idle_overlay_chroots_are_unmounted_one_in_use_stays(tmp_path: Path) -> None:
    import fcntl

    base = tmp_path / "base-b" / "root"
    (base / "usr").mkdir(parents=True)
    (base / "usr" / "base-file").write_text("from the base\n")
    entries = [tmp_path / "chroot-idle", tmp_path / "chroot-used"]
    try:
        for e in entries:
            _chrootfs.mount_overlay(base, e / "upper", e / "work", e / "root")
            assert (e / "root" / "usr" / "base-file").read_text() == "from the base\n"
        (entries[1] / "root" / "usr" / "delta").write_text("pinned\n")
        assert (entries[1] / "upper" / "usr" / "delta").is_file()  # the write went up
        assert not (base / "usr" / "delta").exists()
        with open(tmp_path / ".chroot-used.lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_SH)  # a build holds it
            assert unmount_idle(tmp_path) == ["chroot-idle"]
        assert not os.path.ismount(entries[0] / "root")
        assert os.path.ismount(entries[1] / "root")
    finally:
        for e in entries:
            _chrootfs.unmount(e / "root")
