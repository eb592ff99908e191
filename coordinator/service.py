"""The coordinator's ingest: a bounded queue of received messages, checked and stored in batches.

MQTT (``coordinator.mqtt``) and HTTP catch-up (``coordinator.catchup``) both hand what they
receive to ``Ingest``; it verifies every envelope (``coordinator.checks``) before storing it,
counts every drop by reason, and reports new disagreements to whoever publishes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from coordinator.checks import Accepted, Dropped, check_envelope, parse_status
from coordinator.config import REBUILDER_ID, CoordinatorConfig
from coordinator.store import BatchResult, Disagreement, Store
from verifier.errors import BadDataError

__all__ = ["Ingest", "Metrics"]

log = logging.getLogger(__name__)

# Checking one envelope takes ~0.2 ms; yielding every few of them keeps queries answered fast
# while a large batch is being verified.
_YIELD_EVERY = 16


@dataclass
class Metrics:
    received: Counter[str] = field(default_factory=Counter)  # by source: mqtt | http
    ingested: Counter[str] = field(default_factory=Counter)  # newly stored, by source
    duplicates: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # by reason
    dropped_by_rebuilder: Counter[str] = field(default_factory=Counter)
    status_invalid: int = 0
    catchup_errors: Counter[str] = field(default_factory=Counter)  # by rebuilder
    disagreements_published: int = 0

    def dropped_total(self) -> int:
        return sum(self.dropped.values())


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
        self._log_budget: Counter[str] = Counter()

    # ---- receiving -----------------------------------------------------------------------

    async def submit(self, rebuilder_id: str, payload: bytes) -> None:
        """Queue one MQTT attestation message (waits when the queue is full: backpressure)."""
        self.metrics.received["mqtt"] += 1
        self._idle.clear()
        await self._queue.put((rebuilder_id, payload))

    def queued(self) -> int:
        return self._queue.qsize()

    async def drained(self) -> None:
        """Wait until every submitted message has been checked and stored (for tests, demo)."""
        await self._idle.wait()

    def drop(self, d: Dropped, source: str) -> None:
        self.metrics.dropped[d.reason] += 1
        self.metrics.dropped_by_rebuilder[d.rebuilder] += 1
        # A flood of forged messages must not flood the log: the first few of each reason are
        # logged, then one in a thousand; the counters in /metrics stay exact.
        n = self._log_budget[d.reason]
        self._log_budget[d.reason] += 1
        if n < 20 or n % 1000 == 0:
            log.warning(
                "dropped %s message for rebuilder %r: %s: %s (%d so far)",
                source,
                d.rebuilder[:80],
                d.reason,
                d.detail[:300],
                n + 1,
            )

    def check(self, rebuilder_id: str, payload: bytes) -> Accepted | Dropped:
        key, kid = self._keys.get(rebuilder_id, (None, None))
        if key is None and not REBUILDER_ID.fullmatch(rebuilder_id):
            rebuilder_id = rebuilder_id.encode("unicode_escape").decode("ascii")[:80]
        return check_envelope(
            payload, rebuilder_id, key, kid, self.config.limits.max_envelope_bytes
        )

    async def handle_status(self, rebuilder_id: str, payload: bytes) -> None:
        if rebuilder_id not in self._keys:
            self.metrics.status_invalid += 1
            return
        try:
            status = parse_status(payload, self.config.limits.max_status_bytes)
        except BadDataError as e:
            self.metrics.status_invalid += 1
            log.warning("invalid status message from %s: %s", rebuilder_id, e)
            return
        now = time.time()
        seen: float | None = None
        if status.state == "online":
            # A retained message can be old: never believe it is newer than now.
            seen = min(now, status.time.timestamp()) if status.time else now
        await self.store.record_status(
            rebuilder_id,
            status.state,
            {
                "state": status.state,
                "queue": status.queue,
                "running": status.running,
                "version": status.version,
                "time": status.time.isoformat() if status.time else None,
            },
            seen,
        )

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
        return result

    async def run(self) -> None:
        """The writer task: take what is queued, check it, store it in one transaction."""
        batch_limit = self.config.limits.ingest_batch
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < batch_limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            accepted: list[Accepted] = []
            for i, (rebuilder_id, payload) in enumerate(batch):
                result = self.check(rebuilder_id, payload)
                if isinstance(result, Dropped):
                    self.drop(result, "mqtt")
                else:
                    accepted.append(result)
                if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)
            if accepted:
                try:
                    await self.save(accepted, "mqtt")
                except Exception:
                    # The database refused (disk full?). The messages are lost here but not
                    # for good: catch-up fetches them from their rebuilders again.
                    log.exception("could not store %d envelopes", len(accepted))
            if self._queue.empty():
                self._idle.set()
