"""The build cgroup's limits on the real sandbox, without a package build (issue 13).

``run_sandboxed`` with the kernel's memory and pids limits: a command over the limit is stopped
and the result names the limit; a control under it runs; one sandbox holding processes does
not stop another from forking. No test repository is built, so these also run quickly on a
pure cgroup v2 kernel under emulation (``scripts/cgroup_v2_vm.py``), where the package-build
tests of ``test_sandbox_limits.py`` take too long; on the development machine they exercise
the v1 path (docs/rebuild-pipeline.md, "Which cgroup path is tested where").
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from rebuilder import sandbox
from rebuilder.sandbox import Bind, Limits, SandboxConfig, run_sandboxed

pytestmark = pytest.mark.slow


def _kernel_enforced(limit: str) -> pytest.MarkDecorator:
    e = next(e for e in sandbox.enforcement() if e.limit == limit)
    return pytest.mark.skipif(not e.enforced, reason=f"{limit} limit is advisory: {e.mechanism}")


def _cfg(tmp_path: Path, name: str) -> SandboxConfig:
    tree = tmp_path / name
    tree.mkdir()
    tree.chmod(0o777)
    return SandboxConfig(binds=(Bind(tree, "/build", writable=True),), chdir="/build")


ALLOCATE = "python3 -c 'b = bytearray(400 << 20); print(sum(b[::4096]))'"


@_kernel_enforced("memory")
@pytest.mark.parametrize(("limit_mb", "stopped"), [(128, True), (1024, False)])
async def test_memory_limit(tmp_path: Path, limit_mb: int, stopped: bool) -> None:
    log = io.BytesIO()
    r = await run_sandboxed(["sh", "-c", ALLOCATE], _cfg(tmp_path, "t"), log,
                            Limits(timeout=120, max_memory_bytes=limit_mb << 20))
    if stopped:
        assert r.limit == "memory", (r, log.getvalue()[-2000:])
        assert r.returncode is None
    else:
        assert r.limit is None and r.returncode == 0, (r, log.getvalue()[-2000:])


@_kernel_enforced("pids")
async def test_pids_limit(tmp_path: Path) -> None:
    log = io.BytesIO()
    bomb = "for i in $(seq 1 400); do sleep 6143 & done; wait"
    r = await run_sandboxed(["sh", "-c", bomb], _cfg(tmp_path, "t"), log,
                            Limits(timeout=120, max_processes=64))
    assert r.limit == "pids", (r, log.getvalue()[-2000:])


@_kernel_enforced("pids")
async def test_a_sandbox_holding_processes_does_not_starve_another(tmp_path: Path) -> None:
    hold = "for i in $(seq 1 60); do sleep 30 & done; echo held; wait"
    holder = asyncio.create_task(run_sandboxed(
        ["sh", "-c", hold], _cfg(tmp_path, "a"), io.BytesIO(),
        Limits(timeout=20, max_processes=64)))
    await asyncio.sleep(3)
    log = io.BytesIO()
    work = "for i in $(seq 1 40); do sleep 1 & done; wait; echo done"
    r = await run_sandboxed(["sh", "-c", work], _cfg(tmp_path, "b"), log,
                            Limits(timeout=60, max_processes=64))
    assert r.returncode == 0 and r.limit is None, (r, log.getvalue()[-2000:])
    assert b"done" in log.getvalue()
    held = await holder
    assert held.limit == "timeout"  # it really held its processes until killed
