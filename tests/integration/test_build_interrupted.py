"""A real sandboxed build killed from outside is an interruption (retried, never signed); one
stopped by the node's own limit is a failure naming the limit (ARCHITECTURE §6); and one that
fails by itself while another build is OOM-killed at its own limit is a failure, whatever the
host-wide OOM counter says."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from rebuilder.debian.build import BuildSettings, run_rebuild
from rebuilder.outcome import Interrupted
from rebuilder.recovery import oom_kills
from rebuilder.sandbox import enforcement
from rqdemo.testrepo import (
    TestRepository,
    add_custom_source,
    build_test_repository,
    serve_repository,
)

pytestmark = pytest.mark.slow

RULES = """#!/usr/bin/make -f

%:
\tdh $@

override_dh_auto_build:
\tsleep {marker}

override_dh_auto_install:
\tinstall -D -m 0755 hello.sh debian/{pkg}/usr/bin/{pkg}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> TestRepository:
    return build_test_repository(tmp_path_factory.mktemp("repo") / "debian")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def _find(marker: bytes) -> int | None:
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and marker in _cmdline(int(p.name)):
            return int(p.name)
    return None


def _ancestor(pid: int, match: Callable[[int], bool]) -> int | None:
    while pid > 1:
        if match(pid):
            return pid
        pid = _ppid(pid)
    return None


async def _kill_while_building(
    repo: TestRepository, work: Path, source: str, marker: int, pick: Callable[[int], int | None]
) -> BaseException | None:
    pkg = add_custom_source(repo, source, RULES.format(marker=marker, pkg=source))
    settings = BuildSettings(timeout=120, diffoscope_enabled=False)
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        task = asyncio.create_task(run_rebuild(pkg.job(base, with_dsc=True), settings, work,
                                               session))
        try:
            async with asyncio.timeout(90):
                while (sleeper := _find(f"sleep\0{marker}".encode())) is None:
                    assert not task.done(), task.result()
                    await asyncio.sleep(0.1)
            victim = pick(sleeper)
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            await task
        except BaseException as e:
            if not task.done():
                task.cancel()
            return e
    return None


async def test_dpkg_buildpackage_killed_from_outside_is_an_interruption(
    repo: TestRepository, tmp_path: Path
) -> None:
    raised = await _kill_while_building(
        repo, tmp_path / "w", "rq-kill-dpkg", 6173,
        lambda sleeper: _ancestor(sleeper, lambda p: b"dpkg-buildpackage" in _cmdline(p)),
    )
    assert isinstance(raised, Interrupted), raised
    assert "dpkg-buildpackage" in raised.reason and "SIGKILL" in raised.reason
    assert not (tmp_path / "w" / "tree").exists()


async def test_sandbox_killed_from_outside_is_an_interruption(
    repo: TestRepository, tmp_path: Path
) -> None:
    me = os.getpid()
    raised = await _kill_while_building(
        repo, tmp_path / "w", "rq-kill-bwrap", 6179,
        lambda sleeper: _ancestor(sleeper, lambda p: _ppid(p) == me),  # the outer bwrap
    )
    assert isinstance(raised, Interrupted), raised
    assert "the sandbox was killed by SIGKILL" in raised.reason


async def test_node_time_limit_is_a_failure_naming_the_limit(
    repo: TestRepository, tmp_path: Path
) -> None:
    pkg = add_custom_source(repo, "rq-kill-limit", RULES.format(marker=6197, pkg="rq-kill-limit"))
    settings = BuildSettings(timeout=5, diffoscope_enabled=False)
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        outcome = await run_rebuild(pkg.job(base, with_dsc=True), settings, tmp_path / "w",
                                    session)
    assert outcome.failure_stage == "build" and outcome.limit == "timeout"
    assert outcome.failure is not None and "time limit of" in outcome.failure


ALLOC_RULES = RULES.replace("sleep {marker}", "{action}")
# waits, in the sandbox, for the host's OOM-kill counter (/proc/vmstat is not namespaced) to
# pass {before}, then fails by itself: exit 1
BYSTANDER = (
    "sh -c 'i=0; while [ \"$$(sed -n \"s/^oom_kill //p\" /proc/vmstat)\" -le {before} ]; do"
    " i=$$((i+1)); [ $$i -le 1200 ] || break; sleep 0.1; done;"
    " echo \"rq-bystander: host OOM kills since boot:"
    " $$(sed -n \"s/^oom_kill //p\" /proc/vmstat)\";"
    " exit 1' rq-oom-bystander-{marker}"
)


@pytest.mark.skipif(not next(e for e in enforcement() if e.limit == "memory").enforced,
                    reason="no memory cgroup per build here: only the host-wide OOM counter")
async def test_a_failure_while_a_parallel_build_is_oom_killed_at_its_limit_is_a_failure(
    repo: TestRepository, tmp_path: Path
) -> None:
    before = oom_kills()
    assert before is not None, "/proc/vmstat has no oom_kill counter"
    bystander = add_custom_source(repo, "rq-oom-bystander", ALLOC_RULES.format(
        action=BYSTANDER.format(before=before, marker=6311), pkg="rq-oom-bystander"))
    hog = add_custom_source(repo, "rq-oom-hog", ALLOC_RULES.format(
        action="python3 -c 'b = bytearray(400 << 20); print(sum(b[::4096]))'", pkg="rq-oom-hog"))
    settings = BuildSettings(timeout=300, max_memory_mb=128, diffoscope_enabled=False)
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        waiting = asyncio.create_task(run_rebuild(bystander.job(base, with_dsc=True), settings,
                                                  tmp_path / "bystander", session))
        try:
            # the bystander's sandbox runs (and counted the host's OOM kills) before the hog
            # starts, so the hog's OOM kill falls within the bystander's build
            async with asyncio.timeout(120):
                while _find(b"rq-oom-bystander-6311") is None:
                    assert not waiting.done(), waiting.result()
                    await asyncio.sleep(0.1)
            hogged = await run_rebuild(hog.job(base, with_dsc=True), settings,
                                       tmp_path / "hog", session)
            failed = await waiting  # Interrupted would be raised here
        finally:
            if not waiting.done():
                waiting.cancel()
    after = oom_kills()
    assert after is not None and after > before
    # the hog: stopped by its own memory limit, a failure naming it
    assert hogged.failure_stage == "build" and hogged.limit == "memory", hogged.failure
    # the bystander saw the OOM kill happen and then failed by itself: a failure, its status
    assert failed.log_path is not None
    assert b"rq-bystander: host OOM kills since boot:" in failed.log_path.read_bytes()
    assert failed.failure_stage == "build" and failed.limit is None, failed.failure
    assert failed.failure is not None and "exited with status" in failed.failure
