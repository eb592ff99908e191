"""Time, log, disk, memory and process limits of a real sandboxed build (ARCHITECTURE §2.5).

The memory, process and disk limits are the kernel's (a cgroup per build, the build tree on a
filesystem of its own size); the tests that need them skip, naming what is missing, where the
machine does not give them (``sandbox.enforcement()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest

from rebuilder import sandbox
from rebuilder.config import load_config
from rebuilder.db import Store
from rebuilder.debian.build import BuildSettings, run_rebuild
from rebuilder.debian.node import make_builder
from rebuilder.outcome import RebuildOutcome
from rebuilder.queue import JobRunner
from rqdemo.testrepo import (
    TestRepository,
    add_custom_source,
    build_test_repository,
    serve_repository,
)
from tests.support import wait_until
from tests.unit.rebuilder.node_helpers import amake_node
from verifier.dsse import Envelope
from verifier.keys import load_private_key
from verifier.statement import RebuildStatement, parse_statement

pytestmark = pytest.mark.slow
_ENFORCED = {e.limit: e for e in sandbox.enforcement()}


def _kernel_enforced(limit: str) -> pytest.MarkDecorator:
    e = _ENFORCED[limit]  # type: ignore[index]
    return pytest.mark.skipif(not e.enforced, reason=f"{limit} limit is advisory: {e.mechanism}")


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
    outcome = await _rebuild(repo, tmp_path / "w", "rq-limit-disk", action, settings)
    assert outcome.failure_stage == "build"
    # stopped by the disk limit, not by the timeout (no wall-clock check: the machine is shared)
    assert outcome.failure is not None and "disk limit of 16 MiB" in outcome.failure
    assert "time limit" not in outcome.failure


def _stopped_by(outcome: RebuildOutcome, limit: str, bound: str) -> None:
    """A signed failure naming the limit that stopped the build (failure text and record)."""
    assert outcome.failure_stage == "build", outcome.failure
    assert outcome.failure is not None and f"the {limit} limit of {bound}" in outcome.failure
    assert outcome.internal_parameters.get("stopped_by_limit") == limit, outcome.failure


@_kernel_enforced("memory")
@pytest.mark.parametrize(("limit_mb", "stopped"), [(128, True), (1024, False)])
async def test_memory_limit_stops_the_build(
    repo: TestRepository, tmp_path: Path, limit_mb: int, stopped: bool
) -> None:
    # 400 MiB touched page by page; the control run (a limit above it) shows the action works
    action = "python3 -c 'b = bytearray(400 << 20); print(sum(b[::4096]))'"
    settings = BuildSettings(timeout=120, max_memory_mb=limit_mb, diffoscope_enabled=False)
    outcome = await _rebuild(repo, tmp_path / "w", f"rq-limit-mem{limit_mb}", action, settings)
    if stopped:
        _stopped_by(outcome, "memory", "128 MiB")
    else:
        assert outcome.failure is None, outcome.failure


@_kernel_enforced("pids")
async def test_fork_bomb_stops_at_the_pids_limit(repo: TestRepository, tmp_path: Path) -> None:
    action = "for i in $$(seq 1 400); do sleep 6143 & done; wait"
    settings = BuildSettings(timeout=120, max_processes=64, diffoscope_enabled=False)
    t0 = time.monotonic()
    outcome = await _rebuild(repo, tmp_path / "w", "rq-limit-pids", action, settings)
    assert time.monotonic() - t0 < 60  # stopped at the limit, not by the timeout
    _stopped_by(outcome, "pids", "64")
    wait_until(lambda: not _processes_with(b"sleep\x006143"), 10, "the sleeps to be gone")


@_kernel_enforced("disk")
async def test_usage_hidden_behind_chmod_is_still_limited(
    repo: TestRepository, tmp_path: Path
) -> None:
    # A directory nobody can list (write and search only) takes 40 MB under a 16 MiB limit.
    action = (
        "mkdir hidden && chmod 300 hidden && "
        "for i in $$(seq 1 40); do head -c 1000000 /dev/zero > hidden/f$$i; done; "
        "ls hidden || echo rq-hidden-unlisted; sleep 60"
    )
    settings = BuildSettings(timeout=120, max_disk_mb=16, diffoscope_enabled=False)
    outcome = await _rebuild(repo, tmp_path / "w", "rq-limit-hide", action, settings)
    _stopped_by(outcome, "disk", "16 MiB")  # at the limit, not by the timeout
    assert outcome.log_path is not None
    log = outcome.log_path.read_bytes()
    assert b"No space left on device" in log  # the kernel refused the writes past the limit
    assert not (tmp_path / "w" / "tree").exists()
    assert not (tmp_path / "w" / "tree.ext4").exists()


@_kernel_enforced("pids")
async def test_build_is_not_starved_by_another_holding_processes(
    repo: TestRepository, tmp_path: Path
) -> None:
    """Two builds as the same user: one holding 100 processes leaves the other its own 128.

    With the per-user RLIMIT_NPROC of before, the second build's 40 concurrent children plus
    the first build's 100 exceeded the shared cap of 128 and the second build failed.
    """
    holder = asyncio.create_task(_rebuild(
        repo, tmp_path / "a", "rq-limit-holder",
        "for i in $$(seq 1 100); do sleep 6151 & done; wait",
        BuildSettings(timeout=300, max_processes=128, diffoscope_enabled=False),
    ))  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(_processes_with(b"sleep\x006151")) < 100:
            assert not holder.done(), holder.result().failure
            assert time.monotonic() < deadline, "the holder build never held its processes"
            await asyncio.sleep(0.1)
        outcome = await _rebuild(
            repo, tmp_path / "b", "rq-limit-second",
            "for i in $$(seq 1 40); do sleep 2 & done; wait",
            BuildSettings(timeout=120, max_processes=128, diffoscope_enabled=False),
        )  # fmt: skip
        assert outcome.failure is None, outcome.failure
        assert len(_processes_with(b"sleep\x006151")) == 100  # the holder was not touched
    finally:
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder
    wait_until(lambda: not _processes_with(b"sleep\x006151"), 10, "the holder's processes to go")


_UNPRIVILEGED_RUN = """
import asyncio, io, json, sys
from pathlib import Path
from rebuilder import sandbox
from rebuilder.sandbox import Bind, Limits, SandboxConfig, run_sandboxed

