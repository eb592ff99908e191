"""Running untrusted build commands inside bubblewrap (ARCHITECTURE §2.5, §5 step 3).

A package's build scripts are remote code execution by design. ``run_sandboxed`` runs a command
with an explicit allowlist of read-only system directories (from the host or from a chroot), a
private /proc, /dev and size-capped /tmp, the given bind mounts as the only writable places, no
network (every namespace unshared), a cleared environment, and, when the node runs as root, the
build dropped to ``nobody`` with no capabilities and ``no_new_privs``.

The kernel bounds each build (``enforcement()`` says which of these this node has):

* memory and processes: a cgroup of its own (``rebuilder._cgroup``) with ``memory.max``, no
  swap, and ``pids.max``; a build that reaches either is killed whole, and the result names the
  limit (read from the cgroup's ``oom_kill`` and ``max`` counters). Without a usable cgroup
  there is no memory limit, and processes fall back to ``RLIMIT_NPROC``, which counts every
  process of the sandbox's user, other builds' included;
* disk: the build tree on a filesystem of its own size (``rebuilder._buildfs``, when the node
  is root); otherwise ``watch_dir`` is measured every few seconds;
* time: the wall-clock timeout kills the whole sandbox; the log is capped while it runs.

bwrap reads its options from a memfd (``--args``), so the sandbox's ``/proc/1/cmdline`` shows
no host path::

    cfg = SandboxConfig(binds=(Bind(tree, "/build", writable=True),), chdir="/build/hello-1.0")
    result = await run_sandboxed(["dpkg-buildpackage", "-b"], cfg, log, Limits(timeout=3600))

``bwrap_argv`` is pure, so the exact sandbox can be inspected and tested without running it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from rebuilder import _buildfs, _cgroup
from verifier.errors import ConfigError

__all__ = [
    "CHROOT_SYSTEM_PATHS",
    "HOST_SYSTEM_PATHS",
    "NOBODY",
    "Bind",
    "Enforcement",
    "Limit",
    "Limits",
    "SandboxConfig",
    "SandboxResult",
    "bwrap_argv",
    "bwrap_version",
    "check_hidden",
    "describe_limit",
    "directory_size",
    "enforcement",
    "make_build_tree",
    "release_build_tree",
    "run_sandboxed",
]

log = logging.getLogger("rebuilder.sandbox")

NOBODY = 65534
# What a build may see of the host: programs, libraries, configuration and dpkg's database
# (dpkg-checkbuilddeps reads it). Nothing else: not /home, /root, /srv, /var/lib/<daemon>,
# /run, nor the node's state directory, wherever it lives.
HOST_SYSTEM_PATHS = (
    "usr",
    "etc",
    "bin",
    "sbin",
    "lib",
    "lib32",
    "lib64",
    "libx32",
    "var/lib/dpkg",
)
# A chroot made for this build holds nothing secret, so its /var is visible as a whole.
CHROOT_SYSTEM_PATHS = ("usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "var")
_SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


@dataclass(frozen=True)
class Bind:
    source: Path  # on the host
    dest: str  # inside the sandbox
    writable: bool = False


@dataclass(frozen=True)
class Limits:
    timeout: float = 3600.0  # wall clock, seconds
    max_log_bytes: int = 50 * 1024 * 1024
    max_disk_bytes: int | None = None  # of ``watch_dir`` while the command runs
    max_tmp_bytes: int = 1024 * 1024 * 1024  # the private /tmp (tmpfs)
    max_processes: int = 4096  # pids.max of the build's cgroup (threads count too)
    # memory.max of the build's cgroup (its tmpfs pages count too); None: unlimited. The
    # default also bounds sandboxed runs that set none (diffoscope, the test repository's builds)
    max_memory_bytes: int | None = 8 * 1024**3
    disk_poll_interval: float = 2.0
    cgroup: bool = True  # False: no cgroup even where the node has one (RLIMIT_NPROC only)


@dataclass(frozen=True)
class SandboxConfig:
    binds: tuple[Bind, ...] = ()
    chdir: str = "/"
    env: Mapping[str, str] = field(default_factory=dict)
    root: Path = Path("/")  # where the system directories come from (host or chroot)
    system_paths: tuple[str, ...] = HOST_SYSTEM_PATHS
    hidden: tuple[Path, ...] = ()  # host paths to cover inside the sandbox if they would show
    drop_to_nobody: bool | None = None  # None: when running as root
    hostname: str = "rebuild"


# What stopped a build: one of the node's own limits.
Limit = Literal["timeout", "disk", "memory", "pids"]


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None  # None when killed for a limit
    limit: Limit | None = None  # which of the node's limits stopped it
    log_bytes: int = 0
    log_truncated: bool = False
    duration: float = 0.0
    signal: int | None = None  # bwrap itself died of this signal, and no limit of ours sent it
    # processes of this build an OOM killer took while the build was within its own memory
    # limit (the host or a parent cgroup ran out), from the build's own cgroup; None: the build
    # had no memory cgroup of its own (advisory limit), so nothing tells them from other builds'
    outside_oom_kills: int | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.limit is None

    @property
    def interrupted(self) -> bool:
        """Killed from outside (an operator, the service manager, a parent cgroup's or the
        host's OOM killer), not by the build's own doing nor by one of this node's limits."""
        return self.limit is None and (self.signal is not None or bool(self.outside_oom_kills))


@dataclass(frozen=True)
class Enforcement:
    """How one limit is held on this node: by the kernel, or only by the node's polling."""

    limit: Literal["memory", "pids", "disk", "time"]
    enforced: bool  # False: advisory only
    mechanism: str

    def to_dict(self) -> dict[str, object]:
        return {"limit": self.limit, "enforced": self.enforced, "mechanism": self.mechanism}


def enforcement() -> tuple[Enforcement, ...]:
    """Which limits the kernel holds for builds on this node, and how (first call prepares the
    node's cgroup subtree; see ``rebuilder._cgroup``)."""
    cg = _cgroup.node_cgroups()
    mount_ok, why = _buildfs.can_mount()
    return (
        Enforcement("memory", cg.memory, cg.describe("memory") if cg.memory else
                    f"none: {cg.describe('memory')}"),
        Enforcement("pids", cg.pids, cg.describe("pids") if cg.pids else
                    f"RLIMIT_NPROC, shared by every build of the same user: {cg.describe('pids')}"),
        Enforcement("disk", mount_ok, "build tree on its own ext4 image (loop mount)" if mount_ok
                    else f"tree measured every few seconds: {why}"),
        Enforcement("time", True, "the node kills the whole sandbox at the timeout"),
    )


@functools.cache
def bwrap_version() -> str:
    try:
        out = subprocess.run(
            ["bwrap", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return out.strip().removeprefix("bubblewrap ").strip() or "unknown"


def check_hidden(paths: Sequence[Path]) -> None:
    """Refuse paths that cannot be hidden without hiding the system a build needs.

    Covering ``/etc`` (say, because a signing key lives directly in it) would leave the build
    without its configuration; name the key file itself instead.
    """
    for h in paths:
        if not h.is_absolute():
            raise ConfigError(f"hidden path {h} is not absolute")
        for rel in HOST_SYSTEM_PATHS:
            if (Path("/") / rel).is_relative_to(h):
                raise ConfigError(
                    f"hidden path {h} contains the system directory /{rel} that builds need; "
                    "hide the secret file or its own directory instead"
                )


def _parents(dest: str) -> list[str]:
    parts = [p for p in dest.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def bwrap_argv(
    argv: Sequence[str],
    cfg: SandboxConfig,
    limits: Limits,
    euid: int | None = None,
    nproc_rlimit: bool = True,
) -> list[str]:
    """The full command line: bwrap options, then the privilege drop, then ``argv``.

    ``euid`` is the user bwrap will run as (default: this process's). ``nproc_rlimit``: cap
    processes with RLIMIT_NPROC (when no cgroup does it per build).
    """
    options, command = _bwrap_parts(argv, cfg, limits, euid, nproc_rlimit)
    return ["bwrap", *options, "--", *command]


def _bwrap_parts(
    argv: Sequence[str],
    cfg: SandboxConfig,
    limits: Limits,
    euid: int | None,
    nproc_rlimit: bool,
) -> tuple[list[str], list[str]]:
    root = (os.geteuid() if euid is None else euid) == 0
    drop = root if cfg.drop_to_nobody is None else cfg.drop_to_nobody and root
    a = ["--die-with-parent", "--new-session"]
    if root:
        # A privileged bwrap keeps every capability unless told otherwise; keep only what
        # setpriv needs to switch to nobody (it then clears all of them, bounding set included).
        a += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        a += ["--unshare-cgroup-try", "--cap-drop", "ALL"]
        if drop:
            a += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        # an unprivileged bwrap gets no capability in its user namespace; nested user
        # namespaces (a way back to capabilities) are refused
        a += ["--unshare-all", "--unshare-user", "--disable-userns"]
    a += ["--hostname", cfg.hostname, "--clearenv"]
    # hidden paths inside the host's system directories are left out of them rather than
    # covered: a covering mount would name the hidden path in the sandbox's mount table
    host = cfg.root == Path("/")
    left_out = [h for h in cfg.hidden if host and h.exists() and _under_system_path(h, cfg)]
    for rel in cfg.system_paths:
        src = cfg.root / rel
        if src.is_symlink():
            a += ["--symlink", os.readlink(src), "/" + rel]
        elif src.is_dir():
            for parent in _parents("/" + rel):
                a += ["--perms", "0755", "--dir", parent]
            inside = [h for h in left_out if h.is_relative_to(src)]
            a += _bind_except(src, "/" + rel, inside) if inside else ["--ro-bind", str(src),
                                                                      "/" + rel]
    a += ["--proc", "/proc", "--dev", "/dev"]
    # /tmp inside the sandbox is a private, size-capped tmpfs, never the host's /tmp
    a += ["--perms", "1777", "--size", str(limits.max_tmp_bytes), "--tmpfs", "/tmp"]  # noqa: S108
    for b in cfg.binds:
        for parent in _parents(b.dest):
            a += ["--perms", "0755", "--dir", parent]
        a += ["--bind" if b.writable else "--ro-bind", str(b.source), b.dest]
    for h in cfg.hidden:
        # Only needed when a hidden path falls inside a bound directory; covering an absent
        # mount point would create it, so only existing visible paths are covered.
        if h not in left_out and _visible(h, cfg):
            a += ["--tmpfs", str(h)] if h.is_dir() else ["--ro-bind", "/dev/null", str(h)]
    env = {"PATH": _SANDBOX_PATH, "HOME": "/nonexistent", "TMPDIR": "/tmp", **cfg.env}  # noqa: S108
    for k, v in env.items():
        a += ["--setenv", k, v]
    a += ["--chdir", cfg.chdir]
    # prlimit: no core dumps, a cap on any one file's size, and (without a cgroup) on processes
    file_cap = limits.max_disk_bytes or 64 * 1024**3
    c = ["prlimit", "--core=0"]
    if nproc_rlimit:
        c.append(f"--nproc={limits.max_processes}")
    c += [f"--fsize={file_cap}", "--"]
    if drop:
        c += [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]
        if (cfg.root / "usr" / "bin" / "bwrap").exists():
            # A second, unprivileged bwrap as nobody: its own user namespace, in which nested
            # user namespaces are disabled. Without it a build could create one and reach
            # kernel code that only "root" may call (the outer sandbox has no user namespace).
            c += [
                "bwrap", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--dev-bind", "/", "/", "--chdir", cfg.chdir, "--",
            ]  # fmt: skip
    return a, c + list(argv)


def _under_system_path(path: Path, cfg: SandboxConfig) -> bool:
    return any(path.is_relative_to(Path("/") / rel) for rel in cfg.system_paths)


def _bind_except(src: Path, dest: str, hidden: Sequence[Path]) -> list[str]:
    """bwrap options showing directory ``src`` at ``dest`` read-only without the ``hidden``
    paths inside it: each entry bound on its own, the directories leading to a hidden path
    rebuilt the same way, a hidden path itself absent."""
    mode = stat.S_IMODE(src.lstat().st_mode)
    a = ["--perms", f"{mode:04o}", "--dir", dest]
    with os.scandir(src) as entries:
        for e in sorted(entries, key=lambda e: e.name):
            path = Path(e.path)
            if path in hidden:
                continue
            target = f"{dest}/{e.name}"
            inside = [h for h in hidden if h.is_relative_to(path)]
            if e.is_symlink():
                a += ["--symlink", os.readlink(path), target]
            elif inside and e.is_dir(follow_symlinks=False):
                a += _bind_except(path, target, inside)
            else:
                a += ["--ro-bind-try", str(path), target]  # -try: gone since the scan
    return a


def _visible(path: Path, cfg: SandboxConfig) -> bool:
    if not path.exists():
        return False
    if cfg.root == Path("/"):
        for rel in cfg.system_paths:
            if path.is_relative_to(Path("/") / rel):
                return True
    return any(path.is_relative_to(b.source) for b in cfg.binds)


def directory_size(path: Path) -> int:
    """Bytes allocated under ``path`` (not following symlinks).

    A directory the walk cannot read is made readable first when this process owns it (an
    unprivileged node owns all a build writes): a build cannot hide what it wrote behind
    ``chmod 300``. Only a directory of someone else's stays uncounted.
    """
    total = 0
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            entries = _scan(d)
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
    return total


def _scan(d: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(d) as it:
            return list(it)
    except PermissionError:
        st = os.lstat(d)
        if st.st_uid != os.geteuid() or not os.path.isdir(d) or os.path.islink(d):
            raise
        os.chmod(d, (st.st_mode & 0o7777) | 0o700)
        with os.scandir(d) as it:
            return list(it)


async def _pump(stream: asyncio.StreamReader, log: BinaryIO, cap: int) -> tuple[int, bool]:
    written = 0
    truncated = False
    while chunk := await stream.read(65536):
        if written < cap:
            part = chunk[: cap - written]
            log.write(part)
            written += len(part)
            if written >= cap:
                truncated = True
                log.write(b"\n[log truncated: limit of %d bytes reached]\n" % cap)
        # past the cap the output is still drained, so the build never blocks on a full pipe
    log.flush()
    return written, truncated


def _kill(proc: asyncio.subprocess.Process, cg: _cgroup.BuildCgroup | None = None) -> None:
    # bwrap leads its own process group; killing the group kills the sandbox's pid 1,
    # and with it every process in the sandbox's pid namespace. The cgroup holds them all too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if cg is not None:
        cg.kill()


def _args_fd(options: Sequence[str]) -> int:
    """A memfd holding bwrap's options, NUL-separated, for ``bwrap --args`` (which closes it)."""
    fd = os.memfd_create("bwrap-args", os.MFD_CLOEXEC)
    try:
        data = b"".join(o.encode("utf-8", "surrogateescape") + b"\0" for o in options)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


# bwrap's own processes (monitor, pid 1, the inner bwrap) within a build's pids.max
_PIDS_OVERHEAD = 8
_EVENT_POLL_S = 0.25


async def run_sandboxed(
    argv: Sequence[str],
    cfg: SandboxConfig,
    log: BinaryIO,
    limits: Limits,
    watch_dir: Path | None = None,
) -> SandboxResult:
    """Run ``argv`` in the sandbox, appending its output to ``log``; never raises for the build.

    ``watch_dir`` is the build tree: when it is a bounded filesystem (``_buildfs``) a build
    that fills it is reported as stopped by the disk limit; otherwise it is measured every
    ``limits.disk_poll_interval`` seconds against ``limits.max_disk_bytes``.
    """
    if shutil.which("bwrap") is None:
        raise ConfigError("bubblewrap (bwrap) is not installed")
    cgs = _cgroup.node_cgroups() if limits.cgroup else None
    cg: _cgroup.BuildCgroup | None = None
    if cgs is not None and cgs.parents:
        try:
            cg = await asyncio.to_thread(
                cgs.create, limits.max_memory_bytes, limits.max_processes + _PIDS_OVERHEAD
            )
        except OSError as e:
            raise ConfigError(f"cannot create the build's cgroup: {e}") from e
    try:
        return await _run(argv, cfg, log, limits, watch_dir, cgs, cg)
    finally:
        if cg is not None:
            await asyncio.to_thread(cg.remove)


async def _run(
    argv: Sequence[str],
    cfg: SandboxConfig,
    log: BinaryIO,
    limits: Limits,
    watch_dir: Path | None,
    cgs: _cgroup.NodeCgroups | None,
    cg: _cgroup.BuildCgroup | None,
) -> SandboxResult:
    pids_by_cgroup = cg is not None and cgs is not None and cgs.pids
    options, command = _bwrap_parts(argv, cfg, limits, None, not pids_by_cgroup)
    fd = _args_fd(options)
    full = ["bwrap", "--args", str(fd), "--", *command]
    if cg is not None:
        full = cg.join_argv(full)
    t0 = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(fd,),
            env={"PATH": os.environ.get("PATH", _SANDBOX_PATH)},
        )
    finally:
        os.close(fd)
    assert proc.stdout is not None
    pump = asyncio.create_task(_pump(proc.stdout, log, limits.max_log_bytes))
    limit: Limit | None = None
    bounded = watch_dir is not None and _buildfs.is_bounded(watch_dir)

    def stop(why: Limit) -> None:
        nonlocal limit
        if limit is None:
            limit = why
        _kill(proc, cg)

    async def watch_disk() -> None:
        assert watch_dir is not None and limits.max_disk_bytes is not None
        cap = limits.max_disk_bytes
        while True:
            await asyncio.sleep(limits.disk_poll_interval)
            if bounded:
                # the kernel refuses writes past the limit; a full tree ends the build now
                # rather than at its timeout (one statvfs, nothing a build can hide from)
                full = await asyncio.to_thread(_buildfs.filled, watch_dir)
            else:
                full = await asyncio.to_thread(directory_size, watch_dir) > cap
            if full:
                stop("disk")
                return

    async def watch_cgroup() -> None:
        # the kernel enforces the limits; this only notices that it did, and ends the build
        # (an OOM kill in v1, or a refused fork, leaves the rest of the build running)
        assert cg is not None
        while True:
            await asyncio.sleep(_EVENT_POLL_S)
            why = _limit_of(cg.events())
            if why is not None:
                stop(why)
                return

    watchers = []
    if watch_dir is not None and limits.max_disk_bytes is not None:
        watchers.append(asyncio.create_task(watch_disk()))
    if cg is not None:
        watchers.append(asyncio.create_task(watch_cgroup()))
    try:
        async with asyncio.timeout(limits.timeout):
            await proc.wait()
    except TimeoutError:
        stop("timeout")
        await proc.wait()
    except BaseException:
        _kill(proc, cg)
        await proc.wait()
        raise
    finally:
        for w in watchers:
            w.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await w
        # the sandbox is gone, so the pipe reaches EOF; a leftover writer is bounded anyway
        try:
            written, truncated = await asyncio.wait_for(pump, 30)
        except TimeoutError:
            written, truncated = 0, False
    events = cg.events() if cg is not None else None
    if limit is None and events is not None:
        limit = _limit_of(events)  # the build ended before the watcher looked
    if (
        limit is None
        and proc.returncode != 0
        and bounded
        and watch_dir is not None
        and await asyncio.to_thread(_buildfs.filled, watch_dir)
    ):
        limit = "disk"  # refused writes (ENOSPC) made the build fail
    rc = proc.returncode
    return SandboxResult(
        returncode=None if limit else rc,
        limit=limit,
        log_bytes=written,
        log_truncated=truncated,
        duration=time.monotonic() - t0,
        signal=-rc if limit is None and rc is not None and rc < 0 else None,
        outside_oom_kills=(events.outside_oom_kills if events is not None
                           and cg is not None and "memory" in cg.dirs else None),
    )


def make_build_tree(tree: Path, max_bytes: int) -> str | None:
    """Create the build tree ``tree``, on a filesystem of ``max_bytes`` where the node can mount
    one (it then needs no ``watch_dir`` polling); returns what bounds it, None if nothing does."""
    return _buildfs.mount_bounded(tree, max_bytes)


def release_build_tree(tree: Path) -> None:
    """Undo ``make_build_tree``'s mount (the directory itself is left to the caller)."""
    _buildfs.unmount(tree)


def describe_limit(limit: Limit, limits: Limits) -> str:
    """How a failure names the limit that stopped the build."""
    mib = 1024 * 1024
    if limit == "timeout":
        return f"exceeded the time limit of {limits.timeout:.0f}s"
    if limit == "disk":
        return f"exceeded the disk limit of {(limits.max_disk_bytes or 0) // mib} MiB"
    if limit == "memory":
        return (
            f"exceeded the memory limit of {(limits.max_memory_bytes or 0) // mib} MiB "
            "(the kernel's out-of-memory killer stopped it)"
        )
    return f"exceeded the pids limit of {limits.max_processes} processes (a fork was refused)"


def _limit_of(events: _cgroup.CgroupEvents) -> Limit | None:
    if events.oom_kills and events.limit_reached:  # killed at its own limit, not the host's
        return "memory"
    if events.fork_refusals:
        return "pids"
    return None
