"""``rebuilder.queue``: what a finished attempt leaves in the store and on disk, the workers'
intake, and storing that a shutdown cannot tear (real SQLite, a builder returning values).

Interruptions, full disks and the shutdown grace are in test_node_recovery.py and
test_node_store.py."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rebuilder import queue
from rebuilder.queue import StoredResult, WorkerPool, _copy_capped
from tests.unit.rebuilder.node_helpers import NodeStore, job, mismatch, reproduced
from verifier.debian import sha256_file
from verifier.dsse import Envelope
from verifier.statement import RebuildStatement, parse_statement

MARK = b"\n[log truncated by the rebuilder]\n"


@pytest.mark.parametrize(("size", "limit", "cut"), [
    (0, 10, False), (9, 10, False), (10, 10, False), (11, 10, True), (3 << 20, 1 << 20, True),
])
def test_copy_capped_copies_at_most_the_limit_and_says_so(tmp_path: Path, size: int, limit: int,
                                                          cut: bool) -> None:
    src, dest = tmp_path / "src", tmp_path / "sub" / "dest"
    data = bytes(i % 251 for i in range(size))
    src.write_bytes(data)
    assert _copy_capped(src, dest, limit) is cut
    assert dest.read_bytes() == (data[:limit] + MARK if cut else data)


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_a_stored_mismatch_serves_its_report_under_the_digest_it_signed(
        node_store: NodeStore, tmp_path: Path) -> None:
    cfg, store = node_store.config, node_store.store
    stored: list[StoredResult] = []

    async def builder(j: Any, work: Path) -> Any:
        return mismatch(j, work / "out")

    runner = node_store.runner(builder, on_stored=stored.append)
    await store.add_jobs([job()])
    claimed = await store.claim_job()
    assert claimed is not None
    result = await runner.run(claimed)
    assert stored == [result] and result.verdict == "unreproducible"
    node = cfg.node
    # the report and the log are copied under the state directory, named by job and attempt
    html = node.reports_dir / f"{claimed.id}-1-0.html"
    assert html.read_text() == "<html><script>alert(1)</script>diff</html>"
    assert (node.reports_dir / f"{claimed.id}-1-0.txt").is_file()
    assert (node.logs_dir / f"{claimed.id}-1.log").read_text() == "building...\n"
    assert not runner.work_dir(claimed).exists()
    # the signed statement points at the served copy and names its digest
    (envelope,) = _rows(node.db_path, "SELECT envelope FROM attestations")
    statement = parse_statement(Envelope.from_bytes(bytes(envelope[0])).payload)
    assert isinstance(statement, RebuildStatement)
    (verdict,) = statement.verdicts
    assert verdict.report_url == f"{node.public_url}/v1/reports/{claimed.id}-1-0.html"
    assert verdict.report_sha256 == sha256_file(html)
    assert statement.invocation_id == f"{node.id}/{claimed.id}/1"
    assert _rows(node.db_path, "SELECT report_id, report_html, report_sha256 FROM outputs") == [
        (f"{claimed.id}-1-0", f"reports/{claimed.id}-1-0.html", sha256_file(html))]
    assert (await store.counts())["backlog"] == 1  # one outbox row, to publish


async def test_an_oversized_report_is_cut_and_the_cut_copy_is_what_is_signed(
        node_store: NodeStore) -> None:
    cfg = replace(node_store.config,
                  diffoscope=replace(node_store.config.diffoscope, max_report_mb=1))
    store = node_store.store

    async def builder(j: Any, work: Path) -> Any:
        outcome = mismatch(j, work / "out")
        html = outcome.outputs[0].report_html
        assert html is not None
        html.write_bytes(b"<p>" * (1 << 20))  # 3 MiB
        return outcome

    runner = queue.JobRunner(cfg, store, node_store.key, builder)
    await store.add_jobs([job()])
    claimed = await store.claim_job()
    assert claimed is not None
    await runner.run(claimed)
    html = cfg.node.reports_dir / f"{claimed.id}-1-0.html"
    assert html.stat().st_size == (1 << 20) + len(MARK)
    assert _rows(cfg.node.db_path, "SELECT report_sha256 FROM outputs") == [
        (sha256_file(html),)]


async def test_workers_take_every_job_once_and_no_more_than_parallel_at_a_time(
        node_store: NodeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # an idle worker would look again only after an hour: only wake() brings the late jobs in
    monkeypatch.setattr(queue, "IDLE_POLL_S", 3600.0)
    store = node_store.store
    running: set[str] = set()
    most = 0
    built: list[str] = []
    gate = asyncio.Event()

    async def builder(j: Any, work: Path) -> Any:
        nonlocal most
        running.add(j.source)
        most = max(most, len(running))
        await gate.wait()
        running.discard(j.source)
        built.append(j.source)
        return reproduced(j)

    stored: list[StoredResult] = []
    pool = WorkerPool(node_store.runner(builder, on_stored=stored.append), store, 2)
    await store.add_jobs([job(s) for s in ("a", "b", "c")])
    task = asyncio.create_task(pool.run())
    try:
        async with asyncio.timeout(30):
            while len(running) < 2:
                await asyncio.sleep(0.01)
            assert pool.running == 2  # the third job waits for a free worker
            gate.set()
            while len(built) < 3:
                await asyncio.sleep(0.01)
            # the workers are idle now; new jobs are taken at once when the pool is woken
            await store.add_jobs([job(s) for s in ("d", "e")])
            pool.wake()
            while len(built) < 5:
                await asyncio.sleep(0.01)
    finally:
        await pool.shutdown(grace=5)
        await task
    assert sorted(built) == ["a", "b", "c", "d", "e"] and most == 2
    assert sorted(r.job_id for r in stored) == [1, 2, 3, 4, 5]
    counts = await store.counts()
    assert (counts["done"], counts["running"], counts["queued"], counts["last_seq"]) == (
        5, 0, 0, 5)


async def test_a_shutdown_while_storing_lets_the_store_finish(node_store: NodeStore) -> None:
    """Cancelling an attempt (the shutdown's grace ran out) while its result is being written
    must not lose a signed result: the write completes, then the cancellation holds."""
    store = node_store.store
    writing, release = asyncio.Event(), asyncio.Event()
    real = store.finish_build

    async def slow_finish(*args: Any, **kw: Any) -> int:
        writing.set()
        await release.wait()
        return await real(*args, **kw)

    store.finish_build = slow_finish  # type: ignore[method-assign]

    async def builder(j: Any, work: Path) -> Any:
        return reproduced(j)

    runner = node_store.runner(builder)
    await store.add_jobs([job()])
    claimed = await store.claim_job()
    assert claimed is not None
    task = asyncio.create_task(runner.run(claimed))
    async with asyncio.timeout(30):
        await writing.wait()
    task.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await store.job(claimed.id)
    assert row is not None and row.state == "done"
    assert (await store.counts())["last_seq"] == 1
    assert not runner.work_dir(claimed).exists()
