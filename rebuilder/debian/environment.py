"""The build environment a buildinfo asks for: the host checked against it, or a pinned chroot.

``host`` mode (development, CI): ``host_differences`` lists every ``Installed-Build-Depends``
entry whose exact version is not installed here; the rebuild refuses unless the list is empty.
``mmdebstrap`` mode: ``prepare_chroot`` returns a chroot with exactly those versions installed,
to use as the sandbox's system root. It is made of two cached layers (docs/rebuild-pipeline.md,
"Pinned chroots"):

* a **base** per mirror, suite, sources and architecture: mmdebstrap's ``buildd`` variant (plus
  fakeroot and bubblewrap), made once;
* per pin set, the **delta**: the pins the base lacks at their exact version, installed by apt on
  a copy-on-write copy of the base (an overlay mount as root, else ``cp --reflink=auto``;
  ``rebuilder.debian._chrootfs``), the .debs kept in a package cache shared by the node's builds and
  checked against the index sha256 before apt may use them.

A pin set seen before reuses its chroot as it is. The whole cache (bases, deltas, packages) is
kept under a size cap by evicting the least recently used (``evict_chroots``).
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
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from rebuilder.debian import _chrootfs
from rebuilder.debian._chrootcache import (
    _BASE,
    _DELTA,
    _LAYOUT,
    _PACKAGES,
    _READY,
    _SIZE,
    _remove_entry,
    _tree_size,
    evict_chroots,
    unmount_idle,
)
from rebuilder.debian.buildinfo import Dependency
from verifier.errors import BadDataError

__all__ = [
    "ChrootError",
    "PreparedChroot",
    "base_key",
    "chroot_key",
    "compare_installed",
    "delta_of",
    "evict_chroots",
    "host_architecture",
    "host_differences",
    "installed_packages",
    "prepare_chroot",
    "unmount_idle",
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
    cached: bool  # this exact pin set's chroot existed already
    # a shared lock on the chroot while a build uses it: eviction never removes a chroot in
    # use; ``release`` when the build is over
    lock: IO[str] | None = field(default=None, compare=False, repr=False)
    base: str = ""  # name of the base it is a copy of
    base_cached: bool = True  # False: the base was bootstrapped for this build
    layout: str = "overlay"  # how the copy was made: overlay | copy
    delta: int = 0  # pins installed on top of the base (when the chroot was made)
    seconds: float = 0.0  # to prepare it

    @property
    def name(self) -> str:
        return f"chroot-{self.key[:32]}"

    def release(self) -> None:
        if self.lock is not None and not self.lock.closed:
            self.lock.close()  # closing drops the flock


FORMAT = 4  # bumped whenever the chroot recipe changes
Layout = Literal["auto", "overlay", "copy"]


def chroot_key(deps: Iterable[Dependency], mirror: str, suite: str, arch: str,
               extra_sources: Sequence[str] = ()) -> str:
    spec: dict[str, object] = {
        "deps": sorted(str(d) for d in deps),
        "mirror": mirror,
        "suite": suite,
        "arch": arch,
        "format": FORMAT,
    }
    if extra_sources:
        spec["sources"] = list(extra_sources)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def base_key(mirror: str, suite: str, arch: str, extra_sources: Sequence[str] = ()) -> str:
    """The base's identity: where it was bootstrapped from, never what is pinned on it."""
    spec = {"mirror": mirror, "suite": suite, "arch": arch, "sources": list(extra_sources),
            "format": FORMAT}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def delta_of(deps: Iterable[Dependency], base: Mapping[str, str], arch: str) -> list[Dependency]:
    """Pure: the pins ``base`` (``installed_packages`` of it) lacks at their exact version."""
    return [d for d in deps if compare_installed([d], base, arch)]


def _open_lock(cache_dir: Path, name: str) -> IO[str]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    return open(cache_dir / f".{name}.lock", "w")  # closed by PreparedChroot or the caller


def _open_append(path: Path) -> IO[bytes]:
    return open(path, "ab")  # closed by the caller's with statement


