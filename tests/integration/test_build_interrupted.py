"""A real sandboxed build killed from outside is an interruption (retried, never signed); one
stopped by the node's own limit is a failure naming the limit (ARCHITECTURE §6)."""

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
from rebuilder.testrepo import (
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
