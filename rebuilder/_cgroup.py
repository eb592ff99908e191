"""One cgroup per build: memory, swap and process limits the kernel enforces (ARCHITECTURE §2.5).

``node_cgroups()`` finds, once per process, where this node may create cgroups:

* cgroup v2 (the unified hierarchy, Debian's default since bullseye): the node's own cgroup when
  it was delegated (systemd ``Delegate=yes``; systemd marks such a cgroup with the
  ``trusted.delegate`` or ``user.delegate`` extended attribute, and hands it to ``User=``), or
  the root cgroup when the node runs as root outside any service manager. The node moves its own
  processes into a ``node`` leaf (a v2 cgroup with children holds no processes), enables
  ``memory`` and ``pids`` for the children, and creates ``build-<pid>-<n>`` next to ``node``.
  Each build gets ``memory.max``, ``memory.swap.max = 0``, ``memory.oom.group = 1`` (an
  out-of-memory kill takes the whole build) and ``pids.max``.
* cgroup v1 (hosts with the legacy or hybrid layout): a ``repro-quorum-build-<pid>-<n>`` child
  of the node's cgroup in the ``memory`` and ``pids`` hierarchies, where the node may write
  there (root); ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes`` with swap
  accounting) and ``pids.max``.

A build process joins its cgroup before it executes bwrap (``join_argv``), so nothing of the
sandbox ever runs outside it. What stopped a build is read from the kernel's own counters
(``memory.events`` / ``memory.oom_control`` ``oom_kill``, ``pids.events`` ``max``), never
guessed from an exit status; an OOM kill while the build never reached its own limit
(``memory.events`` ``oom``; v1 ``memory.failcnt`` or the peak use at the limit) came from
outside: the host or a parent cgroup ran out of memory::

    cg = node_cgroups().create(memory_bytes=8 << 30, pids=4096)
    argv = cg.join_argv(["bwrap", ...])
    ...
    cg.events().oom_kills, cg.events().fork_refusals, cg.events().outside_oom_kills
    cg.kill(); cg.remove()
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["BuildCgroup", "CgroupEvents", "NodeCgroups", "node_cgroups"]

log = logging.getLogger("rebuilder.cgroup")
_CONTROLLERS = ("memory", "pids")
# Joins the cgroups named before "--" (writes its own pid to each cgroup.procs), then becomes
# the command after it. Exit status 125 and a message when a cgroup cannot be joined: the
# command then never runs.
_JOIN = (
    'while [ "$1" != -- ]; do echo $$ > "$1" || '
    '{ echo "sandbox: cannot join the build cgroup ($1)" >&2; exit 125; }; shift; done; '
    'shift; exec "$@"'
)
JOIN_FAILED = 125
_counter = itertools.count(1)


@dataclass(frozen=True)
class CgroupEvents:
    oom_kills: int = 0  # processes of the build any OOM killer killed (its own limit's or not)
    fork_refusals: int = 0  # forks refused at pids.max
    # times the build reached its own memory limit (v2 memory.events ``oom``, v1 failcnt or its
    # peak use): an OOM kill without it came from outside (the host or a parent cgroup)
    limit_reached: int = 0

    @property
    def outside_oom_kills(self) -> int:
        """OOM kills of the build's processes that its own memory limit did not cause."""
        return self.oom_kills if not self.limit_reached else 0


@dataclass(frozen=True)
class _Mount:
    point: Path
    fstype: str
    options: frozenset[str]


def _mounts(mountinfo: str) -> list[_Mount]:
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        out.append(_Mount(Path(point), rfields[0], frozenset(rfields[2].split(","))))
    return out


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """``/proc/self/cgroup`` -> {controller or "" for v2: path}."""
    out: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii", errors="replace")


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[k] = int(v)
    return out


def _number(path: Path) -> int | None:
    try:
        return int(_read(path).strip())
    except (OSError, ValueError):
        return None  # absent (no swap accounting) or unreadable


def _v1_limit_reached(mem: Path) -> int:
    """How often (at least once) a v1 build's memory use reached its own limit: ``failcnt``,
    or, where a kernel does not count that (some report 0 after an OOM kill at the limit), a
    peak use (``max_usage_in_bytes``) at the limit."""
    reached = 0
    for prefix in ("memory.", "memory.memsw."):
        failcnt = _number(mem / f"{prefix}failcnt") or 0
        peak, limit = _number(mem / f"{prefix}max_usage_in_bytes"), _number(
            mem / f"{prefix}limit_in_bytes")
        at_limit = peak is not None and limit is not None and peak >= limit
        reached += max(failcnt, 1 if at_limit else 0)
    return reached


def _delegated(path: Path) -> bool:
    for attr in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, attr) == b"1":
                return True
    st = path.stat()
    # systemd hands a delegated cgroup to the service's User=; root owns every other one
    return os.geteuid() != 0 and st.st_uid == os.geteuid()


