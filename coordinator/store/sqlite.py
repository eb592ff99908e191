"""The coordinator's store on SQLite (aiosqlite, WAL): verified envelopes and what they index.

One writer connection stores batches of verified envelopes in one transaction each; a second,
read-only connection answers queries, so readers never wait for the writer (WAL)::

    store = await SqliteStore.open(Path("coordinator.db"))
    result = await store.store_batch(accepted, now=time.time())
    bodies = await store.envelopes_for_digest(hex_digest)

Only envelopes that passed ``coordinator.checks`` are ever stored. The schema carries a version
(``PRAGMA user_version``) and is migrated forward on open (``coordinator/store/_schema.py``).
The writing and reading halves live in ``_write.py`` and ``_read.py``; callers see the
``coordinator.store.Store`` interface.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import aiosqlite

from coordinator.store._read import _Reads
from coordinator.store._schema import migrate_coordinator
from coordinator.store._write import _Writes

__all__ = ["SqliteStore"]


class SqliteStore(_Writes, _Reads):
    """``coordinator.store.Store`` on one SQLite file."""

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(path, isolation_level=None)
        try:
            await writer.execute("PRAGMA journal_mode=WAL")
            await writer.execute("PRAGMA synchronous=NORMAL")
            await writer.execute("PRAGMA busy_timeout=10000")
            await migrate_coordinator(writer)
            reader = await aiosqlite.connect(path, isolation_level=None)
        except BaseException:
            await writer.close()
            raise
        await reader.execute("PRAGMA busy_timeout=10000")
        await reader.execute("PRAGMA query_only=ON")
        return cls(writer, reader)

    async def close(self) -> None:
        await self._r.close()
        with contextlib.suppress(sqlite3.Error):
            await self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await self._w.close()