async def _run_logged(cmd: list[str], log_path: Path, time_limit: float, what: str,
                      tool: str = "mmdebstrap") -> None:
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
            raise ChrootError(f"{tool} did not finish within {time_limit:.0f}s {what}") from e
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            raise
    if rc != 0:
        # every pin was found in a configured suite or the snapshot before this ran
        raise ChrootError(f"{tool} exited with status {rc} {what} (see the log)")


_LOCAL_DEBS = "/tmp/rq-pinned-debs"  # noqa: S108  # bound read-only while the delta installs


def _apt_pins(deps: Iterable[Dependency], local: Mapping[Dependency, Path]) -> list[str]:
    """``name=version`` for apt to find in the suites; the path of a file for a pin that was
    fetched from the snapshot archive (apt installs a .deb given by path as it is)."""
    return [f"{_LOCAL_DEBS}/{local[d].name}" if d in local
            else f"{d.name}{':' + d.arch if d.arch else ''}={d.version}" for d in deps]


def _apt_name(dep: Dependency, filename: str) -> str:
    """The name apt gives the file in its archive directory (the epoch's colon escaped)."""
    arch = filename.rsplit("/", 1)[-1].removesuffix(".deb").rsplit("_", 1)[-1]
    return f"{dep.name}_{dep.version.replace(':', '%3a')}_{arch}.deb"


def _verify_package_cache(archives: Path, pool: Mapping[Dependency, tuple[str, str]],
                          deps: Iterable[Dependency]) -> tuple[int, list[str]]:
    """Check each cached .deb apt would use for ``deps`` against the suite index's sha256; a
    file that differs is removed (apt fetches it again, and checks the download itself).
    How many were there and good, and the names removed."""
    good, bad = 0, []
    now = time.time()
    for dep in deps:
        if dep not in pool:
            continue
        filename, sha256 = pool[dep]
        f = archives / _apt_name(dep, filename)
        if not f.is_file():
            continue
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        if sha256 and h.hexdigest() == sha256:
            good += 1
            os.utime(f, (now, now))  # used now: the last package to be evicted
        else:
            f.unlink()
            bad.append(f.name)
    return good, bad


def _base_command(mirror: str, suite: str, arch: str, extra_sources: Sequence[str],
                  work: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--variant=buildd",
        f"--architectures={arch}",
        "--mode=root",
        "--format=directory",
        # fakeroot: dpkg-buildpackage's root command for packages that need one;
        # bubblewrap: the sandbox's inner layer that disables nested user namespaces
        "--include=fakeroot,bubblewrap",
        '--aptopt=Acquire::Check-Valid-Until "false"',
        # no fsync per unpacked file: the tree is synced once before it is marked ready (a
        # crash before that leaves only a .tmp, removed by the next attempt)
        "--dpkgopt=force-unsafe-io",
        # the package lists stay: every delta's apt run starts from them (shared, updated)
        "--skip=cleanup/apt/lists",
        '--customize-hook=rm -f "$1"/etc/resolv.conf "$1"/etc/hostname'
        ' "$1"/etc/dpkg/dpkg.cfg.d/99mmdebstrap',
        suite,
        str(work),
        mirror,
        *extra_sources,  # apt lines: the other suites
    ]


async def _ensure_base(cache_dir: Path, mirror: str, suite: str, arch: str,
                       extra_sources: Sequence[str], log_path: Path,
                       time_limit: float) -> tuple[Path, IO[str], bool]:
    """The base entry (``root/`` its tree, ``lists/`` apt's lists), held with a shared lock
    (returned) so that it cannot be evicted under the caller; whether it existed already."""
    key = base_key(mirror, suite, arch, extra_sources)
    final = cache_dir / f"base-{key[:32]}"
    lock = await asyncio.to_thread(_open_lock, cache_dir, final.name)
    try:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_SH)
        if not (final / _READY).exists():
            fcntl.flock(lock, fcntl.LOCK_UN)
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        if (final / _READY).exists():
            fcntl.flock(lock, fcntl.LOCK_SH)
            return final, lock, True
        work = cache_dir / f".{final.name}.tmp"
        if work.exists():
            await asyncio.to_thread(shutil.rmtree, work)
        work.mkdir(parents=True)
        cmd = _base_command(mirror, suite, arch, extra_sources, work / "root")
        try:
            await _run_logged(cmd, log_path, time_limit,
                              "bootstrapping the base from "
                              + ", ".join([f"{mirror} {suite}", *extra_sources]))
            await asyncio.to_thread(_finish_base, work)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        work.rename(final)
        fcntl.flock(lock, fcntl.LOCK_SH)
    except BaseException:
        lock.close()
        raise
    return final, lock, False


