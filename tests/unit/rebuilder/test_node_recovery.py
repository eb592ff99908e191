"""Recovery: interruptions are counted apart from attempts, a requeue starts fresh, a build
killed from outside is retried, leftovers of interrupted attempts are removed."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from rebuilder import queue, recovery
from rebuilder.outcome import Interrupted, StateDiskFull
from rebuilder.queue import MAX_INTERRUPTIONS, WorkerPool
from rebuilder.recovery import DiskGuard, clean_leftovers, killed_from_outside
from tests.state_check import unexplained
from tests.unit.rebuilder.node_helpers import NodeStore, job, mismatch, reproduced


async def test_requeue_of_a_job_that_reproduced_builds_again(node_store: NodeStore) -> None:
    """Regression: the give-up rule counted attempts, so the 4th requeue of a reproduced job
    was signed as "interrupted during 3 attempts" although it never was interrupted."""
    store = node_store.store
    calls: list[Any] = []

    async def builder(j: Any, work: Path) -> Any:
        calls.append(j)
        return reproduced(j)

    runner = node_store.runner(builder)
    await store.add_jobs([job()])
    for n in range(1, MAX_INTERRUPTIONS + 3):
        claimed = await store.claim_job()
        assert claimed is not None and claimed.attempts == n
        result = await runner.run(claimed)
        assert result.verdict == "reproduced", (n, result.failure)
        assert await store.requeue_finished([claimed.id]) == [claimed.id]
    assert len(calls) == MAX_INTERRUPTIONS + 2


async def test_requeue_starts_fresh_after_interruptions(node_store: NodeStore) -> None:
    """A job interrupted (crashes) and then given up is built again once the operator
    requeues it: the requeue resets the interruption count."""
    store = node_store.store
    calls: list[Any] = []

    async def builder(j: Any, work: Path) -> Any:
        calls.append(j)
        return reproduced(j)

    runner = node_store.runner(builder)
    await store.add_jobs([job()])
    for _ in range(MAX_INTERRUPTIONS):
        assert await store.claim_job() is not None
        await store.requeue_running(reason="the node stopped during the build")
    claimed = await store.claim_job()
    assert claimed is not None and claimed.interruptions == MAX_INTERRUPTIONS
    gave_up = await runner.run(claimed)
    assert calls == [] and gave_up.verdict == "failed"
    assert gave_up.failure is not None
    assert f"interrupted {MAX_INTERRUPTIONS} times" in gave_up.failure
    assert "the node stopped during the build" in gave_up.failure
    assert await store.requeue_finished([claimed.id]) == [claimed.id]
    again = await store.claim_job()
    assert again is not None and again.interruptions == 0
    assert (await runner.run(again)).verdict == "reproduced"
    assert len(calls) == 1


async def test_graceful_shutdown_requeue_is_not_an_interruption(node_store: NodeStore) -> None:
    store = node_store.store
    await store.add_jobs([job()])
    for _ in range(MAX_INTERRUPTIONS + 1):
        claimed = await store.claim_job()
        assert claimed is not None
        assert await store.requeue_running([claimed.id]) == 1  # a stop with no reason
    row = await store.job(1)
    assert row is not None and row.interruptions == 0 and row.state == "queued"


async def test_build_killed_from_outside_is_retried_not_signed(node_store: NodeStore) -> None:
    store = node_store.store
    works: list[Path] = []

    async def builder(j: Any, work: Path) -> Any:
        works.append(work)
        (work / "half-made.deb").write_bytes(b"x")
        if len(works) < 3:
            raise Interrupted("dpkg-buildpackage: it was killed by SIGKILL from outside the node")
        return reproduced(j)

    runner = node_store.runner(builder)
    await store.add_jobs([job()])
    claimed = await store.claim_job()
    assert claimed is not None
    result = await runner.run(claimed)
    assert result.verdict == "reproduced" and result.attempt == 3
    assert [w.name for w in works] == ["1-1", "1-2", "1-3"]
    assert not any(w.exists() for w in works)  # the interrupted attempts left nothing
    row = await store.job(1)
    assert row is not None and (row.state, row.attempts, row.interruptions) == ("done", 3, 2)
    assert (await store.counts())["last_seq"] == 1  # only the finished attempt is signed


async def test_build_killed_every_time_gives_up_naming_the_kill(node_store: NodeStore) -> None:
    store = node_store.store

    async def builder(j: Any, work: Path) -> Any:
        raise Interrupted("dpkg-buildpackage: it was killed by SIGKILL from outside the node")

    runner = node_store.runner(builder)
    await store.add_jobs([job()])
    claimed = await store.claim_job()
    assert claimed is not None
    result = await runner.run(claimed)
    assert result.verdict == "failed" and result.attempt == MAX_INTERRUPTIONS + 1
    assert result.failure is not None and "killed by SIGKILL" in result.failure
    assert f"interrupted {MAX_INTERRUPTIONS} times" in result.failure
    assert (await store.counts())["last_seq"] == 1


async def test_full_disk_during_the_attempt_is_not_signed(node_store: NodeStore) -> None:
    store = node_store.store

    async def builder(j: Any, work: Path) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    runner = node_store.runner(builder)
    await store.add_jobs([job()])
    claimed = await store.claim_job()
    assert claimed is not None
    with pytest.raises(StateDiskFull):
        await runner.run(claimed)
    assert (await store.counts())["last_seq"] == 0
    assert not runner.work_dir(claimed).exists()


@pytest.mark.parametrize(
    ("returncode", "oom", "expected"),
    [
        (0, (1, 1), None),
        (2, (1, 1), None),  # the build's own failure
        (-9, (1, 1), "SIGKILL"),  # bwrap itself killed
        (137, (1, 1), "SIGKILL"),  # the command in the sandbox killed (128 + 9)
        (143, (None, None), "SIGTERM"),
        (2, (4, 5), "OOM killer"),  # make failed because the OOM killer took a compiler
        (2, (None, None), None),
        (None, (1, 2), None),  # a limit of ours stopped it: the sandbox reports the limit
    ],
)
def test_killed_from_outside(returncode: int | None, oom: tuple[int | None, int | None],
                             expected: str | None) -> None:
    why = killed_from_outside(returncode, *oom)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why


@pytest.mark.parametrize(
    ("returncode", "host_oom", "build_oom", "expected"),
    [
        # another build stopped at its own limit meanwhile: the host counter moved, this
        # build's cgroup saw nothing, so its failure is its own
        (2, (4, 5), 0, None),
        (2, (None, None), 0, None),
        (2, (1, 1), 2, "killed 2 of its process(es) while it was within its memory limit"),
        (-9, (4, 5), 0, "SIGKILL"),  # a kill from outside is one whatever the counters say
        (2, (4, 5), None, "no memory cgroup per build"),  # advisory limit: the host counter
    ],
)
def test_killed_from_outside_reads_the_builds_own_cgroup_when_it_has_one(
        returncode: int, host_oom: tuple[int | None, int | None], build_oom: int | None,
        expected: str | None) -> None:
    why = killed_from_outside(returncode, *host_oom, build_oom)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why


async def test_start_up_removes_what_no_row_explains(node_store: NodeStore) -> None:
    cfg, store = node_store.config, node_store.store
    node = cfg.node
    runner = node_store.runner(lambda j, w: _mismatch(j, w))
    await store.add_jobs([job("a"), job("b")])
    a = await store.claim_job()
    assert a is not None
    await runner.run(a)  # stored: its log and reports are explained by its build row
    kept = sorted(str(p.relative_to(node.state_dir)) for d in (node.logs_dir, node.reports_dir)
                  for p in d.iterdir())
    assert kept and unexplained(node.state_dir) == []
    b = await store.claim_job()
    assert b is not None
    # what a kill mid-build, or mid-store, leaves behind
    (runner.work_dir(b) / "tree" / "debian").mkdir(parents=True)
    (runner.work_dir(b) / "tree" / "debian" / "x.o").write_bytes(b"half")
    (runner.work_dir(b) / "tree" / "debian").chmod(0o500)  # builds leave read-only dirs
    (node.builds_dir / "1-7").mkdir()
    (node.logs_dir / f"{b.id}-{b.attempts}.log").write_text("copied, never stored")
    (node.reports_dir / f"{b.id}-{b.attempts}-0.html").write_text("copied, never stored")
    assert unexplained(node.state_dir) == [
        "builds/1-7", "logs/2-1.log", "reports/2-1-0.html"]  # b itself is still running
    assert await store.requeue_running(reason="crash") == 1
    removed = await clean_leftovers(cfg, store)
    assert len(removed) == 4
    assert unexplained(node.state_dir) == []
    assert sorted(str(p.relative_to(node.state_dir)) for d in (node.logs_dir, node.reports_dir)
                  for p in d.iterdir()) == kept
    assert list(node.builds_dir.iterdir()) == []


async def _mismatch(j: Any, work: Path) -> Any:
    return mismatch(j, work / "reports")


async def test_cancelled_attempt_leaves_no_build_dir(node_store: NodeStore) -> None:
    cfg, store = node_store.config, node_store.store
    started = asyncio.Event()

    async def slow(j: Any, work: Path) -> Any:
        (work / "tree").mkdir()
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    pool = WorkerPool(node_store.runner(slow),
                      store, 1)
    await store.add_jobs([job()])
    task = asyncio.create_task(pool.run())
    async with asyncio.timeout(10):
        await started.wait()
    assert (cfg.node.builds_dir / "1-1").is_dir()
    await pool.shutdown(grace=0.1)
    async with asyncio.timeout(10):
        await task
    row = await store.job(1)
    assert row is not None and (row.state, row.interruptions) == ("queued", 0)
    assert list(cfg.node.builds_dir.iterdir()) == []
    assert unexplained(cfg.node.state_dir) == []


async def test_full_disk_pauses_the_pool_instead_of_draining_the_queue(
    node_store: NodeStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: with storing failing on ENOSPC, every queued job was claimed within
    milliseconds and left running until a restart."""
    monkeypatch.setattr(queue, "DISK_POLL_S", 0.05)
    cfg, store = node_store.config, node_store.store
    guard = DiskGuard(cfg.node.state_dir, 0)
    claims: list[tuple[str, int]] = []
    seen_while_full: list[dict[str, int]] = []

    async def builder(j: Any, work: Path) -> Any:
        claims.append((j.source, len(claims)))
        if len(claims) <= 2:
            raise sqlite3.OperationalError("database or disk is full")
        return reproduced(j)

    probes: list[bool] = []

    def probe(state_dir: Path) -> bool:  # the disk stays full for a few looks
        probes.append(len(probes) >= 5)
        return probes[-1]

    monkeypatch.setattr(recovery, "_probe", probe)
    real_check = guard.check

    def check() -> Any:
        s = real_check()
        if s.paused:
            seen_while_full.append({"claims": len(claims)})
        return s

    monkeypatch.setattr(guard, "check", check)
    pool = WorkerPool(node_store.runner(builder),
                      store, 2, guard)
    await store.add_jobs([job("a"), job("b"), job("c"), job("d")])
    task = asyncio.create_task(pool.run())
    try:
        async with asyncio.timeout(20):
            while (await store.counts())["done"] < 4:
                await asyncio.sleep(0.02)
    finally:
        await pool.shutdown(grace=1)
        await task
    counts = await store.counts()
    assert (counts["running"], counts["queued"], counts["last_seq"]) == (0, 0, 4)
    assert "not taking jobs" in caplog.text and "taking jobs again" in caplog.text
    # at most the two workers' jobs hit the full disk; the other jobs waited for space
    assert len(claims) == 6 and len(probes) >= 6
    assert seen_while_full and all(s["claims"] == 2 for s in seen_while_full)
    for jid in range(1, 5):
        row = await store.job(jid)
        assert row is not None and row.interruptions == 0  # a full disk is not counted
