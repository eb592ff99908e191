"""Running untrusted build commands inside bubblewrap (ARCHITECTURE §2.5, §5 step 3).

A package's build scripts are remote code execution by design. ``run_sandboxed`` runs a command
with an explicit allowlist of read-only system directories (from the host or from a chroot), a
private /proc, /dev and size-capped /tmp, the given bind mounts as the only writable places, no
network (every namespace unshared), a cleared environment, and, when the node runs as root, the
build dropped to ``nobody`` with no capabilities and ``no_new_privs``. The wall-clock timeout
kills the whole sandbox; the log and the build directory are size-capped while it runs::

    cfg = SandboxConfig(binds=(Bind(tree, "/build", writable=True),), chdir="/build/hello-1.0")
    result = await run_sandboxed(["dpkg-buildpackage", "-b"], cfg, log, Limits(timeout=3600))

``bwrap_argv`` is pure, so the exact sandbox can be inspected and tested without running it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

__all__ = [
    "CHROOT_SYSTEM_PATHS",
    "HOST_SYSTEM_PATHS",
    "NOBODY",
    "Bind",
    "Limits",
    "SandboxConfig",
    "SandboxResult",
    "bwrap_argv",
    "bwrap_version",
    "check_hidden",
    "directory_size",
    "run_sandboxed",
]

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
    max_processes: int = 4096
    disk_poll_interval: float = 2.0


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


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None  # None when killed for a limit
    limit: Literal["timeout", "disk", None] = None
    log_bytes: int = 0
    log_truncated: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.limit is None


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
            raise ValueError(f"hidden path {h} is not absolute")
        for rel in HOST_SYSTEM_PATHS:
            if (Path("/") / rel).is_relative_to(h):
                raise ValueError(
                    f"hidden path {h} contains the system directory /{rel} that builds need; "
                    "hide the secret file or its own directory instead"
                )


def _parents(dest: str) -> list[str]:
    parts = [p for p in dest.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def bwrap_argv(
    argv: Sequence[str], cfg: SandboxConfig, limits: Limits, euid: int | None = None
) -> list[str]:
    """The full command line: bwrap options, then the privilege drop, then ``argv``.

    ``euid`` is the user bwrap will run as (default: this process's).
    """
    root = (os.geteuid() if euid is None else euid) == 0
    drop = root if cfg.drop_to_nobody is None else cfg.drop_to_nobody and root
    a = ["bwrap", "--die-with-parent", "--new-session"]
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
    for rel in cfg.system_paths:
        src = cfg.root / rel
        if src.is_symlink():
            a += ["--symlink", os.readlink(src), "/" + rel]
        elif src.is_dir():
            for parent in _parents("/" + rel):
                a += ["--perms", "0755", "--dir", parent]
            a += ["--ro-bind", str(src), "/" + rel]
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
        if _visible(h, cfg):
            a += ["--tmpfs", str(h)] if h.is_dir() else ["--ro-bind", "/dev/null", str(h)]
    env = {"PATH": _SANDBOX_PATH, "HOME": "/nonexistent", "TMPDIR": "/tmp", **cfg.env}  # noqa: S108
    for k, v in env.items():
        a += ["--setenv", k, v]
    a += ["--chdir", cfg.chdir, "--"]
    # prlimit: no core dumps, a cap on processes (fork bombs) and on any one file's size.
    file_cap = limits.max_disk_bytes or 64 * 1024**3
    a += ["prlimit", "--core=0", f"--nproc={limits.max_processes}", f"--fsize={file_cap}", "--"]
    if drop:
        a += [
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
            a += [
                "bwrap", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--dev-bind", "/", "/", "--chdir", cfg.chdir, "--",
            ]  # fmt: skip
    return a + list(argv)


def _visible(path: Path, cfg: SandboxConfig) -> bool:
    if not path.exists():
        return False
    if cfg.root == Path("/"):
        for rel in cfg.system_paths:
            if path.is_relative_to(Path("/") / rel):
                return True
    return any(path.is_relative_to(b.source) for b in cfg.binds)


def directory_size(path: Path) -> int:
    """Bytes allocated under ``path`` (not following symlinks)."""
    total = 0
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
        except OSError:
            continue
    return total


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


def _kill(proc: asyncio.subprocess.Process) -> None:
    # bwrap leads its own process group; killing the group kills the sandbox's pid 1,
    # and with it every process in the sandbox's pid namespace.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_sandboxed(
    argv: Sequence[str],
    cfg: SandboxConfig,
    log: BinaryIO,
    limits: Limits,
    watch_dir: Path | None = None,
) -> SandboxResult:
    """Run ``argv`` in the sandbox, appending its output to ``log``; never raises for the build."""
    if shutil.which("bwrap") is None:
        raise RuntimeError("bubblewrap (bwrap) is not installed")
    full = bwrap_argv(argv, cfg, limits)
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *full,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        env={"PATH": os.environ.get("PATH", _SANDBOX_PATH)},
    )
    assert proc.stdout is not None
    pump = asyncio.create_task(_pump(proc.stdout, log, limits.max_log_bytes))
    limit: Literal["timeout", "disk", None] = None

    async def watch_disk() -> None:
        nonlocal limit
        assert watch_dir is not None and limits.max_disk_bytes is not None
        while True:
            await asyncio.sleep(limits.disk_poll_interval)
            if await asyncio.to_thread(directory_size, watch_dir) > limits.max_disk_bytes:
                limit = "disk"
                _kill(proc)
                return

    watcher = (
        asyncio.create_task(watch_disk())
        if watch_dir is not None and limits.max_disk_bytes is not None
        else None
    )
    try:
        async with asyncio.timeout(limits.timeout):
            await proc.wait()
    except TimeoutError:
        limit = "timeout"
        _kill(proc)
        await proc.wait()
    except BaseException:
        _kill(proc)
        await proc.wait()
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        # the sandbox is gone, so the pipe reaches EOF; a leftover writer is bounded anyway
        try:
            written, truncated = await asyncio.wait_for(pump, 30)
        except TimeoutError:
            written, truncated = 0, False
    return SandboxResult(
        returncode=None if limit else proc.returncode,
        limit=limit,
        log_bytes=written,
        log_truncated=truncated,
        duration=time.monotonic() - t0,
    )