def _finish_base(work: Path) -> None:
    root = work / "root"
    lists = root / "var" / "lib" / "apt" / "lists"
    (work / "lists").mkdir()
    for p in lists.iterdir():  # moved out: shared by every delta, never part of the lower layer
        if p.name not in ("partial", "lock"):
            p.rename(work / "lists" / p.name)
    (work / "lists" / "partial").mkdir(exist_ok=True)
    installed = installed_packages(root / "var" / "lib" / "dpkg")
    (work / _PACKAGES).write_text(json.dumps(installed, sort_keys=True))
    subprocess.run(["sync", "-f", str(root)], check=False, timeout=600)  # see force-unsafe-io
    (work / _SIZE).write_text(f"{_tree_size(work)}\n")
    (work / _READY).write_text("base\n")


def _delta_command(root: Path, base: Path, packages: Path, pins: Sequence[str],
                   local: bool, update: bool = True) -> list[str]:
    """bwrap as root over the copy: apt updates the shared lists (not when the base was just
    bootstrapped: they are seconds old) and installs the delta from the shared package cache
    (downloading what it lacks), with the network, nothing else."""
    apt_opts = ["-o", "Acquire::Check-Valid-Until=false", "-o", "Dir::Cache::pkgcache=",
                "-o", "Dir::Cache::srcpkgcache="]
    install = ["apt-get", *apt_opts, "install", "--yes", "--allow-downgrades",
               "--no-install-recommends", "-o", "DPkg::Options::=--force-unsafe-io", *pins]
    script = ("apt-get " + " ".join(apt_opts) + " --error-on=any update && " if update
              else "") + 'exec "$@"'
    cmd = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc",
           "--bind", str(root), "/", "--dev", "/dev", "--proc", "/proc",
           # the sandbox's own, private /tmp; apt's _apt user writes there too
           "--perms", "1777", "--tmpfs", "/tmp",  # noqa: S108
           "--bind", str(base / "lists"), "/var/lib/apt/lists",
           "--bind", str(packages / "apt"), "/var/cache/apt/archives"]
    if local:
        cmd += ["--ro-bind", str(packages), _LOCAL_DEBS]
    resolv = Path("/etc/resolv.conf")
    if resolv.exists():
        cmd += ["--ro-bind", str(resolv.resolve()), "/etc/resolv.conf"]
    cmd += ["--clearenv", "--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin",
            "--setenv", "DEBIAN_FRONTEND", "noninteractive", "--setenv", "LC_ALL", "C.UTF-8",
            "--chdir", "/", "--", "sh", "-ec", script, "sh", *install]
    return cmd


def _choose_layout(layout: Layout) -> tuple[Literal["overlay", "copy"], str]:
    if layout == "copy":
        return "copy", "copy asked for"
    ok, why = _chrootfs.overlay_available()
    if ok:
        return "overlay", ""
    if layout == "overlay":
        raise ChrootError(f"overlay chroots asked for, but {why}")
    return "copy", why


