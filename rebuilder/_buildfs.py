"""A build tree on its own size-bounded filesystem (ARCHITECTURE §2.5).

When the node runs as root, ``mount_bounded`` puts the build tree on an ext4 image of exactly
the disk limit, loop-mounted ``nosuid,nodev`` at the tree's path. The kernel then refuses every
write past the limit (``ENOSPC``), whatever the build does to its directories' permissions, and
the sandbox's mount table shows the tree as the root of a filesystem rather than a host path.
The image is sparse: it takes the space the build writes, no more. ``unmount`` detaches it and
deletes the image.

Where mounting is not possible (an unprivileged node) the tree is a plain directory and the
limit is only as good as the sandbox's periodic measurement (``sandbox.directory_size``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["filled", "is_bounded", "mount_bounded", "unmount"]

log = logging.getLogger("rebuilder.buildfs")
_MB = 1024 * 1024
_IMAGE_SUFFIX = ".ext4"
_FULL_BELOW = 256 * 1024  # free bytes under which the tree counts as full


def _image(tree: Path) -> Path:
    return tree.with_name(tree.name + _IMAGE_SUFFIX)


def can_mount() -> tuple[bool, str]:
    """Whether this process can loop-mount build trees, and if not, why."""
    if os.geteuid() != 0:
        return False, "the node does not run as root (no loop mounts)"
    missing = [t for t in ("mkfs.ext4", "tune2fs", "mount", "umount") if shutil.which(t) is None]
    if missing:
        return False, f"{', '.join(missing)} not installed"
    if not Path("/dev/loop-control").exists():
        return False, "no /dev/loop-control (loop devices unavailable)"
    return True, ""


def mount_bounded(tree: Path, max_bytes: int) -> str | None:
    """Create ``tree`` on a filesystem of ``max_bytes``; None (a plain directory) if impossible.

    Returns what bounds the tree, for the record (e.g. ``"ext4 image, 10240 MiB"``).
    """
    tree.mkdir()
    ok, _why = can_mount()
    if not ok:
        return None
    image = _image(tree)
    # ext4's own metadata (inode tables, group descriptors) comes out of the image; add it so
    # that the build gets the whole limit for its files
    size = max_bytes + max_bytes // 16 + 4 * _MB
    try:
        with open(image, "wb") as f:
            f.truncate(size)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-i", "8192",
             "-E", "lazy_itable_init=1,nodiscard", str(image)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        _mount(image, tree)
        # Give the build exactly the limit: what ext4 leaves free beyond it becomes blocks
        # reserved for root (the build runs as nobody), set while the image is not mounted.
        st = os.statvfs(tree)
        extra = st.f_bavail * st.f_frsize - max_bytes
        if extra >= st.f_frsize:
            _umount(tree)
            reserved = (st.f_bfree - st.f_bavail) + extra // st.f_frsize
            subprocess.run(
                ["tune2fs", "-r", str(reserved), str(image)],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            _mount(image, tree)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        log.warning(
            "could not mount a bounded filesystem at %s: %s %s",
            tree, e, detail.decode("utf-8", "replace").strip(),
        )  # fmt: skip
        if os.path.ismount(tree):
            subprocess.run(["umount", "-l", str(tree)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            image.unlink()
        return None
    with contextlib.suppress(OSError):
        (tree / "lost+found").rmdir()
    return f"ext4 image, {max_bytes // _MB} MiB"


def _mount(image: Path, tree: Path) -> None:
    subprocess.run(
        # noinit_itable: no background zeroing of inode tables, which in a fresh sparse image
        # read as zeros already (it would only fill the image on the host's disk)
        ["mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noatime,noinit_itable", str(image),
         str(tree)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def _umount(tree: Path) -> None:
    subprocess.run(["umount", str(tree)], check=True, capture_output=True, timeout=60)


def is_bounded(tree: Path) -> bool:
    return _image(tree).exists() and os.path.ismount(tree)


def filled(tree: Path) -> bool:
    """Whether the bounded filesystem at ``tree`` is (nearly) out of space or inodes."""
    try:
        st = os.statvfs(tree)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_BELOW or st.f_favail == 0


def unmount(tree: Path) -> None:
    """Unmount the bounded filesystem at ``tree`` (if any) and delete its image."""
    image = _image(tree)
    if os.path.ismount(tree):
        r = subprocess.run(["umount", str(tree)], capture_output=True, timeout=60, check=False)
        if r.returncode != 0:
            # something still holds it (a straggler of the sandbox): detach it lazily
            subprocess.run(["umount", "-l", str(tree)], capture_output=True, timeout=60,
                           check=False)
    if image.exists() and not os.path.ismount(tree):
        with contextlib.suppress(OSError):
            image.unlink()
