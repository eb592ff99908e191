"""coordinator.service.Ingest: what is stored, what is dropped and counted, which status wins.

A real SQLite store and genuine signed envelopes and statuses (tests/unit/coordinator/factory.py);
checking runs in this process (no worker pool), so every path is deterministic.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from coordinator.checks import Accepted
from coordinator.config import CoordinatorConfig, Limits, load_config
from coordinator.service import Ingest
from coordinator.store import Disagreement, Store, open_store
from tests.support import signed_status
from tests.unit.coordinator.factory import Signer, coordinator_toml, sha
from verifier.statement import format_time

A = Signer("rb-alpha")
B = Signer("rb-beta")
DEB = "hello_1.0-1_amd64.deb"


def _config(tmp_path: Path, **limits: int) -> CoordinatorConfig:
    config = load_config(coordinator_toml(tmp_path, [A, B], None, 1))
    return dataclasses.replace(config, limits=dataclasses.replace(Limits(), **limits))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(tmp_path / "c.db")
    await s.ensure_rebuilders([A.id, B.id])
    yield s
    await s.close()


async def _running(ingest: Ingest) -> asyncio.Task[None]:
    return asyncio.create_task(ingest.run(), name="ingest under test")


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_stores_verified_envelopes_and_counts_what_it_drops(tmp_path: Path,
                                                                   store: Store) -> None:
    ingest = Ingest(_config(tmp_path, max_envelope_bytes=64 * 1024), store)
    task = await _running(ingest)
    try:
        good = A.rebuild("hello", "1.0-1", {DEB: sha("h")})
        await ingest.submit(A.id, good.to_bytes())
        await ingest.submit(A.id, good.to_bytes())  # the same envelope again
        await ingest.submit(B.id, good.to_bytes())  # alpha's envelope sent as beta's
        await ingest.submit(A.id, b"{" + b" " * 70_000 + b"}")  # over the size limit
        await ingest.submit("rb-nobody", good.to_bytes())
        async with asyncio.timeout(20):
            await ingest.drained()
    finally:
        await _stop(task)
    m = ingest.metrics
    assert m.received["mqtt"] == 5 and m.ingested["mqtt"] == 1 and m.duplicates == 1
    assert m.dropped["oversized"] == 1 and m.dropped_total() == 3
    assert m.dropped_by_rebuilder[B.id] == 1
    assert await store.envelopes_for_digest(sha("h")) == [good.to_bytes()]
    assert (await store.totals()).envelopes == 1


async def test_offer_refuses_only_when_the_queue_is_full(tmp_path: Path, store: Store) -> None:
    ingest = Ingest(_config(tmp_path, ingest_queue=2), store)
    env = A.rebuild("hello", "1", {DEB: sha("h")}).to_bytes()
    assert ingest.offer(A.id, env) and ingest.offer(A.id, env)
    assert not ingest.offer(A.id, env)  # nothing was taken: the caller submits later
    assert ingest.queued() == 2 and ingest.metrics.received["mqtt"] == 2
    task = await _running(ingest)
    try:
        async with asyncio.timeout(20):
            await ingest.drained()
        assert ingest.offer(A.id, env)
        async with asyncio.timeout(20):
            await ingest.drained()
    finally:
        await _stop(task)
    assert ingest.metrics.ingested["mqtt"] == 1 and ingest.metrics.duplicates == 2


async def test_submit_waits_while_the_queued_bytes_are_over_the_limit(tmp_path: Path,
                                                                      store: Store) -> None:
    env = A.rebuild("hello", "1", {DEB: sha("h")}).to_bytes()
    ingest = Ingest(_config(tmp_path, max_queued_bytes=len(env)), store)
    await ingest.submit(A.id, env)
    await ingest.submit(A.id, env)  # at the limit, not over it: taken
    third = asyncio.create_task(ingest.submit(A.id, env))
    for _ in range(10):  # let it run as far as it can: it must block, nothing drains
        await asyncio.sleep(0)
    assert not third.done() and ingest.queued() == 2  # backpressure on the reader
    task = await _running(ingest)
    try:
        async with asyncio.timeout(20):
            await third
            await ingest.drained()
    finally:
        await _stop(task)
    assert ingest.metrics.received["mqtt"] == 3


async def test_disagreements_and_tampering_are_reported(tmp_path: Path, store: Store) -> None:
    seen: list[Disagreement] = []

    async def publish(d: Disagreement) -> None:
        seen.append(d)
        raise ConnectionError("broker away")  # best effort: the row is kept regardless

    ingest = Ingest(_config(tmp_path), store, on_disagreement=publish)
    built = {DEB: sha("built")}
    a = A.rebuild("hello", "1.0-1", built, upstream={DEB: sha("served")}, buildinfo=built)
    b = B.rebuild("hello", "1.0-1", {DEB: sha("other")}, upstream={DEB: sha("served")})
    accepted = [ingest.check(s.id, e.to_bytes()) for s, e in ((A, a), (B, b))]
    assert all(isinstance(x, Accepted) for x in accepted), accepted
    result = await ingest.save([x for x in accepted if isinstance(x, Accepted)], "http")
    assert [d.artifact for d in seen] == [DEB] == [d.artifact for d in result.new_disagreements]
    assert ingest.metrics.tampered == 1 and ingest.metrics.ingested["http"] == 2
    assert len(await store.disagreements()) == 1


def _status(signer: Signer, state: str = "online", *, at: datetime | None = None,
            session: str = "0123456789abcdef", **fields: object) -> bytes:
    when = format_time(at or datetime.now(UTC))
    return signed_status(signer.key, state, session, time=when, **fields)


async def test_status_messages_are_checked_and_ordered(tmp_path: Path, store: Store) -> None:
    ingest = Ingest(_config(tmp_path), store)
    now = datetime.now(UTC)
    await ingest.handle_status("rb-nobody", _status(A))
    await ingest.handle_status(A.id, b"")  # a retained status cleared
    await ingest.handle_status(A.id, _status(B))  # signed by another rebuilder's key
    await ingest.handle_status(A.id, _status(A, at=now + timedelta(hours=1)))
    assert dict(ingest.metrics.status_dropped) == {
        "unknown-rebuilder": 1, "empty": 1, "bad-signature": 1, "future": 1}

    await ingest.handle_status(A.id, _status(A, at=now, queue=3))
    state = (await store.rebuilder_states())[A.id]
    assert state.state == "online" and state.status is not None and state.status["queue"] == 3
    await ingest.handle_status(A.id, _status(A, at=now - timedelta(minutes=5), queue=9))
    assert ingest.metrics.status_dropped["stale"] == 1
    # the last will of the current session was signed when it connected: older, yet taken
    await ingest.handle_status(A.id, _status(A, "offline", at=now - timedelta(minutes=5),
                                             will=True))
    assert (await store.rebuilder_states())[A.id].state == "offline"
    # a will of an earlier session is stale like any older status
    await ingest.handle_status(A.id, _status(A, at=now + timedelta(seconds=1)))
    await ingest.handle_status(A.id, _status(A, "offline", at=now - timedelta(minutes=5),
                                             session="fedcba9876543210", will=True))
    assert ingest.metrics.status_dropped["stale"] == 2
    assert (await store.rebuilder_states())[A.id].state == "online"


async def test_the_last_status_survives_a_restart(tmp_path: Path, store: Store) -> None:
    now = datetime.now(UTC)
    first = Ingest(_config(tmp_path), store)
    await first.handle_status(A.id, _status(A, at=now))
    again = Ingest(_config(tmp_path), store)  # a restarted coordinator, same database
    await again.handle_status(A.id, _status(A, at=now - timedelta(minutes=1)))
    assert again.metrics.status_dropped["stale"] == 1