def _mount_entry(base: Path, entry: Path) -> None:
    if not _chrootfs.is_mounted(entry / "root"):
        _chrootfs.mount_overlay(base / "root", entry / "upper", entry / "work", entry / "root")


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
    pool_files: Mapping[Dependency, tuple[str, str]] | None = None,
    layout: Layout = "auto",
) -> PreparedChroot:
    """A chroot with exactly ``deps`` installed: the base plus this pin set's delta.

    (a) a pin set seen before: its chroot as it is (remounted if the node restarted);
    (b) a new pin set: a copy-on-write copy of the cached base, on which apt installs the pins
    the base lacks, ``apt-get install --allow-downgrades pkg=version ...`` (snapshot files by
    path), from the package cache shared by the node's builds, each cached file first checked
    against the suite index's sha256 (``pool_files``);
    (c) nothing cached: the base is bootstrapped first (mmdebstrap ``--variant=buildd``).
    The chroot's dpkg database is then checked to hold every exact version. Entries are renamed
    into place atomically, so a crashed build never leaves a half chroot in the cache. The
    returned chroot is held (a shared lock) until ``release``; with ``cache_cap_bytes``, a new
    one then evicts the least recently used others (``evict_chroots``).
    """
    t0 = time.monotonic()
    local = dict(local_debs or {})
    # snapshot files are named by their sha1 in the package cache: the key covers them
    key = chroot_key(deps, mirror, suite, arch,
                     [*extra_sources, *sorted(f"file:{p.name}" for p in local.values())])
    final = cache_dir / f"chroot-{key[:32]}"
    lock = await asyncio.to_thread(_open_lock, cache_dir, final.name)
    base_lock: IO[str] | None = None
    try:
        # a ready chroot is shared by every build using it; building one (or mounting it
        # again) is exclusive, and whoever gets the exclusive lock looks again
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_SH)
        if not _usable(final):
            fcntl.flock(lock, fcntl.LOCK_UN)
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        if (final / _READY).exists() and not _usable(final) and not (
                cache_dir / _entry_text(final, _BASE) / _READY).exists():
            # an overlay whose base is gone (deleted by hand): made again below
            await asyncio.to_thread(_remove_entry, cache_dir, final)
        if (final / _READY).exists():
            how = _entry_text(final, _LAYOUT) or "copy"
            base_name = _entry_text(final, _BASE)
            if how == "overlay" and not _usable(final):
                try:
                    await asyncio.to_thread(_mount_entry, cache_dir / base_name, final)
                except OSError as e:
                    raise ChrootError(f"cannot mount the cached chroot {final.name}: {e}") from e
            os.utime(final / _READY)  # used now: the last to be evicted
            fcntl.flock(lock, fcntl.LOCK_SH)
            return PreparedChroot(final / "root", key, cached=True, lock=lock, base=base_name,
                                  layout=how, delta=int(_entry_text(final, _DELTA) or 0),
                                  seconds=time.monotonic() - t0)
        base, base_lock, base_cached = await _ensure_base(
            cache_dir, mirror, suite, arch, extra_sources, log_path, time_limit)
        how, why = _choose_layout(layout)
        base_installed = json.loads((base / _PACKAGES).read_text())
        delta = delta_of(deps, base_installed, arch)
        work = cache_dir / f".{final.name}.tmp"
        await asyncio.to_thread(_clear, work)
        try:
            how = await _make_copy(base, work, how, why, log_path, layout == "auto")
            if delta:
                await _install_delta(work, base, cache_dir, delta, local, pool_files or {},
                                     log_path, time_limit, update=base_cached)
            installed = await asyncio.to_thread(
                installed_packages, work / "root" / "var" / "lib" / "dpkg")
            diffs = compare_installed(deps, installed, arch)
            if diffs:
                raise ChrootError(
                    f"the chroot differs from Installed-Build-Depends in {len(diffs)} packages: "
                    + "; ".join(diffs[:20]))
            await asyncio.to_thread(_finish_entry, work, base, how, len(delta))
        except BaseException:
            await asyncio.to_thread(_clear, work)
            raise
        work.rename(final)
        if how == "overlay":
            await asyncio.to_thread(_mount_entry, base, final)
        fcntl.flock(lock, fcntl.LOCK_SH)
    except BaseException:
        lock.close()
        raise
    finally:
        if base_lock is not None:
            base_lock.close()
    prepared = PreparedChroot(final / "root", key, cached=False, lock=lock, base=base.name,
                              base_cached=base_cached, layout=how, delta=len(delta),
                              seconds=time.monotonic() - t0)
    if cache_cap_bytes > 0:
        await asyncio.to_thread(evict_chroots, cache_dir, cache_cap_bytes,
                                {final.name, base.name})
    return prepared


