"""Copy-on-write copies of a cached base chroot (ARCHITECTURE §5.2, ``environment``).

A pinned chroot is a base (the buildd set of a suite, made once by mmdebstrap) plus the build's
pinned delta. As root, where the kernel has overlayfs, the copy is an overlay mount: the base is
the read-only lower layer and the delta lands in an upper directory of its own (a few MB to a few
hundred MB instead of a ~500 MB tree, made in milliseconds). Elsewhere the base is copied with
``cp -a --reflink=auto``: a real copy-on-write clone on btrfs or XFS, a full copy on ext4. (No
hardlink farm: a maintainer script that appends to a file would change the base through it.)

The base must never change while a copy is mounted on it; ``environment.evict_chroots`` removes
the copies before their base.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Literal

__all__ = [
    "Layout",
    "copy_base",
    "is_mounted",
    "mount_overlay",
    "overlay_available",
    "tree_size",
    "unmount",
]

Layout = Literal["overlay", "copy"]


def overlay_available() -> tuple[bool, str]:
    """Whether this process can mount overlays (root, and the kernel knows overlayfs)."""
    if os.geteuid() != 0:
        return False, "the node does not run as root"
    try:
        known = Path("/proc/filesystems").read_text()
    except OSError as e:
        return False, f"cannot read /proc/filesystems: {e}"
    if not any(line.split()[-1:] == ["overlay"] for line in known.splitlines()):
        return False, "the kernel has no overlay filesystem"
    return True, ""


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    """Mount ``lower`` (read-only) under ``upper`` (the writes) at ``target``."""
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(target)],
                       capture_output=True, timeout=60, check=False)
    if r.returncode != 0:
        raise OSError(f"mount -t overlay at {target} failed: "
                      f"{r.stderr.decode('utf-8', 'replace').strip()}")


def is_mounted(target: Path) -> bool:
    return os.path.ismount(target)


def unmount(target: Path) -> bool:
    """Unmount ``target`` if mounted; False if it is busy (then it stays mounted)."""
    if not os.path.ismount(target):
        return True
    r = subprocess.run(["umount", str(target)], capture_output=True, timeout=60, check=False)
    return r.returncode == 0 or not os.path.ismount(target)


def copy_base(base: Path, target: Path) -> None:
    """``target`` as a full copy of ``base`` (copy-on-write where the filesystem can)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(target)],
                       capture_output=True, timeout=3600, check=False)
    if r.returncode != 0:
        raise OSError(f"copying {base} failed: {r.stderr.decode('utf-8', 'replace').strip()}")


def tree_size(path: Path) -> int:
    """Bytes allocated under ``path`` (not following links, not crossing into mounts)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        kept = []
        for n in dirnames:
            p = os.path.join(dirpath, n)
            if os.path.ismount(p):
                continue
            kept.append(n)
        dirnames[:] = kept
        for n in [*dirnames, *filenames]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
    return total
