"""The build environment a buildinfo asks for: the host checked against it, or a pinned chroot.

``host`` mode (development, CI): ``host_differences`` lists every ``Installed-Build-Depends``
entry whose exact version is not installed here; the rebuild refuses unless the list is empty.
``mmdebstrap`` mode: ``prepare_chroot`` builds a fresh chroot from the configured mirror with
exactly those versions installed, cached by the hash of the dependency list (and mirror, suite,
architecture), and returns its directory to use as the sandbox's system root.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rebuilder.debian.buildinfo import Dependency
from verifier.errors import BadDataError

__all__ = [
    "ChrootError",
    "PreparedChroot",
    "chroot_key",
    "compare_installed",
    "host_architecture",
    "host_differences",
    "installed_packages",
    "prepare_chroot",
]


@functools.cache
def host_architecture() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def installed_packages(admindir: Path | None = None) -> dict[str, str]:
    """``{"name": version, "name:arch": version}`` for every installed package (dpkg-query)."""
    cmd = [
        "dpkg-query",
        "-W",
        "-f",
        "${db:Status-Abbrev}\t${Package}\t${Architecture}\t${Version}\n",
    ]
    if admindir is not None:
        cmd.insert(1, f"--admindir={admindir}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60).stdout
    installed: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) != 4 or not parts[0].startswith("ii"):
            continue
        _, name, arch, version = parts
        installed[f"{name}:{arch}"] = version
        installed.setdefault(name, version)
    return installed


def compare_installed(
    wanted: Iterable[Dependency], installed: Mapping[str, str], native_arch: str
) -> list[str]:
    """Pure core of the host check: one human-readable line per difference."""
    diffs: list[str] = []
    for dep in wanted:
        key = f"{dep.name}:{dep.arch}" if dep.arch else dep.name
        have = installed.get(key)
        if have is None and dep.arch is None:
            have = installed.get(f"{dep.name}:{native_arch}") or installed.get(f"{dep.name}:all")
        if have is None:
            diffs.append(f"{dep}: not installed")
        elif have != dep.version:
            diffs.append(f"{dep}: installed {have}")
    return diffs


def host_differences(wanted: Iterable[Dependency]) -> list[str]:
    return compare_installed(wanted, installed_packages(), host_architecture())


class ChrootError(BadDataError):
    """The chroot could not be built (mirror unreachable, a pinned version not available...)."""

    def __init__(self, message: str) -> None:
        super().__init__("chroot", message, message=message)


@dataclass(frozen=True)
class PreparedChroot:
    path: Path  # directory tree to use as the sandbox's root
    key: str
    cached: bool
    # a shared lock on the chroot while a build uses it: eviction never removes a chroot in
    # use; ``release`` when the build is over
    lock: IO[str] | None = field(default=None, compare=False, repr=False)

    def release(self) -> None:
        if self.lock is not None and not self.lock.closed:
            self.lock.close()  # closing drops the flock


_READY = ".repro-quorum-ready"  # mtime: when the chroot was last used
_SIZE = ".repro-quorum-size"


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in [*dirnames, *filenames]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
    return total


def evict_chroots(cache_dir: Path, cap_bytes: int, keep: Iterable[str] = ()) -> list[str]:
    """Remove the least recently used chroots until the cache holds at most ``cap_bytes``;
    never one named in ``keep`` nor one a build holds (its lock is taken without waiting).
    The names removed."""
    kept = set(keep)
    entries = []
    for d in cache_dir.glob("chroot-*"):
        ready = d / _READY
        if not ready.is_file():
            continue
        try:
            size = int((d / _SIZE).read_text())
        except (OSError, ValueError):
            size = _tree_size(d)
        entries.append((ready.stat().st_mtime, d, size))
    total = sum(size for _, _, size in entries)
    removed: list[str] = []
    for _, d, size in sorted(entries, key=lambda e: e[0]):
        if total <= cap_bytes:
            break
        if d.name in kept:
            continue
        with open(cache_dir / f".{d.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a build is using it, or one is preparing it
            if not (d / _READY).is_file():
                continue
            doomed = cache_dir / f".evict-{d.name}"
            d.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        total -= size
        removed.append(d.name)
    return removed


def chroot_key(deps: Iterable[Dependency], mirror: str, suite: str, arch: str,
               extra_sources: Sequence[str] = ()) -> str:
    spec: dict[str, object] = {
        "deps": sorted(str(d) for d in deps),
        "mirror": mirror,
        "suite": suite,
        "arch": arch,
        "format": 2,  # bumped whenever the chroot recipe changes
    }
    if extra_sources:
        spec["sources"] = list(extra_sources)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _open_lock(cache_dir: Path, key: str) -> IO[str]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    return open(cache_dir / f".chroot-{key[:32]}.lock", "w")  # closed by PreparedChroot


def _stage(files: Iterable[Path], directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for f in files:
        shutil.copyfile(f, directory / f.name)
    directory.chmod(0o755)


def _open_append(path: Path) -> IO[bytes]:
    return open(path, "ab")  # closed by the caller's with statement


async def _run_mmdebstrap(cmd: list[str], log_path: Path, time_limit: float,
                          where: str = "") -> None:
    with await asyncio.to_thread(_open_append, log_path) as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(time_limit):
                rc = await proc.wait()
        except TimeoutError as e:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            raise ChrootError(f"mmdebstrap did not finish within {time_limit:.0f}s") from e
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            raise
    if rc != 0:
        # every pin was found in a configured suite or the snapshot before this ran
        raise ChrootError(f"mmdebstrap exited with status {rc} bootstrapping from {where}"
                          " (see the log)")


_LOCAL_DEBS = "/tmp/rq-pinned-debs"  # noqa: S108  # inside the chroot being made, removed after


def _apt_pins(deps: Iterable[Dependency], local: Mapping[Dependency, Path]) -> list[str]:
    """``name=version`` for apt to find in the suites; the path of a file for a pin that was
    fetched from the snapshot archive (apt installs a .deb given by path as it is)."""
    return [f"{_LOCAL_DEBS}/{local[d].name}" if d in local
            else f"{d.name}{':' + d.arch if d.arch else ''}={d.version}" for d in deps]


async def prepare_chroot(
    deps: tuple[Dependency, ...],
    cache_dir: Path,
    mirror: str,
    suite: str,
    arch: str,
    log_path: Path,
    time_limit: float = 3600.0,
    extra_sources: Sequence[str] = (),
    local_debs: Mapping[Dependency, Path] | None = None,
    cache_cap_bytes: int = 0,
) -> PreparedChroot:
    """A directory chroot with exactly ``deps`` installed, built once per dependency list.

    mmdebstrap installs the ``buildd`` variant (essential + build-essential) from ``mirror``;
    a customize hook then runs ``apt-get install --allow-downgrades pkg=version ...`` for the
    whole list, and the chroot's dpkg database is checked to hold every exact version. The tree is
    renamed into place atomically, so a crashed build never leaves a half chroot in the cache.
    The returned chroot is held (a shared lock) until ``release``; with ``cache_cap_bytes``,
    a new chroot then evicts the least recently used others (``evict_chroots``).
    """
    local = dict(local_debs or {})
    # snapshot files are named by their sha1 in the package cache: the key covers them
    key = chroot_key(deps, mirror, suite, arch,
                     [*extra_sources, *sorted(f"file:{p.name}" for p in local.values())])
    final = cache_dir / f"chroot-{key[:32]}"
    lock = await asyncio.to_thread(_open_lock, cache_dir, key)
    try:
        # a ready chroot is shared by every build using it; building one is exclusive, and
        # whoever gets the exclusive lock looks again (another may have built it meanwhile)
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_SH)
        if not (final / _READY).exists():
            fcntl.flock(lock, fcntl.LOCK_UN)
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        if (final / _READY).exists():
            os.utime(final / _READY)  # used now: the last to be evicted
            fcntl.flock(lock, fcntl.LOCK_SH)
            return PreparedChroot(final, key, cached=True, lock=lock)
        work = cache_dir / f".chroot-{key[:32]}.tmp"
        if work.exists():
            await asyncio.to_thread(shutil.rmtree, work)
        pins = " ".join(_apt_pins(deps, local))
        staged = None
        if local:  # the snapshot's files, copied into the chroot for the pinned install
            staged = cache_dir / f".chroot-{key[:32]}.debs"
            await asyncio.to_thread(_stage, local.values(), staged)
        cmd = [
            "mmdebstrap",
            "--variant=buildd",
            f"--architectures={arch}",
            "--mode=root",
            "--format=directory",
            # fakeroot: dpkg-buildpackage's root command for packages that need one;
            # bubblewrap: the sandbox's inner layer that disables nested user namespaces
            "--include=fakeroot,bubblewrap",
            '--aptopt=Acquire::Check-Valid-Until "false"',
            *([f'--customize-hook=mkdir -p "$1"{_LOCAL_DEBS}',
               f"--customize-hook=sync-in {staged} {_LOCAL_DEBS}"] if staged else []),
            '--customize-hook=chroot "$1" apt-get install --yes --allow-downgrades '
            "--no-install-recommends " + pins,
            *([f'--customize-hook=rm -rf "$1"{_LOCAL_DEBS}'] if staged else []),
            '--customize-hook=rm -f "$1"/etc/resolv.conf "$1"/etc/hostname',
            suite,
            str(work),
            mirror,
            *extra_sources,  # apt lines: the other suites, the snapshot's files
        ]
        try:
            await _run_mmdebstrap(cmd, log_path, time_limit,
                                  ", ".join([f"{mirror} {suite}", *extra_sources]))
            installed = await asyncio.to_thread(
                installed_packages, work / "var" / "lib" / "dpkg"
            )
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        finally:
            if staged is not None:
                await asyncio.to_thread(shutil.rmtree, staged, True)
        diffs = compare_installed(deps, installed, arch)
        if diffs:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise ChrootError(
                f"the chroot differs from Installed-Build-Depends in {len(diffs)} packages: "
                + "; ".join(diffs[:20])
            )
        size = await asyncio.to_thread(_tree_size, work)
        (work / _SIZE).write_text(f"{size}\n")
        (work / _READY).write_text(key + "\n")
        work.rename(final)
        fcntl.flock(lock, fcntl.LOCK_SH)
    except BaseException:
        lock.close()
        raise
    prepared = PreparedChroot(final, key, cached=False, lock=lock)
    if cache_cap_bytes > 0:
        await asyncio.to_thread(evict_chroots, cache_dir, cache_cap_bytes, {final.name})
    return prepared
