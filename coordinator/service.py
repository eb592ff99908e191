"""The coordinator's ingest: a bounded queue of received messages, checked and stored in batches.

MQTT (``coordinator.mqtt``) and HTTP catch-up (``coordinator.catchup``) both hand what they
receive to ``Ingest``; it verifies every envelope (``coordinator.checks``) before storing it,
counts every drop by reason, and reports new disagreements to whoever publishes them.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from coordinator.checks import (
    Accepted,
    Dropped,
    check_batch,
    check_message,
    parse_status_body,
    unpack,
)
from coordinator.config import CoordinatorConfig
from coordinator.ratelimit import RateLimitedLog
from coordinator.store import BatchResult, Disagreement, Store
from coordinator.workers import init_watched_worker
from verifier.errors import BadDataError
from verifier.keys import public_key_pem
from verifier.status import StatusError, open_status

__all__ = ["STATUS_DROP_REASONS", "Ingest", "Metrics"]

log = logging.getLogger(__name__)

# Checking one envelope takes ~0.25 ms; yielding every few of them keeps queries answered fast
# while a large batch is being verified.
_YIELD_EVERY = 8
_IN_FLIGHT = 4  # batches being checked while one is stored
# A batch sent to a worker, and a transaction, each have a fixed cost (a few milliseconds for a
# transaction: every index page it touches is written again). Under a steady stream of
# messages they wait a little for company; when nothing more is on its way they go at once.
_COALESCE_S = 0.02  # longest a message waits for others to be checked with it
_STORE_WAIT_S = 0.1  # longest a checked message waits for others to share its transaction
STATUS_DROP_REASONS = (
    "unknown-rebuilder", "empty", "unsigned", "bad-signature", "malformed", "future", "stale",
)
STATUS_CLOCK_SKEW_S = 600.0  # a status dated later than now plus this is refused


def _printable(rebuilder_id: str) -> str:
    return rebuilder_id.encode("unicode_escape").decode("ascii")[:80]


@dataclass
class Metrics:
    received: Counter[str] = field(default_factory=Counter)  # by source: mqtt | http
    ingested: Counter[str] = field(default_factory=Counter)  # newly stored, by source
    duplicates: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # by reason
    dropped_by_rebuilder: Counter[str] = field(default_factory=Counter)
    # Status messages dropped, by reason: unknown-rebuilder, empty, unsigned, bad-signature,
    # malformed, future, stale (docs/api.md).
    status_dropped: Counter[str] = field(default_factory=Counter)
    catchup_errors: Counter[str] = field(default_factory=Counter)  # by rebuilder
    disagreements_published: int = 0
    tampered: int = 0  # stored attestations reporting tampering (branch `debian`)

    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def status_invalid(self) -> int:
        return sum(self.status_dropped.values())


class Ingest:
    """Receives raw messages, verifies them, stores them; one writer task, batched."""

    def __init__(
        self,
        config: CoordinatorConfig,
        store: Store,
        on_disagreement: Callable[[Disagreement], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = Metrics()
        self.on_disagreement = on_disagreement
        self._keys = {r.id: (r.public_key, r.keyid) for r in config.rebuilders}
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(
            config.limits.ingest_queue
        )
        self._idle = asyncio.Event()
        self._idle.set()
        self._drop_log = RateLimitedLog(log)
        self._last_status: dict[str, tuple[float, str | None]] = {}  # time, session
        self._pool: ProcessPoolExecutor | None = None
        self._in_flight = 0
        self._queued_bytes = 0
        self._space = asyncio.Event()
        self._gathering = False  # the check stage holds messages not yet handed to checking

    # ---- receiving -----------------------------------------------------------------------

    async def submit(self, rebuilder_id: str, payload: bytes) -> None:
        """Queue one MQTT attestation message.

        Oversized messages are dropped here, before they take memory in the queue; when the
        queue holds ``max_queued_bytes`` this waits (backpressure on the MQTT reader).
        """
        if self._oversized(rebuilder_id, payload):
            return
        while self._queued_bytes > self.config.limits.max_queued_bytes:
            self._space.clear()
            await self._space.wait()
        self._idle.clear()
        self._queued_bytes += len(payload)
        await self._queue.put((rebuilder_id, payload))

    def offer(self, rebuilder_id: str, payload: bytes) -> bool:
        """As ``submit`` when the queue has room at once, without waiting; False: it has not
        (nothing was done, the caller ``submit``s later)."""
        if self._queue.full() or self._queued_bytes > self.config.limits.max_queued_bytes:
            return False
        if self._oversized(rebuilder_id, payload):
            return True
        self._idle.clear()
        self._queued_bytes += len(payload)
        self._queue.put_nowait((rebuilder_id, payload))
        return True

    def _oversized(self, rebuilder_id: str, payload: bytes) -> bool:
        """Count a received message; drop it (True) when it is over the size limit."""
        self.metrics.received["mqtt"] += 1
        limit = self.config.limits.max_envelope_bytes
        if len(payload) <= limit:
            return False
        self.drop(
            Dropped(_printable(rebuilder_id), "oversized", f"{len(payload)} bytes, limit {limit}"),
            "mqtt",
        )
        return True

    def queued(self) -> int:
        return self._queue.qsize()

    async def drained(self) -> None:
        """Wait until every submitted message has been checked and stored."""
        await self._idle.wait()

    def drop(self, d: Dropped, source: str) -> None:
        self.metrics.dropped[d.reason] += 1
        self.metrics.dropped_by_rebuilder[d.rebuilder] += 1
        # A flood of forged messages must not flood the log: at most one line per reason a
        # minute; the counters in /metrics stay exact.
        self._drop_log(d.reason, "dropped %s message for rebuilder %r: %s: %s",
                       source, d.rebuilder[:80], d.reason, d.detail[:300])

    def check(self, rebuilder_id: str, payload: bytes) -> Accepted | Dropped:
        return check_message(
            rebuilder_id, payload, self._keys, self.config.limits.max_envelope_bytes
        )

    def start_workers(self, n: int) -> None:
        """Check envelopes in ``n`` worker processes (0: in this process, between tasks)."""
        if n <= 0:
            return
        pems = {r.id: public_key_pem(r.public_key) for r in self.config.rebuilders}
        # spawn, not fork: this process already runs threads (aiosqlite, the MQTT client).
        self._pool = ProcessPoolExecutor(
            n,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_watched_worker,  # exits when the coordinator dies
            initargs=(os.getpid(), pems, self.config.limits.max_envelope_bytes),
        )

    def stop_workers(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _check_many(self, batch: list[tuple[str, bytes]]) -> list[Accepted | Dropped]:
        if self._pool is not None:
            loop = asyncio.get_running_loop()
            try:
                packed = await loop.run_in_executor(self._pool, check_batch, batch)
                return [unpack(r, payload) for r, (_, payload) in zip(packed, batch, strict=True)]
            except (BrokenProcessPool, RuntimeError, OSError) as e:
                # Never lose messages to a broken pool: check in this process from now on.
                log.error("verification workers failed (%s); checking in-process instead", e)
                self.stop_workers()
        results: list[Accepted | Dropped] = []
        for i, (rebuilder_id, payload) in enumerate(batch):
            results.append(self.check(rebuilder_id, payload))
            if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
        return results

    def _status_drop(self, rebuilder_id: str, reason: str, detail: str) -> None:
        self.metrics.status_dropped[reason] += 1
        self._drop_log("status " + reason, "dropped status message for rebuilder %r: %s: %s",
                       _printable(rebuilder_id), reason, detail[:300])

    async def handle_status(self, rebuilder_id: str, payload: bytes) -> None:
        """Apply one signed status message (docs/api.md), or drop and count it.

        Accepted: signed by the rebuilder's registered key, dated, not in the future, and not
        older than the last accepted one, except the node's last will: it was signed when the
        node connected, so it is older than that connection's online statuses; it is accepted
        for the session (connection) it names, and only while that session is the latest.
        """
        key = self._keys.get(rebuilder_id)
        if key is None:
            self._status_drop(rebuilder_id, "unknown-rebuilder", "not registered")
            return
        if not payload:
            self._status_drop(rebuilder_id, "empty", "retained status cleared")
            return
        try:
            body = open_status(payload, key[0], self.config.limits.max_status_bytes)
        except StatusError as e:
            self._status_drop(rebuilder_id, e.kind, str(e))
            return
        try:
            status = parse_status_body(body)
            if status.time is None:
                raise BadDataError("status", "time is required")
        except BadDataError as e:
            self._status_drop(rebuilder_id, "malformed", str(e))
            return
        now = time.time()
        when = status.time.timestamp()
        if when > now + STATUS_CLOCK_SKEW_S:
            self._status_drop(rebuilder_id, "future", f"dated {status.time.isoformat()}")
            return
        last = self._last_status.get(rebuilder_id)
        if last is None:
            last = await self._stored_status(rebuilder_id)
        if last is not None:
            last_time, last_session = last
            current_will = status.will and status.session is not None and (
                status.session == last_session
            )
            if when < last_time and not current_will:
                self._status_drop(
                    rebuilder_id, "stale",
                    f"dated {status.time.isoformat()}, older than the last status accepted",
                )
                return
        self._last_status[rebuilder_id] = (max(when, last[0] if last else when), status.session)
        seen: float | None = None
        if status.state == "online":
            # A retained message can be old: never believe it is newer than now.
            seen = min(now, when)
        await self.store.record_status(
            rebuilder_id,
            status.state,
            {
                "state": status.state,
                "queue": status.queue,
                "running": status.running,
                "version": status.version,
                "time": status.time.isoformat(),
                "session": status.session,
                "will": status.will,
            },
            seen,
        )

    async def _stored_status(self, rebuilder_id: str) -> tuple[float, str | None] | None:
        """The last accepted status (time, session), from the database after a restart."""
        state = (await self.store.rebuilder_states()).get(rebuilder_id)
        if state is None or not state.status or not isinstance(state.status.get("time"), str):
            return None
        try:
            when = datetime.fromisoformat(state.status["time"]).timestamp()
        except ValueError:
            return None
        session = state.status.get("session")
        return when, session if isinstance(session, str) else None

    # ---- storing -------------------------------------------------------------------------

    async def save(
        self, accepted: Sequence[Accepted], source: str, cursor: tuple[str, str] | None = None
    ) -> BatchResult:
        result = await self.store.store_batch(accepted, cursor=cursor)
        self.metrics.ingested[source] += len(result.stored)
        self.metrics.duplicates += result.duplicates
        for d in result.new_disagreements:
            log.warning(
                "disagreement on %s %s %s: %s", d.source, d.version, d.artifact, d.digests
            )
            if self.on_disagreement is not None:
                try:
                    await self.on_disagreement(d)
                except Exception:  # publishing is best effort: the row is stored and served
                    log.exception("could not publish disagreement %d", d.id)
        for a in result.tampered:
            files = ", ".join(o.name for o in a.outputs if o.verdict == "tampered")
            self.metrics.tampered += 1
            log.warning(
                "TAMPERED: %s rebuilt %s %s (%s) as its buildinfo describes, but the repository"
                " serves other bytes for %s (envelope %s)",
                a.rebuilder, a.source, a.version, a.architecture, files, a.digest,
            )
        return result

    async def run(self) -> None:
        """Take what is queued, check it (in workers when there are), store it in batches.

        Checking and storing overlap: while one batch is written, the next ones are checked.
        """
        checked: asyncio.Queue[asyncio.Task[list[Accepted | Dropped]]] = asyncio.Queue(
            _IN_FLIGHT
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._check_stage(checked), name="ingest check")
            tg.create_task(self._store_stage(checked), name="ingest store")

    async def _check_stage(
        self, checked: asyncio.Queue[asyncio.Task[list[Accepted | Dropped]]]
    ) -> None:
        limit = self.config.limits.ingest_batch
        while True:
            batch = [await self._queue.get()]
            self._gathering = True
            if self._pool is not None and self._queue.qsize() < limit // 4:
                # Sending a handful of messages to a worker costs more than checking them;
                # a few milliseconds of patience make the batches worth the trip.
                await asyncio.sleep(_COALESCE_S)
            while len(batch) < limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._queued_bytes -= sum(len(p) for _, p in batch)
            self._space.set()
            self._in_flight += 1
            self._gathering = False
            await checked.put(asyncio.create_task(self._check_many(batch)))

    def _more_coming(self, checked: asyncio.Queue[Any]) -> bool:
        return self._gathering or not checked.empty() or not self._queue.empty()

    async def _store_stage(
        self, checked: asyncio.Queue[asyncio.Task[list[Accepted | Dropped]]]
    ) -> None:
        """Store checked batches; several of them share a transaction while more are coming."""
        loop = asyncio.get_running_loop()
        limit = self.config.limits.ingest_batch
        while True:
            accepted: list[Accepted] = []
            taken = 0
            deadline = 0.0
            while True:
                if taken == 0:
                    task = await checked.get()
                    deadline = loop.time() + _STORE_WAIT_S
                else:
                    if len(accepted) >= limit or not self._more_coming(checked):
                        break
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        task = await asyncio.wait_for(checked.get(), remaining)
                    except TimeoutError:
                        break
                taken += 1
                try:
                    results = await task
                except Exception:
                    log.exception("checking a batch failed; catch-up will fetch it again")
                    results = []
                for result in results:
                    if isinstance(result, Dropped):
                        self.drop(result, "mqtt")
                    else:
                        accepted.append(result)
            if accepted:
                try:
                    await self.save(accepted, "mqtt")
                except Exception:
                    # The database refused (disk full?). The messages are lost here but not
                    # for good: catch-up fetches them from their rebuilders again.
                    log.exception("could not store %d envelopes", len(accepted))
            self._in_flight -= taken
            if self._in_flight == 0 and self._queue.empty() and not self._gathering:
                self._idle.set()