class BuildCgroup:
    """The cgroup(s) of one build: one directory in v2, one per controller in v1."""

    def __init__(self, version: Literal[1, 2], dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs  # controller -> directory (v2: the same directory for both)

    @property
    def _unique_dirs(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    def join_argv(self, argv: Sequence[str]) -> list[str]:
        procs = [str(d / "cgroup.procs") for d in self._unique_dirs]
        return ["/bin/sh", "-c", _JOIN, "sandbox-join", *procs, "--", *argv]

    def configure(self, memory_bytes: int | None, pids: int | None) -> None:
        mem = self.dirs.get("memory")
        if mem is not None and memory_bytes is not None:
            if self.version == 2:
                _write(mem / "memory.max", str(memory_bytes))
                if (mem / "memory.swap.max").exists():
                    _write(mem / "memory.swap.max", "0")
                if (mem / "memory.oom.group").exists():  # kernel 4.19+
                    _write(mem / "memory.oom.group", "1")
            else:
                _write(mem / "memory.limit_in_bytes", str(memory_bytes))
                if (mem / "memory.memsw.limit_in_bytes").exists():
                    _write(mem / "memory.memsw.limit_in_bytes", str(memory_bytes))
        pid_dir = self.dirs.get("pids")
        if pid_dir is not None and pids is not None:
            _write(pid_dir / "pids.max", str(pids))

    def events(self) -> CgroupEvents:
        oom = refused = reached = 0
        with contextlib.suppress(OSError):
            mem = self.dirs.get("memory")
            if mem is not None:
                if self.version == 2:
                    counters = _keyed(_read(mem / "memory.events"))
                    oom, reached = counters.get("oom_kill", 0), counters.get("oom", 0)
                else:
                    oom = _keyed(_read(mem / "memory.oom_control")).get("oom_kill", 0)
                    reached = _v1_limit_reached(mem)
        with contextlib.suppress(OSError):
            pid_dir = self.dirs.get("pids")
            if pid_dir is not None:
                refused = _keyed(_read(pid_dir / "pids.events")).get("max", 0)
        return CgroupEvents(oom, refused, reached)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self._unique_dirs:
            with contextlib.suppress(OSError):
                found.update(int(x) for x in _read(d / "cgroup.procs").split())
        return sorted(found)

    def kill(self, rounds: int = 1) -> None:
        """SIGKILL every process of the build, wherever in its process tree it is.

        One round does not wait (safe on the event loop); more rounds sleep 10 ms between them
        to catch processes forked meanwhile (v1, and kernels before 5.14 without cgroup.kill).
        """
        for d in self._unique_dirs:
            if (d / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    _write(d / "cgroup.kill", "1")
        for i in range(rounds):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if i + 1 < rounds:
                time.sleep(0.01)

    def remove(self, wait: float = 10.0) -> None:
        """Remove the cgroup once its processes are gone (kills stragglers first)."""
        deadline = time.monotonic() + wait
        if self.pids():
            self.kill(rounds=20)
        for d in self._unique_dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        log.warning("could not remove build cgroup %s: %s", d, e.strerror)
                        break
                    time.sleep(0.02)


@dataclass
class NodeCgroups:
    """Where this node creates build cgroups, and which limits that gives."""

    version: Literal[1, 2] | None
    parents: dict[str, Path]  # controller -> directory under which builds get a child
    reason: str  # why a controller is missing (empty when both are there)

    @property
    def memory(self) -> bool:
        return "memory" in self.parents

    @property
    def pids(self) -> bool:
        return "pids" in self.parents

    def describe(self, controller: str) -> str:
        if controller not in self.parents:
            return self.reason or "no cgroup controller available"
        return f"cgroup v{self.version} {self.parents[controller]}"

    @property
    def _prefix(self) -> str:
        return "build" if self.version == 2 else "repro-quorum-build"

    def sweep(self) -> int:
        """Remove empty build cgroups an earlier, crashed node left (systemd removes a
        delegated subtree with its service; v1 hierarchies keep them)."""
        removed = 0
        for parent in set(self.parents.values()):
            with contextlib.suppress(OSError):
                for d in parent.glob(f"{self._prefix}-*-*"):
                    owner = d.name[len(self._prefix) + 1 :].split("-", 1)[0]
                    # only those of node processes that are gone (another may be starting one)
                    if d.is_dir() and owner.isdigit() and not Path(f"/proc/{owner}").exists():
                        try:
                            d.rmdir()
                            removed += 1
                        except OSError:
                            continue  # still running: another node process's build
        return removed

    def create(self, memory_bytes: int | None, pids: int | None) -> BuildCgroup | None:
        """A new, configured build cgroup; None when this node has no controller at all."""
        if not self.parents or self.version is None:
            return None
        name = f"{self._prefix}-{os.getpid()}-{next(_counter)}"
        dirs: dict[str, Path] = {}
        made: list[Path] = []
        try:
            for c, parent in self.parents.items():
                d = parent / name
                if d not in made:
                    d.mkdir()
                    made.append(d)
                dirs[c] = d
            cg = BuildCgroup(self.version, dirs)
            cg.configure(memory_bytes, pids)
        except OSError:
            for d in made:
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
        return cg


def discover(
    mountinfo: str | None = None, proc_cgroup: str | None = None
) -> NodeCgroups:
    """Find (and in v2 prepare) the node's cgroup subtree; never raises."""
    try:
        mountinfo = mountinfo if mountinfo is not None else _read(Path("/proc/self/mountinfo"))
        proc_cgroup = (
            proc_cgroup if proc_cgroup is not None else _read(Path("/proc/self/cgroup"))
        )
    except OSError as e:
        return NodeCgroups(None, {}, f"cannot read the process's cgroups: {e.strerror}")
    mounts = _mounts(mountinfo)
    own = _own_paths(proc_cgroup)
    reasons = []
    v2 = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if v2 is not None and "" in own:
        found, why = _prepare_v2(v2.point, own[""])
        if found is not None:
            return found
        reasons.append(why)
    parents: dict[str, Path] = {}
    for c in _CONTROLLERS:
        m = next((m for m in mounts if m.fstype == "cgroup" and c in m.options), None)
        if m is None or c not in own:
            continue
        d = m.point / own[c].lstrip("/")
        if os.access(d, os.W_OK | os.X_OK) and os.access(d / "cgroup.procs", os.W_OK):
            parents[c] = d
        else:
            reasons.append(f"cgroup v1 {c} {d} is not writable by this node")
    if parents:
        missing = [c for c in _CONTROLLERS if c not in parents]
        return NodeCgroups(1, parents, "; ".join(reasons) if missing else "")
    if v2 is None and not any(m.fstype == "cgroup" for m in mounts):
        reasons.append("no cgroup filesystem is mounted")
    return NodeCgroups(None, {}, "; ".join(reasons) or "no usable cgroup controller")


def _prepare_v2(mount: Path, own_path: str) -> tuple[NodeCgroups | None, str]:
    own = mount / own_path.lstrip("/")
    try:
        available = set(_read(own / "cgroup.controllers").split())
    except OSError as e:
        return None, f"cgroup v2 {own}: {e.strerror}"
    missing = [c for c in _CONTROLLERS if c not in available]
    if len(missing) == len(_CONTROLLERS):
        return None, (
            f"cgroup v2 {own} offers neither memory nor pids (on a hybrid host they belong "
            "to the v1 hierarchies)"
        )
    wanted = [c for c in _CONTROLLERS if c in available]
    try:
        if own == mount:
            if os.geteuid() != 0:
                return None, "the node runs in the root cgroup but not as root"
            parent = own / "repro-quorum"
            parent.mkdir(exist_ok=True)
            _enable(own, wanted)
        else:
            if own.name == "node" and _enabled(own.parent, wanted):
                own = own.parent  # prepared earlier by this process
            elif not _delegated(own):
                return None, (
                    f"cgroup v2 {own} is not delegated to this node (systemd Delegate=yes, "
                    "or run the node in a cgroup it owns)"
                )
            else:
                _move_into_leaf(own, wanted)
            parent = own
            _enable(own, wanted)
        if parent != own:
            _enable(parent, wanted)
    except OSError as e:
        return None, f"cgroup v2 {own}: cannot set up build cgroups: {e.strerror}"
    reason = (
        f"cgroup v2 {own} does not offer {', '.join(missing)}" if missing else ""
    )
    return NodeCgroups(2, {c: parent for c in wanted}, reason), ""


def _move_into_leaf(own: Path, controllers: Sequence[str]) -> None:
    """Move every process of ``own`` into ``own/node`` and enable ``controllers`` for its
    children (v2 allows that only once ``own`` holds no process; one forked meanwhile is moved
    on the next round)."""
    leaf = own / "node"
    leaf.mkdir(exist_ok=True)
    for attempt in range(5):
        for pid in _read(own / "cgroup.procs").split():
            with contextlib.suppress(ProcessLookupError):
                _write(leaf / "cgroup.procs", pid)
        try:
            _enable(own, controllers)
            return
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == 4:
                raise


def _enabled(d: Path, controllers: Sequence[str]) -> bool:
    try:
        have = set(_read(d / "cgroup.subtree_control").split())
    except OSError:
        return False
    return all(c in have for c in controllers)


def _enable(d: Path, controllers: Sequence[str]) -> None:
    if not _enabled(d, controllers):
        _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))


@functools.cache
def node_cgroups() -> NodeCgroups:
    """This process's build cgroup setup, found (and prepared) on first use."""
    found = discover()
    found.sweep()
    return found
