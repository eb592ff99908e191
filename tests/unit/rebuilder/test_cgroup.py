"""Where the node puts build cgroups: discovery over a cgroup tree laid out in a tmp dir.

The kernel side (limits enforced, counters read) is tested with real builds in
tests/integration/test_sandbox_limits.py; this covers the choice of hierarchy and delegation,
which depends on the host's layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pytest

from rebuilder import _cgroup
from rebuilder._cgroup import BuildCgroup, discover


def _mountinfo(*mounts: tuple[Path, str, str]) -> str:
    return "".join(
        f"{30 + i} 1 0:{20 + i} / {point} rw,relatime shared:1 - {fstype} {fstype} {opts}\n"
        for i, (point, fstype, opts) in enumerate(mounts)
    )


def _v2_service(root: Path, controllers: str = "cpu memory pids") -> Path:
    own = root / "system.slice" / "rq.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n")
    return own


def _mark_delegated(own: Path) -> None:
    try:
        os.setxattr(own, "user.delegate", b"1")
    except OSError as e:
        pytest.skip(f"no user xattrs on {own}: {e.strerror}")


def test_delegated_v2_cgroup_moves_the_node_into_a_leaf_and_enables_controllers(
    tmp_path: Path,
) -> None:
    own = _v2_service(tmp_path)
    _mark_delegated(own)
    found = discover(_mountinfo((tmp_path, "cgroup2", "rw")), "0::/system.slice/rq.service\n")
    assert found.version == 2 and found.memory and found.pids, found.reason
    assert found.parents == {"memory": own, "pids": own}
    assert (own / "node" / "cgroup.procs").read_text() == str(os.getpid())
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids"
    cg = found.create(memory_bytes=1 << 30, pids=100)
    assert cg is not None
    d = cg.dirs["memory"]
    assert d.parent == own and d.name.startswith("build-")
    assert (d / "memory.max").read_text() == str(1 << 30)
    assert (d / "pids.max").read_text() == "100"
    assert cg.join_argv(["bwrap"])[-3:] == [str(d / "cgroup.procs"), "--", "bwrap"]


def test_v2_build_cgroup_gets_no_swap_and_group_oom_where_the_kernel_has_them(
    tmp_path: Path,
) -> None:
    for name in ("memory.max", "memory.swap.max", "memory.oom.group", "pids.max"):
        (tmp_path / name).write_text("max\n")  # as the kernel creates them with the cgroup
    BuildCgroup(2, {"memory": tmp_path, "pids": tmp_path}).configure(64 << 20, 10)
    assert (tmp_path / "memory.swap.max").read_text() == "0"
    assert (tmp_path / "memory.oom.group").read_text() == "1"  # an OOM kill takes the whole build


def test_v2_cgroup_not_delegated_is_left_alone(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("for a non-root node, a cgroup it owns counts as delegated to it")
    own = _v2_service(tmp_path)  # root-owned, no delegate mark: e.g. a login session's scope
    found = discover(_mountinfo((tmp_path, "cgroup2", "rw")), "0::/system.slice/rq.service\n")
    assert found.version is None and not found.memory and not found.pids
    assert "not delegated" in found.reason and "Delegate=yes" in found.reason
    assert not (own / "node").exists()
    assert (own / "cgroup.subtree_control").read_text() == ""


def test_hybrid_host_uses_the_v1_hierarchies(tmp_path: Path) -> None:
    unified, mem, pids = tmp_path / "unified", tmp_path / "memory", tmp_path / "pids"
    _v2_service(unified, controllers="hugetlb")
    for d in (mem / "svc", pids):
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text("")
    mounts = _mountinfo(
        (unified, "cgroup2", "rw"), (mem, "cgroup", "rw,memory"), (pids, "cgroup", "rw,pids")
    )
    found = discover(mounts, "8:pids:/\n4:memory:/svc\n0::/system.slice/rq.service\n")
    assert found.version == 1, found.reason
    assert found.parents == {"memory": mem / "svc", "pids": pids}
    cg = found.create(memory_bytes=1 << 20, pids=50)
    assert cg is not None
    assert (cg.dirs["memory"] / "memory.limit_in_bytes").read_text() == str(1 << 20)
    assert (cg.dirs["pids"] / "pids.max").read_text() == "50"
    assert len(cg.join_argv(["x"])) == 4 + 2 + 2  # sh -c script name, two procs, --, x


def test_no_cgroup_filesystem_says_so() -> None:
    found = discover("", "0::/\n")
    assert found.version is None and "no cgroup filesystem" in found.reason
    assert found.create(1, 1) is None


def test_counters_name_the_limit(tmp_path: Path) -> None:
    d = tmp_path / "b"
    d.mkdir()
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    (d / "pids.events").write_text("max 0\n")
    events = BuildCgroup(2, {"memory": d, "pids": d}).events()
    assert events == _cgroup.CgroupEvents(oom_kills=1, fork_refusals=0, limit_reached=1)
    assert events.outside_oom_kills == 0  # killed at its own limit
    (d / "pids.events").write_text("max 3\n")
    assert BuildCgroup(2, {"memory": d, "pids": d}).events().fork_refusals == 3


@pytest.mark.parametrize(("version", "files", "outside"), [
    # an OOM kill while the build's usage never reached its own limit: the host's (or a parent
    # cgroup's) OOM killer took it
    (2, {"memory.events": "max 0\noom 0\noom_kill 2\n"}, 2),
    (2, {"memory.events": "max 3\noom 1\noom_kill 2\n"}, 0),
    (1, {"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
         "memory.failcnt": "0\n"}, 1),
    (1, {"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
         "memory.failcnt": "0\n", "memory.limit_in_bytes": "134217728\n",
         "memory.max_usage_in_bytes": "50000000\n"}, 1),
    # a kernel that counts no failcnt at its own OOM: the peak use at the limit tells
    (1, {"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
         "memory.failcnt": "0\n", "memory.limit_in_bytes": "134217728\n",
         "memory.max_usage_in_bytes": "134217728\n"}, 0),
    (1, {"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
         "memory.failcnt": "0\n", "memory.memsw.failcnt": "4\n"}, 0),
    (1, {"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
         "memory.failcnt": "12\n"}, 0),
])
def test_an_oom_kill_below_the_builds_own_limit_came_from_outside(
        tmp_path: Path, version: Literal[1, 2], files: dict[str, str], outside: int) -> None:
    d = tmp_path / "b"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    events = BuildCgroup(version, {"memory": d}).events()
    assert events.oom_kills >= 1
    assert events.outside_oom_kills == outside


def test_sweep_removes_only_empty_cgroups_of_dead_node_processes(tmp_path: Path) -> None:
    dead = 2**22 + 1  # above the default pid_max: no such process
    gone = tmp_path / f"repro-quorum-build-{dead}-3"
    mine = tmp_path / f"repro-quorum-build-{os.getpid()}-1"
    busy = tmp_path / f"repro-quorum-build-{dead}-4"
    for d in (gone, mine, busy):
        d.mkdir()
    (busy / "cgroup.procs").write_text("1\n")  # a non-empty directory cannot be removed
    found = _cgroup.NodeCgroups(1, {"memory": tmp_path}, "")
    assert found.sweep() == 1
    assert not gone.exists() and mine.exists() and busy.exists()
