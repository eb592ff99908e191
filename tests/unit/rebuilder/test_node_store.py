"""The state store: migrations, idempotent jobs, claiming, one transaction per finished build."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from rebuilder.db import SCHEMA_VERSION, NewAttestation, SchemaError, Store
from rebuilder.queue import MAX_INTERRUPTIONS, JobRunner, WorkerPool
from tests.unit.rebuilder.node_helpers import NodeStore, job, reproduced
from verifier.dsse import sign


async def test_migrations_and_version(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await Store.open(path)
    assert await store.schema_version() == SCHEMA_VERSION
    await store.close()
    store = await Store.open(path)  # idempotent
    await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="newer"):
        await Store.open(path)
    with pytest.raises(SchemaError, match="rebuilder init"):
        await Store.open(tmp_path / "absent.db", readonly=True)


async def test_jobs_are_idempotent_and_claimed_in_order(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    added = await store.add_jobs([job("a"), job("b")])
    assert [j.source for j in added] == ["a", "b"]
    assert await store.add_jobs([job("a"), job("b"), job("c")]) == [job("c")]
    first = await store.claim_job()
    assert first is not None and (first.source, first.attempts, first.state) == ("a", 1, "running")
    assert first.published == job("a").published
    assert (await store.counts())["queued"] == 2
    assert await store.requeue_running() == 1
    again = await store.claim_job()
    assert again is not None and (again.source, again.attempts) == ("a", 2)
    assert again.invocation_id("n") == "n/1/2"
    await store.close()


async def test_finish_build_is_atomic_and_signed_once(node_store: NodeStore) -> None:
    cfg, store = node_store.config, node_store.store
    key = node_store.key

    async def builder(j: Any, work: Path) -> Any:
        assert work.is_dir() and work.parent == cfg.node.builds_dir
        return reproduced(j)

    runner = JobRunner(cfg, store, key, builder)
    await store.add_jobs([job()])
    claimed = await store.claim_job()
    assert claimed is not None
    result = await runner.run(claimed)
    assert result.verdict == "reproduced"
    assert not runner.work_dir(claimed).exists()  # the build directory is removed
    # Running the same attempt again would sign the same invocation twice: refused, nothing added.
    with pytest.raises(sqlite3.IntegrityError):
        await runner.run(claimed)
    counts = await store.counts()
    assert counts["last_seq"] == 1 and counts["backlog"] == 1
    # A failing write inside the transaction leaves nothing behind.
    with pytest.raises(sqlite3.IntegrityError):
        await store.add_attestation(NewAttestation(
            envelope_sha256=result.envelope_sha256, envelope=sign(b"{}", key).to_bytes(),
            kind="revocation",
            source=None, version=None, arch=None, subjects=(("x", "0" * 64),),
        ))
    assert (await store.counts())["last_seq"] == 1


async def test_interrupted_too_often_becomes_signed_failure(node_store: NodeStore) -> None:
    store = node_store.store
    calls = []

    async def builder(j: Any, work: Path) -> Any:
        calls.append(j)
        return reproduced(j)

    runner = node_store.runner(builder)
    await store.add_jobs([job()])
    for _ in range(MAX_INTERRUPTIONS):
        assert await store.claim_job() is not None
        await store.requeue_running(reason="a crash")
    claimed = await store.claim_job()
    assert claimed is not None
    result = await runner.run(claimed)
    assert calls == [] and result.verdict == "failed"
    assert result.failure is not None and "interrupted" in result.failure


async def test_pipeline_exception_becomes_signed_failure(node_store: NodeStore) -> None:
    store = node_store.store

    async def builder(j: Any, work: Path) -> Any:
        raise RuntimeError("boom")

    runner = node_store.runner(builder)
    await store.add_jobs([job()])
    claimed = await store.claim_job()
    assert claimed is not None
    result = await runner.run(claimed)
    assert result.verdict == "failed" and "RuntimeError: boom" in (result.failure or "")
    job_row = await store.job(claimed.id)
    assert job_row is not None and job_row.state == "failed"


async def test_shutdown_requeues_a_build_past_its_grace(node_store: NodeStore) -> None:
    store = node_store.store
    started = asyncio.Event()

    async def slow(j: Any, work: Path) -> Any:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    pool = WorkerPool(node_store.runner(slow),
                      store, 1)
    await store.add_jobs([job()])
    task = asyncio.create_task(pool.run())
    async with asyncio.timeout(10):
        await started.wait()
    assert pool.running == 1
    await pool.shutdown(grace=0.1)
    async with asyncio.timeout(10):
        await task
    row = await store.job(1)
    assert row is not None and (row.state, row.attempts) == ("queued", 1)
    assert (await store.counts())["last_seq"] == 0


async def test_shutdown_lets_a_quick_build_finish(node_store: NodeStore) -> None:
    store = node_store.store
    release = asyncio.Event()
    started = asyncio.Event()

    async def gated(j: Any, work: Path) -> Any:
        started.set()
        await release.wait()
        return reproduced(j)

    pool = WorkerPool(node_store.runner(gated),
                      store, 2)
    await store.add_jobs([job()])
    task = asyncio.create_task(pool.run())
    async with asyncio.timeout(10):
        await started.wait()
    shutdown = asyncio.create_task(pool.shutdown(grace=30))
    await asyncio.sleep(0)
    release.set()
    async with asyncio.timeout(10):
        await shutdown
        await task
    row = await store.job(1)
    assert row is not None and row.state == "done"

