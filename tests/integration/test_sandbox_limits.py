"""Time, log and disk limits of a real sandboxed build (ARCHITECTURE §2.5)."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from rebuilder.build import BuildSettings, run_rebuild
from rebuilder.outcome import RebuildOutcome
from rebuilder.testrepo import (
    TestRepository,
    add_custom_source,
    build_test_repository,
    serve_repository,
)
from tests.support import wait_until

pytestmark = pytest.mark.slow

RULES = """#!/usr/bin/make -f

%:
\tdh $@

override_dh_auto_build:
\t{action}

override_dh_auto_install:
\tinstall -D -m 0755 hello.sh debian/{pkg}/usr/bin/{pkg}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> TestRepository:
    return build_test_repository(tmp_path_factory.mktemp("repo") / "debian")


async def _rebuild(
    repo: TestRepository, work: Path, source: str, action: str, settings: BuildSettings
) -> RebuildOutcome:
    pkg = add_custom_source(repo, source, RULES.format(action=action, pkg=source))
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        return await run_rebuild(pkg.job(base, with_dsc=True), settings, work, session)


def _processes_with(marker: bytes) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                continue
    return found


async def test_timeout_kills_the_whole_sandbox(repo: TestRepository, tmp_path: Path) -> None:
    # a background child and a foreground one: both must die with the sandbox
    action = "(sleep 6131 &) ; sleep 6137"
    t0 = time.monotonic()
    outcome = await _rebuild(
        repo,
        tmp_path / "w",
        "rq-limit-sleep",
        action,
        BuildSettings(timeout=4, diffoscope_enabled=False),
    )
    assert time.monotonic() - t0 < 60
    assert outcome.failure_stage == "build"
    assert outcome.failure is not None and "time limit of" in outcome.failure
    wait_until(
        lambda: not _processes_with(b"sleep\x006137") and not _processes_with(b"sleep\x006131"),
        10,
        "the sandboxed processes to be gone",
    )


async def test_log_is_capped(repo: TestRepository, tmp_path: Path) -> None:
    action = "yes rq-flood-line | head -c 20000000"
    settings = BuildSettings(timeout=120, max_log_mb=1, diffoscope_enabled=False)
    outcome = await _rebuild(repo, tmp_path / "w", "rq-limit-log", action, settings)
    assert outcome.failure is None, outcome.failure  # a chatty build still completes
    assert outcome.log_path is not None
    size = outcome.log_path.stat().st_size
    assert 1024 * 1024 <= size < 1024 * 1024 + 64 * 1024
    assert b"[log truncated" in outcome.log_path.read_bytes()


async def test_one_huge_file_hits_the_file_size_limit(repo: TestRepository, tmp_path: Path) -> None:
    action = "dd if=/dev/zero of=big bs=1M count=64"
    settings = BuildSettings(timeout=120, max_disk_mb=16, diffoscope_enabled=False)
    outcome = await _rebuild(repo, tmp_path / "w", "rq-limit-file", action, settings)
    assert outcome.failure_stage == "build"
    assert not (tmp_path / "w" / "tree").exists()  # the tree is removed after the build


async def test_many_files_hit_the_disk_limit(repo: TestRepository, tmp_path: Path) -> None:
    action = "for i in $$(seq 1 40); do head -c 1000000 /dev/zero > f$$i; done; sleep 60"
    settings = BuildSettings(timeout=120, max_disk_mb=16, diffoscope_enabled=False)
    t0 = time.monotonic()
    outcome = await _rebuild(repo, tmp_path / "w", "rq-limit-disk", action, settings)
    assert time.monotonic() - t0 < 50  # killed by the disk watcher, not by the timeout
    assert outcome.failure_stage == "build"
    assert outcome.failure is not None and "disk limit of 16 MiB" in outcome.failure