async def main() -> None:
    tree = Path(sys.argv[1])
    tree.mkdir()
    cfg = SandboxConfig(binds=(Bind(tree, "/build", writable=True),), chdir="/build")
    limits = Limits(timeout=60, max_disk_bytes=16 << 20, disk_poll_interval=0.5)
    r = await run_sandboxed(["sh", "-c", sys.argv[2]], cfg, io.BytesIO(), limits, watch_dir=tree)
    disk = next(e for e in sandbox.enforcement() if e.limit == "disk")
    print(json.dumps({"limit": r.limit, "disk_enforced": disk.enforced}))

asyncio.run(main())
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
    reason="needs root (to start the node's code as an unprivileged user) and a system python3",
)
def test_unprivileged_node_counts_usage_hidden_behind_chmod(tmp_path: Path) -> None:
    """Host mode as an unprivileged node: no bounded filesystem, so the tree is measured (the
    limit is reported advisory); a chmod 300 directory no longer hides what it holds."""
    base = Path(tempfile.mkdtemp(prefix="rq-unpriv-", dir="/var/tmp"))
    try:
        base.chmod(0o777)
        action = (
            "mkdir hidden && chmod 300 hidden && "
            "for i in $(seq 1 40); do head -c 1000000 /dev/zero > hidden/f$i; done; sleep 60"
        )
        t0 = time.monotonic()
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
             "-c", _UNPRIVILEGED_RUN, str(base / "tree"), action],
            capture_output=True, text=True, timeout=120, cwd="/",
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2])},
        )  # fmt: skip
        if "No permissions to create new namespace" in out.stderr or (
            "setting up uid map" in out.stderr
        ):
            pytest.skip(f"unprivileged user namespaces unavailable: {out.stderr.strip()}")
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.splitlines()[-1])
        assert result == {"limit": "disk", "disk_enforced": False}
        assert time.monotonic() - t0 < 50  # stopped at the limit, not by the timeout
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@_kernel_enforced("memory")
async def test_job_stopped_by_a_limit_is_stored_as_a_signed_failure_naming_it(
    repo: TestRepository, tmp_path: Path
) -> None:
    """Through the daemon's own path (claim, real build, sign, store): the stored build and its
    signed failure attestation both say which limit stopped it."""
    cfg = await amake_node(tmp_path, "--no-mqtt")
    assert cfg.path is not None
    cfg.path.write_text(cfg.path.read_text().replace(
        "max_memory_mb = 8192", "max_memory_mb = 128"))  # fmt: skip
    cfg = load_config(cfg.path)
    action = "python3 -c 'b = bytearray(400 << 20); print(sum(b[::4096]))'"
    pkg = add_custom_source(repo, "rq-limit-stored", RULES.format(action=action,
                                                                  pkg="rq-limit-stored"))
    store = await Store.open(cfg.node.db_path)
    try:
        async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
            runner = JobRunner(cfg, store, load_private_key(cfg.node.signing_key),
                               make_builder(cfg, session))
            await store.add_jobs([pkg.job(base, with_dsc=True)])
            claimed = await store.claim_job()
            assert claimed is not None
            result = await runner.run(claimed)
        assert result.verdict == "failed"
        assert result.failure is not None and "the memory limit of 128 MiB" in result.failure
        [row] = await store.attestations_since(0, 10)
        statement = parse_statement(Envelope.from_bytes(row.envelope).payload)
        assert isinstance(statement, RebuildStatement)
        assert statement.internal_parameters["stopped_by_limit"] == "memory"
    finally:
        await store.close()