def _entry_text(entry: Path, marker: str) -> str:
    try:
        return (entry / marker).read_text().strip()
    except OSError:
        return ""


def _usable(entry: Path) -> bool:
    """Ready, and mounted if it is an overlay."""
    if not (entry / _READY).exists():
        return False
    if (entry / _LAYOUT).exists() and (entry / _LAYOUT).read_text().strip() == "overlay":
        return _chrootfs.is_mounted(entry / "root")
    return True


def _clear(work: Path) -> None:
    _chrootfs.unmount(work / "root")
    if work.exists():
        shutil.rmtree(work)


async def _make_copy(base: Path, work: Path, how: str, why: str, log_path: Path,
                     fallback: bool) -> str:
    """The copy of the base at ``work/root``; the layout used (an overlay that cannot be
    mounted here, e.g. on a filesystem overlayfs refuses as upper layer, falls back to a copy
    when ``fallback``)."""
    if how == "overlay":
        try:
            await asyncio.to_thread(_chrootfs.mount_overlay, base / "root", work / "upper",
                                    work / "work", work / "root")
        except OSError as e:
            if not fallback:
                raise ChrootError(f"overlay chroot: {e}") from e
            await asyncio.to_thread(_clear, work)
            how, why = "copy", str(e)
    with await asyncio.to_thread(_open_append, log_path) as log:
        if how == "overlay":
            log.write(f"chroot: overlay of {base.name}, the delta in its own upper layer\n"
                      .encode())
        else:
            log.write(f"chroot: copy of {base.name} (cp --reflink=auto; no overlay: {why})\n"
                      .encode())
    if how == "copy":
        try:
            await asyncio.to_thread(_chrootfs.copy_base, base / "root", work / "root")
        except OSError as e:
            raise ChrootError(str(e)) from e
    return how


async def _install_delta(work: Path, base: Path, cache_dir: Path, delta: Sequence[Dependency],
                         local: Mapping[Dependency, Path],
                         pool: Mapping[Dependency, tuple[str, str]], log_path: Path,
                         time_limit: float, update: bool = True) -> None:
    packages = cache_dir / "packages"
    (packages / "apt" / "partial").mkdir(parents=True, exist_ok=True)
    root = work / "root"
    # one apt run at a time over the shared lists and package cache
    lock = await asyncio.to_thread(_open_lock, cache_dir, "packages")
    with lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        good, bad = await asyncio.to_thread(_verify_package_cache, packages / "apt", pool, delta)
        with await asyncio.to_thread(_open_append, log_path) as log:
            log.write((f"delta: {len(delta)} pins not in {base.name} at their version;"
                       f" {good} in the package cache and checked against the index sha256"
                       + (f", removed as damaged: {', '.join(bad)}" if bad else "") + "\n")
                      .encode())
        cmd = _delta_command(root, base, packages, _apt_pins(delta, local), bool(local),
                             update)
        try:
            await _run_logged(cmd, log_path, time_limit, "installing the pinned delta", tool="apt")
        finally:
            with contextlib.suppress(OSError):
                (root / "etc" / "resolv.conf").unlink()  # only the sandbox's mount point


def _finish_entry(work: Path, base: Path, how: str, delta: int) -> None:
    if how == "overlay":
        _chrootfs.unmount(work / "root")  # remounted at its final place
    (work / _BASE).write_text(base.name + "\n")
    (work / _LAYOUT).write_text(how + "\n")
    (work / _DELTA).write_text(f"{delta}\n")
    (work / _SIZE).write_text(f"{_tree_size(work)}\n")
    (work / _READY).write_text(work.name + "\n")
