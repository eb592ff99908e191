"""What the SQLite store's parts share: its two connections, the revocation join, chunking.

``SqliteStore`` (coordinator/store/sqlite.py) is made of ``_Writes`` and ``_Reads`` on top of
``_Base``; each part stays a file of a few hundred lines.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from coordinator.checks import Accepted
from verifier.dsse import Envelope

_CHUNK = 400  # host parameters per IN (...) list, well under SQLite's limit

# Revocation ``r`` withdraws envelope ``{e}``: signed by the same rebuilder and naming its
# statement (v2), or, for a v1 revocation, its envelope as signed (docs/formats.md).
_REVOKES = (
    "r.revoked IN ({e}.payload_digest, {e}.digest) AND r.rebuilder = {e}.rebuilder"
    " AND CASE r.legacy WHEN 0 THEN r.revoked = {e}.payload_digest"
    " ELSE r.revoked = {e}.digest END"
)


def _payload_digest(a: Accepted) -> str:
    """The signed payload's sha256 (``checks`` sets it; computed here for older callers)."""
    if a.payload_digest:
        return a.payload_digest
    return Envelope.from_bytes(a.body).payload_digest()



def _chunks(items: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class _Base:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._w = writer
        self._r = reader
        self._lock = asyncio.Lock()  # one transaction at a time on the writer connection

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one query on the read-only connection."""
        async with self._r.execute(sql, params) as cur:
            return list(await cur.fetchall())
