"""The chroot cache's entries and their eviction (``environment`` makes the entries).

Under the cache directory: ``base-<key>/`` (a bootstrapped buildd tree in ``root/``),
``chroot-<key>/`` (one pin set: an overlay of its base, or a full copy, at ``root/``) and
``packages/`` (the shared .debs). Each entry has a lock file ``.<name>.lock`` beside it: shared
while a build uses it, exclusive while it is made or removed. ``evict_chroots`` keeps the whole
cache under a size cap, least recently used first; ``unmount_idle`` unmounts overlays no build
holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from rebuilder.debian import _chrootfs

__all__ = ["evict_chroots", "unmount_idle"]

_READY = ".repro-quorum-ready"  # mtime: when the entry was last used
_SIZE = ".repro-quorum-size"
_BASE = ".repro-quorum-base"  # in a chroot entry: the name of its base
_LAYOUT = ".repro-quorum-layout"
_DELTA = ".repro-quorum-delta"  # in a chroot entry: how many pins were installed on the base
_PACKAGES = ".repro-quorum-packages.json"  # in a base entry: what it has installed


def _tree_size(path: Path) -> int:
    return _chrootfs.tree_size(path)


def _entry_size(d: Path) -> int:
    try:
        return int((d / _SIZE).read_text())
    except (OSError, ValueError):
        return _tree_size(d)


def _remove_entry(cache_dir: Path, d: Path) -> bool:
    """Unmount and remove one cached entry whose lock the caller holds; False if it is busy."""
    if not _chrootfs.unmount(d / "root"):
        return False
    doomed = cache_dir / f".evict-{d.name}"
    d.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def evict_chroots(cache_dir: Path, cap_bytes: int, keep: Iterable[str] = ()) -> list[str]:
    """Remove the least recently used entries (chroots, bases, cached packages) until the cache
    holds at most ``cap_bytes``; never one named in ``keep`` nor one a build holds (its lock is
    taken without waiting). A base goes only with every chroot made on it (an overlay's lower
    layer must not change under it), and counts as used when one of them is. The names removed."""
    kept = set(keep)
    chroots: dict[Path, tuple[float, int, str]] = {}
    for d in cache_dir.glob("chroot-*"):
        ready = d / _READY
        if ready.is_file():
            with contextlib.suppress(OSError):
                base = (d / _BASE).read_text().strip() if (d / _BASE).is_file() else ""
                chroots[d] = (ready.stat().st_mtime, _entry_size(d), base)
    entries: list[tuple[float, Path, int]] = [(t, d, n) for d, (t, n, _) in chroots.items()]
    for d in cache_dir.glob("base-*"):
        ready = d / _READY
        if ready.is_file():
            used = max([ready.stat().st_mtime, *(t for t, _, b in chroots.values()
                                                 if b == d.name)])
            entries.append((used, d, _entry_size(d)))
    packages = cache_dir / "packages"
    debs = [p for p in [*packages.glob("*.deb"), *packages.glob("apt/*.deb")] if p.is_file()]
    entries += [(p.stat().st_mtime, p, p.stat().st_blocks * 512) for p in debs]
    total = sum(size for _, _, size in entries)
    removed: list[str] = []
    gone: set[Path] = set()
    for _, d, size in sorted(entries, key=lambda e: e[0]):
        if total <= cap_bytes:
            break
        if d.name in kept or d in gone:
            continue
        if d.suffix == ".deb":
            with _try_lock(cache_dir / ".packages.lock") as ok:
                if ok:
                    d.unlink(missing_ok=True)
                    total -= size
                    removed.append(d.name)
            continue
        dependents = [c for c, (_, _, b) in chroots.items() if b == d.name and c not in gone]
        if any(c.name in kept for c in dependents):
            continue
        freed = _evict_group(cache_dir, d, dependents)
        if freed is None:
            continue
        for c in dependents:
            total -= chroots[c][1]
            removed.append(c.name)
            gone.add(c)
        total -= size
        removed.append(d.name)
        gone.add(d)
    return removed


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _evict_group(cache_dir: Path, d: Path, dependents: list[Path]) -> bool | None:
    """Remove ``d`` after its dependents (chroots on a base), all or nothing; None if one of
    them is in use."""
    with contextlib.ExitStack() as stack:
        for entry in [*dependents, d]:
            lock = stack.enter_context(open(cache_dir / f".{entry.name}.lock", "w"))
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # a build is using it, or one is preparing it
            if not (entry / _READY).is_file():
                return None
        for entry in [*dependents, d]:
            if not _remove_entry(cache_dir, entry):
                return None
    return True


def unmount_idle(cache_dir: Path) -> list[str]:
    """Unmount every overlay chroot of the cache that no build holds (the next build using one
    mounts it again), e.g. before the cache directory is archived; the names unmounted."""
    done = []
    for d in sorted(cache_dir.glob("chroot-*")):
        if not _chrootfs.is_mounted(d / "root"):
            continue
        with _try_lock(cache_dir / f".{d.name}.lock") as ok:
            if ok and _chrootfs.unmount(d / "root"):
                done.append(d.name)
    return done
