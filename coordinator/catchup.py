"""HTTP catch-up: fetch every rebuilder's attestations after the cursor remembered for it.

A message missed on MQTT is never a lost attestation: each round asks every registered
rebuilder for ``GET /v1/attestations?since=<cursor>&limit=N`` (docs/api.md), verifies each
envelope exactly as an MQTT message, and stores the page and the new cursor in one transaction.
A rebuilder that answers junk, slowly or not at all is logged and skipped until the next round.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp

from coordinator.checks import Accepted, Dropped, check_envelope_dict
from coordinator.config import RebuilderConfig
from coordinator.service import Ingest
from verifier.dsse import strict_json_loads
from verifier.errors import BadDataError, UnreachableError
from verifier.sources import FetcherInterface, fetcher_for

__all__ = ["CatchUp"]

log = logging.getLogger(__name__)

_CURSOR = re.compile(r"[A-Za-z0-9._:+-]{1,128}")


def _page(doc: Any) -> tuple[list[tuple[str, Any]], str, bool]:
    """Validate the shape of one catch-up page: entries, next cursor, more."""
    if not isinstance(doc, dict):
        raise BadDataError("catch-up page", "not a JSON object")
    entries = doc.get("attestations")
    nxt = doc.get("next")
    more = doc.get("more")
    if not isinstance(entries, list):
        raise BadDataError("catch-up page", "attestations is not a list")
    if not isinstance(more, bool):
        raise BadDataError("catch-up page", "more is not a boolean")
    if isinstance(nxt, int) and not isinstance(nxt, bool):
        nxt = str(nxt)
    if not isinstance(nxt, str) or not _CURSOR.fullmatch(nxt):
        raise BadDataError("catch-up page", f"next {str(nxt)[:40]!r} is not a valid cursor")
    out: list[tuple[str, Any]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "envelope" not in entry:
            raise BadDataError("catch-up page", f"entry {i} is not {{cursor, envelope}}")
        out.append((str(entry.get("cursor", ""))[:128], entry["envelope"]))
    return out, nxt, more


class CatchUp:
    def __init__(self, ingest: Ingest, session: aiohttp.ClientSession | FetcherInterface) -> None:
        self.ingest = ingest
        self.fetcher = fetcher_for(session)
        self.limits = ingest.config.limits
        self._running: dict[str, asyncio.Task[int]] = {}
        self.rounds = 0

    async def round(self) -> dict[str, int]:
        """One catch-up of every registered rebuilder, concurrently; new envelopes by id."""
        rebuilders = self.ingest.config.rebuilders
        results = await asyncio.gather(*(self.rebuilder(r) for r in rebuilders))
        self.rounds += 1
        return {r.id: n for r, n in zip(rebuilders, results, strict=True)}

    async def rebuilder(self, rb: RebuilderConfig) -> int:
        """Catch up with one rebuilder; a round already running for it is joined, not doubled."""
        task = self._running.get(rb.id)
        if task is None or task.done():
            task = asyncio.create_task(self._catch_up(rb), name=f"catch-up {rb.id}")
            self._running[rb.id] = task
        return await asyncio.shield(task)

    async def _catch_up(self, rb: RebuilderConfig) -> int:
        store = self.ingest.store
        cursor = await store.cursor(rb.id)
        new = 0
        try:
            for _ in range(self.limits.catchup_max_pages):
                doc = await self._fetch(rb, cursor)
                entries, nxt, more = _page(doc)
                accepted: list[Accepted] = []
                for _entry_cursor, envelope in entries:
                    self.ingest.metrics.received["http"] += 1
                    result = check_envelope_dict(
                        envelope, rb.id, rb.public_key, rb.keyid,
                        self.limits.max_envelope_bytes,
                    )
                    if isinstance(result, Dropped):
                        self.ingest.drop(result, "http")
                    else:
                        accepted.append(result)
                    await asyncio.sleep(0)
                stored = await self.ingest.save(accepted, "http", cursor=(rb.id, nxt))
                new += len(stored.stored)
                if not more or nxt == cursor or not entries:
                    break
                cursor = nxt
            else:
                log.info("catch-up of %s stopped after %d pages; continuing next round",
                         rb.id, self.limits.catchup_max_pages)
            await store.record_catchup_ok(rb.id, time.time())
        except (BadDataError, UnreachableError) as e:
            self.ingest.metrics.catchup_errors[rb.id] += 1
            log.warning("catch-up from %s (%s) skipped: %s", rb.id, rb.url, e)
            await store.record_catchup_error(rb.id, str(e), time.time())
        return new

    async def _fetch(self, rb: RebuilderConfig, cursor: str) -> Any:
        query = urlencode({"since": cursor, "limit": str(self.limits.catchup_page_limit)})
        body = await self.fetcher.fetch(
            f"{rb.url}/v1/attestations?{query}",
            max_bytes=self.limits.max_catchup_response_bytes,
            timeout=self.limits.catchup_timeout,
        )
        return strict_json_loads(body, "catch-up page")
