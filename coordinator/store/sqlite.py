"""The coordinator's SQLite database (aiosqlite, WAL): verified envelopes and what they index.

One writer connection stores batches of verified envelopes in one transaction each; a second,
read-only connection answers queries, so readers never wait for the writer (WAL)::

    store = await Store.open(Path("coordinator.db"))
    result = await store.store_batch(accepted, now=time.time())
    bodies = await store.envelopes_for_digest(hex_digest)

Only envelopes that passed ``coordinator.checks`` are ever stored. The schema carries a version
(``PRAGMA user_version``) and is migrated forward on open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from coordinator.checks import Accepted
from coordinator.verdicts import envelope_class
from verifier.dsse import Envelope
from verifier.errors import BadDataError

__all__ = ["SCHEMA_VERSION", "BatchResult", "Disagreement", "RebuilderState", "Store"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6
_CHUNK = 400  # host parameters per IN (...) list, well under SQLite's limit

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE envelopes (
        id INTEGER PRIMARY KEY,
        digest BLOB NOT NULL UNIQUE,      -- sha256 of the canonical serialization
        rebuilder TEXT NOT NULL,
        kind TEXT NOT NULL,               -- rebuild | failure | revocation
        source TEXT, version TEXT, architecture TEXT,
        verdict TEXT,                     -- see verifier/verdicts.py (NULL: revocation)
        invocation TEXT,
        failure TEXT,                     -- why a failed build failed
        finished TEXT,                    -- RFC 3339, from the signed statement
        received REAL NOT NULL,           -- when the coordinator stored it (unix time)
        body BLOB NOT NULL                -- canonical envelope bytes, served as received
    );
    CREATE INDEX envelopes_package ON envelopes(source, version);
    CREATE TABLE subjects (
        envelope_id INTEGER NOT NULL REFERENCES envelopes(id),
        rebuilder TEXT NOT NULL,
        source TEXT NOT NULL, version TEXT NOT NULL,
        name TEXT NOT NULL,
        sha256 BLOB NOT NULL
    );
    CREATE INDEX subjects_sha256 ON subjects(sha256);
    CREATE INDEX subjects_artifact ON subjects(source, version, name);
    CREATE TABLE outputs (
        envelope_id INTEGER NOT NULL REFERENCES envelopes(id),
        name TEXT NOT NULL,
        verdict TEXT NOT NULL,
        rebuilt TEXT, buildinfo TEXT, repository TEXT,
        report_url TEXT
    );
    CREATE INDEX outputs_envelope ON outputs(envelope_id);
    CREATE TABLE revocations (
        envelope_id INTEGER NOT NULL REFERENCES envelopes(id),
        rebuilder TEXT NOT NULL,
        revoked BLOB NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX revocations_revoked ON revocations(revoked);
    CREATE TABLE counts (
        rebuilder TEXT NOT NULL,
        verdict TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (rebuilder, verdict)
    ) WITHOUT ROWID;
    CREATE TABLE rebuilders (
        id TEXT PRIMARY KEY,
        cursor TEXT NOT NULL DEFAULT '0',
        last_seen REAL,
        state TEXT,                       -- from the last status message
        status TEXT,                      -- that message, validated, as JSON
        last_error TEXT,
        last_catchup REAL
    );
    CREATE TABLE disagreements (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL, version TEXT NOT NULL, artifact TEXT NOT NULL,
        digests TEXT NOT NULL,            -- JSON {rebuilder: hex}
        conflicts TEXT NOT NULL,          -- JSON [{rebuilder, sha256, envelope}]
        detected_at REAL NOT NULL,
        UNIQUE (source, version, artifact)
    );
    """,
    # 2: one row per package version, so the package search does not scan every envelope.
    2: """
    CREATE TABLE packages (
        source TEXT NOT NULL,
        version TEXT NOT NULL,
        latest INTEGER NOT NULL,          -- id of its newest envelope
        PRIMARY KEY (source, version)
    ) WITHOUT ROWID;
    INSERT INTO packages(source, version, latest)
        SELECT source, version, MAX(id) FROM envelopes WHERE source IS NOT NULL
        GROUP BY source, version;
    """,
    # 3: the dashboard's verdict classes (coordinator.verdicts), suite, and online history.
    # The UPDATE is envelope_class() in SQL, for envelopes stored before this version.
    3: """
    ALTER TABLE envelopes ADD COLUMN class TEXT;   -- coordinator.verdicts.CLASSES, NULL: revocation
    ALTER TABLE envelopes ADD COLUMN suite TEXT;   -- last word of externalParameters.repository
    UPDATE envelopes SET class = CASE
        WHEN kind = 'revocation' THEN NULL
        WHEN kind = 'failure' THEN
            CASE WHEN failure LIKE 'fetch:%' OR failure LIKE 'environment:%'
                 THEN 'error' ELSE 'failed' END
        WHEN EXISTS (SELECT 1 FROM outputs o WHERE o.envelope_id = envelopes.id
                     AND (o.verdict = 'tampered' OR (o.rebuilt = o.buildinfo
                          AND o.repository IS NOT NULL AND o.repository != o.buildinfo)))
            THEN 'tampered'
        WHEN EXISTS (SELECT 1 FROM outputs o WHERE o.envelope_id = envelopes.id)
             AND NOT EXISTS (SELECT 1 FROM outputs o WHERE o.envelope_id = envelopes.id
                             AND o.verdict != 'reproduced')
            THEN 'reproduced'
        ELSE 'unreproducible' END;
    CREATE INDEX envelopes_tampered ON envelopes(id) WHERE class = 'tampered';
    CREATE INDEX envelopes_rebuilder ON envelopes(rebuilder, id);
    CREATE TABLE class_counts (
        rebuilder TEXT NOT NULL,
        class TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (rebuilder, class)
    ) WITHOUT ROWID;
    INSERT INTO class_counts(rebuilder, class, n)
        SELECT rebuilder, class, COUNT(*) FROM envelopes WHERE class IS NOT NULL
        GROUP BY rebuilder, class;
    CREATE TABLE status_history (
        rebuilder TEXT NOT NULL,
        state TEXT NOT NULL,              -- online | offline, each change once
        at REAL NOT NULL
    );
    CREATE INDEX status_history_rebuilder ON status_history(rebuilder, at);
    """,
    # 4 (branch `debian`): the verdict classes of verifier/verdicts.py. v1 statements said
    # 'mismatch' for unreproducible and tampered alike; it reads as 'unreproducible'.
    4: """
    UPDATE envelopes SET verdict = 'unreproducible' WHERE verdict = 'mismatch';
    UPDATE outputs SET verdict = 'unreproducible' WHERE verdict = 'mismatch';
    INSERT INTO counts(rebuilder, verdict, n)
        SELECT rebuilder, 'unreproducible', n FROM counts WHERE verdict = 'mismatch'
        ON CONFLICT(rebuilder, verdict) DO UPDATE SET n = n + excluded.n;
    DELETE FROM counts WHERE verdict = 'mismatch';
    CREATE INDEX IF NOT EXISTS outputs_verdict ON outputs(verdict)
    """,
    # 5 (branch tlog): what the log monitor found wrong
    # (coordinator/monitor.py; ARCHITECTURE §4.9), for the dashboard and the events topic.
    5: """
    CREATE TABLE IF NOT EXISTS log_inconsistencies (
        id INTEGER PRIMARY KEY,
        rebuilder TEXT NOT NULL,
        kind TEXT NOT NULL,               -- split-view | rollback | invalid-entry | ...
        detail TEXT NOT NULL,             -- what was seen and what was expected
        evidence TEXT,                    -- JSON: checkpoints, envelope digests
        detected_at REAL NOT NULL,
        published INTEGER NOT NULL DEFAULT 0,
        UNIQUE (rebuilder, kind, detail)
    );
    CREATE INDEX IF NOT EXISTS log_inconsistencies_pending ON log_inconsistencies(published)
        WHERE published = 0;
    """,
    # 6 (branch trust): one envelope per (rebuilder, signed statement), whatever hints or extra
    # signatures arrive with it; revocations name the statement (v2) or, older ones (v1, the
    # rows already stored), the envelope as signed. ``_backfill_payload_digests`` fills the
    # column and drops the duplicates it reveals before the unique index is made.
    6: """
    ALTER TABLE envelopes ADD COLUMN payload_digest BLOB;
    ALTER TABLE revocations ADD COLUMN legacy INTEGER NOT NULL DEFAULT 1;
    """,
}
_HISTORY_KEEP = 500  # status changes kept per rebuilder
_MIGRATION_STEPS: dict[int, Callable[[aiosqlite.Connection], Awaitable[None]]] = {}


async def _backfill_payload_digests(conn: aiosqlite.Connection) -> None:
    """Migration 6, after its SQL: payload digests of stored envelopes, duplicates removed."""
    async with conn.execute("SELECT id, body FROM envelopes") as cur:
        rows = await cur.fetchall()
    keep: dict[tuple[str, bytes], int] = {}
    updates, dropped = [], []
    async with conn.execute("SELECT id, rebuilder FROM envelopes") as cur:
        owner = {int(r[0]): str(r[1]) for r in await cur.fetchall()}
    for eid, body in rows:
        try:
            payload = Envelope.from_bytes(bytes(body)).payload
        except BadDataError:  # stored only after checks; never expected
            payload = bytes(body)
        digest = hashlib.sha256(payload).digest()
        key = (owner[int(eid)], digest)
        if key in keep:
            dropped.append((int(eid),))
        else:
            keep[key] = int(eid)
            updates.append((digest, int(eid)))
    await conn.executemany("UPDATE envelopes SET payload_digest = ? WHERE id = ?", updates)
    for table in ("subjects", "outputs", "revocations"):
        await conn.executemany(f"DELETE FROM {table} WHERE envelope_id = ?", dropped)  # noqa: S608  # our table names
    await conn.executemany("DELETE FROM envelopes WHERE id = ?", dropped)
    await conn.execute("DELETE FROM counts")
    await conn.execute(
        "INSERT INTO counts(rebuilder, verdict, n) SELECT rebuilder, verdict, COUNT(*)"
        " FROM envelopes WHERE verdict IS NOT NULL GROUP BY rebuilder, verdict"
    )
    await conn.execute("DELETE FROM class_counts")
    await conn.execute(
        "INSERT INTO class_counts(rebuilder, class, n) SELECT rebuilder, class, COUNT(*)"
        " FROM envelopes WHERE class IS NOT NULL GROUP BY rebuilder, class"
    )
    await conn.execute(
        "CREATE UNIQUE INDEX envelopes_statement ON envelopes(rebuilder, payload_digest)"
    )
    await conn.execute("CREATE INDEX envelopes_payload ON envelopes(payload_digest)")


_MIGRATION_STEPS[6] = _backfill_payload_digests


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


def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Disagreement:
    id: int
    source: str
    version: str
    artifact: str
    digests: dict[str, str]
    conflicts: list[dict[str, str]]
    detected_at: float

    def to_dict(self) -> dict[str, Any]:
        """The shape of docs/api.md (plus ``conflicts``: every distinct rebuilder/digest pair)."""
        return {
            "id": self.id,
            "package": {"ecosystem": "debian", "name": self.source, "version": self.version},
            "artifact": self.artifact,
            "digests": self.digests,
            "conflicts": self.conflicts,
            "detected_at": rfc3339(self.detected_at),
        }


@dataclass
class BatchResult:
    stored: list[Accepted] = field(default_factory=list)
    duplicates: int = 0
    new_disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def tampered(self) -> list[Accepted]:
        """Newly stored attestations reporting that the repository serves other bytes than
        the rebuild of its buildinfo gave: the alert the dashboard raises."""
        return [a for a in self.stored if a.verdict == "tampered"]


@dataclass(frozen=True)
class RebuilderState:
    id: str
    cursor: str
    last_seen: float | None
    state: str | None
    status: dict[str, Any] | None
    last_error: str | None
    last_catchup: float | None


def _chunks(items: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class Store:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._w = writer
        self._r = reader
        self._lock = asyncio.Lock()  # one transaction at a time on the writer connection

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(path, isolation_level=None)
        try:
            await writer.execute("PRAGMA journal_mode=WAL")
            await writer.execute("PRAGMA synchronous=NORMAL")
            await writer.execute("PRAGMA busy_timeout=10000")
            await _migrate(writer)
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

    # ---- writing -------------------------------------------------------------------------

    async def ensure_rebuilders(self, ids: Iterable[str]) -> None:
        await self._w.executemany(
            "INSERT OR IGNORE INTO rebuilders(id) VALUES (?)", [(i,) for i in ids]
        )

    async def store_batch(
        self,
        items: Sequence[Accepted],
        now: float | None = None,
        cursor: tuple[str, str] | None = None,
    ) -> BatchResult:
        """Store verified envelopes in one transaction; the same envelope twice is one row.

        ``cursor`` (rebuilder id, cursor) is saved in the same transaction, so a catch-up page
        is either stored with its cursor or not at all.
        """
        now = time.time() if now is None else now
        result = BatchResult()
        # One row per rebuilder and signed statement: another envelope of the same payload
        # (rewritten hints, extra signatures) is a duplicate, never a second attestation.
        unique: dict[tuple[str, str], Accepted] = {}
        for a in items:
            unique.setdefault((a.rebuilder, _payload_digest(a)), a)
        result.duplicates = len(items) - len(unique)
        async with self._lock:
            return await self._store_locked(unique, now, cursor, result)

    async def _store_locked(
        self,
        unique: dict[tuple[str, str], Accepted],
        now: float,
        cursor: tuple[str, str] | None,
        result: BatchResult,
    ) -> BatchResult:
        try:
            await self._w.execute("BEGIN IMMEDIATE")
            existing: set[tuple[str, bytes]] = set()
            keys = [bytes.fromhex(d) for _, d in unique]
            for chunk in _chunks(keys):
                marks = ",".join("?" * len(chunk))
                async with self._w.execute(
                    "SELECT rebuilder, payload_digest FROM envelopes"  # noqa: S608  # only ? marks
                    f" WHERE payload_digest IN ({marks})",
                    tuple(chunk),
                ) as cur:
                    existing.update((row[0], row[1]) for row in await cur.fetchall())
            new = [a for (r, d), a in unique.items() if (r, bytes.fromhex(d)) not in existing]
            result.duplicates += len(unique) - len(new)
            if new:
                await self._insert(new, now, result)
            if cursor is not None:
                await self._w.execute(
                    "UPDATE rebuilders SET cursor = ?, last_catchup = ?, last_seen = ?,"
                    " last_error = NULL, state = 'online' WHERE id = ?",
                    (cursor[1], now, now, cursor[0]),
                )
            await self._w.execute("COMMIT")
        except BaseException:
            # Cancelled while a statement runs, the writer thread still finishes it: after
            # BEGIN there is a transaction to roll back, after COMMIT none. Either way the
            # original exception (a cancellation above all) must go on, or shutdown would
            # wait forever.
            with contextlib.suppress(sqlite3.Error):
                await self._w.execute("ROLLBACK")
            raise
        result.stored = new
        return result

    async def _insert(self, new: list[Accepted], now: float, result: BatchResult) -> None:
        async with self._w.execute("SELECT COALESCE(MAX(id), 0) FROM envelopes") as cur:
            row = await cur.fetchone()
        first = int(row[0]) + 1 if row else 1
        env_rows = []
        subject_rows = []
        output_rows = []
        revocation_rows = []
        counts: Counter[tuple[str, str]] = Counter()
        class_counts: Counter[tuple[str, str]] = Counter()
        seen_rebuilders: dict[str, float] = {}
        for i, a in enumerate(new):
            eid = first + i
            cls = envelope_class(
                a.kind,
                a.failure,
                ({"verdict": o.verdict, "rebuilt": o.rebuilt, "buildinfo": o.buildinfo,
                  "repository": o.repository} for o in a.outputs),
            )
            if cls is not None:
                class_counts[(a.rebuilder, cls)] += 1
            suite = a.repository.split()[-1] if a.repository and a.repository.split() else None
            env_rows.append(
                (
                    eid,
                    bytes.fromhex(a.digest),
                    a.rebuilder,
                    a.kind,
                    a.source,
                    a.version,
                    a.architecture,
                    a.verdict,
                    a.invocation,
                    a.failure,
                    a.finished,
                    now,
                    a.body,
                    cls,
                    suite,
                    bytes.fromhex(_payload_digest(a)),
                )
            )
            for name, sha in a.subjects:
                subject_rows.append(
                    (eid, a.rebuilder, a.source, a.version, name, bytes.fromhex(sha))
                )
            for o in a.outputs:
                output_rows.append(
                    (eid, o.name, o.verdict, o.rebuilt, o.buildinfo, o.repository, o.report_url)
                )
            if a.revoked is not None:
                revocation_rows.append(
                    (eid, a.rebuilder, bytes.fromhex(a.revoked), a.reason or "", int(a.legacy))
                )
            if a.verdict is not None:
                counts[(a.rebuilder, a.verdict)] += 1
            seen_rebuilders[a.rebuilder] = now
        await self._w.executemany(
            "INSERT INTO envelopes(id, digest, rebuilder, kind, source, version, architecture,"
            " verdict, invocation, failure, finished, received, body, class, suite,"
            " payload_digest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            env_rows,
        )
        if subject_rows:
            await self._w.executemany(
                "INSERT INTO subjects(envelope_id, rebuilder, source, version, name, sha256)"
                " VALUES (?,?,?,?,?,?)",
                subject_rows,
            )
        if output_rows:
            await self._w.executemany(
                "INSERT INTO outputs(envelope_id, name, verdict, rebuilt, buildinfo, repository,"
                " report_url) VALUES (?,?,?,?,?,?,?)",
                output_rows,
            )
        if revocation_rows:
            await self._w.executemany(
                "INSERT INTO revocations(envelope_id, rebuilder, revoked, reason, legacy)"
                " VALUES (?,?,?,?,?)",
                revocation_rows,
            )
        latest: dict[tuple[str, str], int] = {}
        for i, a in enumerate(new):
            if a.source is not None and a.version is not None:
                latest[(a.source, a.version)] = first + i
        if latest:
            await self._w.executemany(
                "INSERT INTO packages(source, version, latest) VALUES (?,?,?)"
                " ON CONFLICT(source, version) DO UPDATE SET latest = excluded.latest",
                [(src, ver, eid) for (src, ver), eid in latest.items()],
            )
        if counts:
            await self._w.executemany(
                "INSERT INTO counts(rebuilder, verdict, n) VALUES (?,?,?)"
                " ON CONFLICT(rebuilder, verdict) DO UPDATE SET n = n + excluded.n",
                [(r, v, n) for (r, v), n in counts.items()],
            )
        if class_counts:
            await self._w.executemany(
                "INSERT INTO class_counts(rebuilder, class, n) VALUES (?,?,?)"
                " ON CONFLICT(rebuilder, class) DO UPDATE SET n = n + excluded.n",
                [(r, c, n) for (r, c), n in class_counts.items()],
            )
        await self._w.executemany(
            "UPDATE rebuilders SET last_seen = MAX(COALESCE(last_seen, 0), ?), state = 'online'"
            " WHERE id = ?",
            [(t, r) for r, t in seen_rebuilders.items()],
        )
        artifacts = sorted({(a.source, a.version, n) for a in new for n, _ in a.subjects})
        if artifacts:
            result.new_disagreements.extend(await self._detect(artifacts, now))

    async def _detect(
        self, artifacts: Sequence[tuple[str | None, str | None, str]], now: float
    ) -> list[Disagreement]:
        """Record a disagreement for every touched artifact that now has two digests."""
        conflicted: list[tuple[str, str, str]] = []
        for chunk in _chunks(artifacts, 300):
            values = ",".join("(?,?,?)" for _ in chunk)
            params = [p for a in chunk for p in a]
            async with self._w.execute(
                "SELECT source, version, name FROM subjects"  # noqa: S608  # only ? marks
                f" WHERE (source, version, name) IN (VALUES {values})"
                " GROUP BY source, version, name HAVING COUNT(DISTINCT sha256) > 1",
                params,
            ) as cur:
                conflicted.extend((r[0], r[1], r[2]) for r in await cur.fetchall())
        fresh: list[Disagreement] = []
        for source, version, name in conflicted:
            # Revoked statements are withdrawn: they no longer disagree with anything.
            async with self._w.execute(
                "SELECT s.rebuilder, s.sha256, e.digest FROM subjects s"  # noqa: S608  # a constant fragment
                " JOIN envelopes e ON e.id = s.envelope_id"
                " WHERE s.source = ? AND s.version = ? AND s.name = ?"
                " AND NOT EXISTS (SELECT 1 FROM revocations r WHERE " + _REVOKES.format(e="e")
                + ") ORDER BY s.envelope_id",
                (source, version, name),
            ) as cur:
                rows = await cur.fetchall()
            if len({sha for _, sha, _ in rows}) < 2:
                continue
            digests: dict[str, str] = {}  # each rebuilder once: its latest digest
            conflicts: list[dict[str, str]] = []
            pairs: set[tuple[str, bytes]] = set()
            for rebuilder, sha, env in rows:
                digests[rebuilder] = sha.hex()
                if (rebuilder, sha) not in pairs:
                    pairs.add((rebuilder, sha))
                    conflicts.append(
                        {"rebuilder": rebuilder, "sha256": sha.hex(), "envelope": env.hex()}
                    )
            async with self._w.execute(
                "SELECT id, detected_at FROM disagreements"
                " WHERE source = ? AND version = ? AND artifact = ?",
                (source, version, name),
            ) as cur:
                old = await cur.fetchone()
            if old is None:
                async with self._w.execute(
                    "INSERT INTO disagreements(source, version, artifact, digests, conflicts,"
                    " detected_at) VALUES (?,?,?,?,?,?) RETURNING id",
                    (source, version, name, json.dumps(digests), json.dumps(conflicts), now),
                ) as cur:
                    row = await cur.fetchone()
                assert row is not None
                fresh.append(
                    Disagreement(int(row[0]), source, version, name, digests, conflicts, now)
                )
            else:
                await self._w.execute(
                    "UPDATE disagreements SET digests = ?, conflicts = ? WHERE id = ?",
                    (json.dumps(digests), json.dumps(conflicts), old[0]),
                )
        return fresh

    async def record_status(
        self, rebuilder: str, state: str, status: dict[str, Any], seen: float | None
    ) -> None:
        """Store a status message; ``seen`` (None for 'offline') moves last_seen forward."""
        async with self._lock:
            await self._w.execute(
                "UPDATE rebuilders SET state = ?, status = ?,"
                " last_seen = MAX(COALESCE(last_seen, 0), COALESCE(?, 0)) WHERE id = ?",
                (state, json.dumps(status), seen, rebuilder),
            )
            await self._note_state(rebuilder, state, time.time() if seen is None else seen)

    async def _note_state(self, rebuilder: str, state: str, at: float) -> None:
        """Append to the online history when the state changed (caller holds the lock)."""
        async with self._w.execute(
            "SELECT state FROM status_history WHERE rebuilder = ? ORDER BY at DESC, rowid DESC"
            " LIMIT 1",
            (rebuilder,),
        ) as cur:
            row = await cur.fetchone()
        if row is not None and row[0] == state:
            return
        await self._w.execute(
            "INSERT INTO status_history(rebuilder, state, at) VALUES (?,?,?)",
            (rebuilder, state, at),
        )
        await self._w.execute(
            "DELETE FROM status_history WHERE rebuilder = ? AND rowid NOT IN (SELECT rowid"
            " FROM status_history WHERE rebuilder = ? ORDER BY at DESC LIMIT ?)",
            (rebuilder, rebuilder, _HISTORY_KEEP),
        )

    async def record_catchup_error(self, rebuilder: str, error: str, now: float) -> None:
        async with self._lock:
            await self._w.execute(
                "UPDATE rebuilders SET last_error = ?, last_catchup = ? WHERE id = ?",
                (error[:500], now, rebuilder),
            )

    async def record_catchup_ok(self, rebuilder: str, now: float) -> None:
        async with self._lock:
            await self._w.execute(
                "UPDATE rebuilders SET last_error = NULL, last_catchup = ?, state = 'online',"
                " last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE id = ?",
                (now, now, rebuilder),
            )
            await self._note_state(rebuilder, "online", now)

    # ---- reading -------------------------------------------------------------------------

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._r.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def cursor(self, rebuilder: str) -> str:
        rows = await self._all("SELECT cursor FROM rebuilders WHERE id = ?", (rebuilder,))
        return str(rows[0][0]) if rows else "0"

    async def rebuilder_states(self) -> dict[str, RebuilderState]:
        rows = await self._all(
            "SELECT id, cursor, last_seen, state, status, last_error, last_catchup FROM rebuilders"
        )
        return {
            r[0]: RebuilderState(
                r[0], r[1], r[2], r[3], json.loads(r[4]) if r[4] else None, r[5], r[6]
            )
            for r in rows
        }

    async def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for rebuilder, verdict, n in await self._all("SELECT rebuilder, verdict, n FROM counts"):
            out.setdefault(rebuilder, {})[verdict] = int(n)
        return out

    async def envelopes_for_digest(self, sha256_hex: str) -> list[bytes]:
        """Every stored envelope with a subject of that digest, then the revocations of those.

        One statement, answered from the subjects index: the cost does not grow with the size
        of the database.
        """
        rows = await self._all(
            "WITH hits AS (SELECT DISTINCT e.id, e.rebuilder, e.digest, e.payload_digest"  # noqa: S608  # a constant fragment
            " FROM subjects s JOIN envelopes e ON e.id = s.envelope_id WHERE s.sha256 = ?)"
            " SELECT 0, e.id, e.body FROM hits h JOIN envelopes e ON e.id = h.id"
            " UNION"
            " SELECT 1, e.id, e.body FROM hits h JOIN revocations r ON " + _REVOKES.format(e="h")
            + " JOIN envelopes e ON e.id = r.envelope_id"
            " ORDER BY 1, 2",
            (bytes.fromhex(sha256_hex),),
        )
        return [r[2] for r in rows]

    async def envelopes_for_package(self, source: str, version: str) -> list[bytes]:
        rows = await self._all(
            "SELECT body FROM envelopes WHERE source = ? AND version = ? ORDER BY id",
            (source, version),
        )
        revocations = await self._all(
            "SELECT DISTINCT re.id, re.body FROM envelopes e"  # noqa: S608  # a constant fragment
            " JOIN revocations r ON " + _REVOKES.format(e="e")
            + " JOIN envelopes re ON re.id = r.envelope_id"
            " WHERE e.source = ? AND e.version = ? ORDER BY re.id",
            (source, version),
        )
        return [r[0] for r in rows] + [r[1] for r in revocations]

    async def package_results(self, source: str, version: str) -> list[dict[str, Any]]:
        """Per envelope of that package: rebuilder, verdict, outputs, revoked or not."""
        rows = await self._all(
            "SELECT e.id, e.digest, e.rebuilder, e.kind, e.architecture, e.verdict, e.invocation,"  # noqa: S608  # a constant fragment
            " e.finished, e.failure, (SELECT r.reason FROM revocations r WHERE "
            + _REVOKES.format(e="e")
            + " ORDER BY r.envelope_id LIMIT 1), e.class, e.suite"
            " FROM envelopes e WHERE e.source = ? AND e.version = ? ORDER BY e.id",
            (source, version),
        )
        results: list[dict[str, Any]] = []
        by_id: dict[int, dict[str, Any]] = {}
        for (eid, digest, rebuilder, kind, arch, verdict, invocation, finished, failure, reason,
             cls, suite) in rows:
            entry = {
                "class": cls,
                "suite": suite,
                "revoked_reason": reason,
                "envelope": digest.hex(),
                "rebuilder": rebuilder,
                "kind": kind,
                "architecture": arch,
                "verdict": verdict,
                "invocation": invocation,
                "finished": finished,
                "failure": failure,
                "revoked": reason is not None,
                "outputs": [],
            }
            by_id[eid] = entry
            results.append(entry)
        if by_id:
            ids = list(by_id)
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                for eid, name, verdict, rebuilt, buildinfo, repo, report in await self._all(
                    "SELECT envelope_id, name, verdict, rebuilt, buildinfo, repository,"  # noqa: S608
                    f" report_url FROM outputs WHERE envelope_id IN ({marks}) ORDER BY rowid",
                    tuple(chunk),
                ):
                    by_id[eid]["outputs"].append(
                        {
                            "name": name,
                            "verdict": verdict,
                            "rebuilt": rebuilt,
                            "buildinfo": buildinfo,
                            "repository": repo,
                            "report_url": report,
                        }
                    )
        return results

    async def search_packages(
        self,
        query: str,
        limit: int,
        offset: int = 0,
        *,
        verdict: str | None = None,
        suite: str | None = None,
        architecture: str | None = None,
    ) -> list[dict[str, Any]]:
        """Package versions whose source name contains ``query``, with per-rebuilder verdicts
        (``verdicts``: reproduced/mismatch/failed, ``classes``: coordinator.verdicts) and
        suites. The filters keep versions with an unrevoked attestation of that verdict class,
        suite and architecture."""
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = ["p.source LIKE ? ESCAPE '\\'"]
        params: list[Any] = [pattern]
        if verdict or suite or architecture:
            cond = ["e.source = p.source", "e.version = p.version", "e.class IS NOT NULL",
                    "NOT EXISTS (SELECT 1 FROM revocations r WHERE " + _REVOKES.format(e="e")  # noqa: S608  # constant fragments
                    + ")"]
            for column, value in (("class", verdict), ("suite", suite),
                                  ("architecture", architecture)):
                if value:
                    cond.append(f"e.{column} = ?")
                    params.append(value)
            where.append(
                f"EXISTS (SELECT 1 FROM envelopes e WHERE {' AND '.join(cond)})"  # noqa: S608
            )
        pkgs = await self._all(
            "SELECT p.source, p.version, p.latest FROM packages p"  # noqa: S608  # fixed columns, ? marks
            f" WHERE {' AND '.join(where)} ORDER BY p.source, p.latest DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        out = []
        for source, version, _ in pkgs:
            out.append({"source": source, "version": version,
                        **await self._verdicts_of(source, version)})
        return out

    async def _verdicts_of(self, source: str, version: str) -> dict[str, Any]:
        verdicts: dict[str, str] = {}
        classes: dict[str, str] = {}
        suites: set[str] = set()
        architectures: set[str] = set()
        for rebuilder, verdict, cls, suite, arch in await self._all(
            "SELECT e.rebuilder, e.verdict, e.class, e.suite, e.architecture FROM envelopes e"  # noqa: S608  # constant fragments
            " WHERE e.source = ? AND e.version = ? AND e.verdict IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM revocations r WHERE "  # a constant
            + _REVOKES.format(e="e") + ") ORDER BY e.id",
            (source, version),
        ):
            verdicts[rebuilder] = verdict  # the latest attestation of each rebuilder wins
            if cls:
                classes[rebuilder] = cls
            if suite:
                suites.add(suite)
            if arch:
                architectures.add(arch)
        return {"verdicts": verdicts, "classes": classes, "suites": sorted(suites),
                "architectures": sorted(architectures)}

    async def package_versions(self, source: str, limit: int = 200) -> list[dict[str, Any]]:
        """Every attested version of one source package, newest attestation first."""
        rows = await self._all(
            "SELECT version FROM packages WHERE source = ? ORDER BY latest DESC LIMIT ?",
            (source, limit),
        )
        return [{"source": source, "version": r[0], **await self._verdicts_of(source, r[0])}
                for r in rows]

    async def filter_values(self) -> dict[str, list[str]]:
        """The suites and architectures seen, for the package filters."""
        out: dict[str, list[str]] = {}
        for column in ("suite", "architecture"):
            rows = await self._all(
                f"SELECT DISTINCT {column} FROM envelopes WHERE {column} IS NOT NULL"  # noqa: S608
                f" ORDER BY {column} LIMIT 100"
            )
            out[column] = [r[0] for r in rows]
        return out

    async def class_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for rebuilder, cls, n in await self._all("SELECT rebuilder, class, n FROM class_counts"):
            out.setdefault(rebuilder, {})[cls] = int(n)
        return out

    async def tampered_packages(self, limit: int = 20) -> list[tuple[str, str]]:
        """(source, version) with an unrevoked tampered attestation, most recent first."""
        rows = await self._all(
            "SELECT e.source, e.version, MAX(e.id) FROM envelopes e WHERE e.class = 'tampered'"  # noqa: S608  # constant fragments
            " AND NOT EXISTS (SELECT 1 FROM revocations r WHERE "  # a constant
            + _REVOKES.format(e="e") + ") GROUP BY e.source, e.version"
            " ORDER BY MAX(e.id) DESC LIMIT ?",
            (limit,),
        )
        return [(r[0], r[1]) for r in rows]

    async def rebuilder_results(
        self, rebuilder: str, limit: int = 50, offset: int = 0
    ) -> list[dict[str, Any]]:
        """One rebuilder's attestations, newest first, with revocation reasons."""
        rows = await self._all(
            "SELECT e.digest, e.kind, e.source, e.version, e.architecture, e.class, e.failure,"  # noqa: S608  # constant fragments
            " e.finished, e.suite, (SELECT r.reason FROM revocations r WHERE "
            + _REVOKES.format(e="e") + " ORDER BY r.envelope_id LIMIT 1),"
            " (SELECT r.reason FROM revocations r WHERE r.envelope_id = e.id),"
            " (SELECT hex(r.revoked) FROM revocations r WHERE r.envelope_id = e.id)"
            " FROM envelopes e WHERE e.rebuilder = ? ORDER BY e.id DESC LIMIT ? OFFSET ?",
            (rebuilder, limit, offset),
        )
        return [
            {
                "envelope": r[0].hex(), "kind": r[1], "source": r[2], "version": r[3],
                "architecture": r[4], "class": r[5], "failure": r[6], "finished": r[7],
                "suite": r[8], "revoked": r[9] is not None, "revoked_reason": r[9],
                "reason": r[10], "revokes": r[11].lower() if r[11] else None,
            }
            for r in rows
        ]

    async def class_series(self, rebuilder: str, since: str) -> list[tuple[str, str, int]]:
        """(day, class, n) of one rebuilder's attestations finished on or after ``since``
        (an RFC 3339 date), oldest day first."""
        rows = await self._all(
            "SELECT substr(finished, 1, 10) AS day, class, COUNT(*) FROM envelopes"
            " WHERE rebuilder = ? AND class IS NOT NULL AND finished >= ?"
            " GROUP BY day, class ORDER BY day",
            (rebuilder, since),
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def status_history(self, rebuilder: str, limit: int = 20) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT state, at FROM status_history WHERE rebuilder = ?"
            " ORDER BY at DESC, rowid DESC LIMIT ?",
            (rebuilder, limit),
        )
        return [{"state": r[0], "at": rfc3339(r[1])} for r in rows]

    async def revocation_reasons(self, envelopes: Sequence[str]) -> dict[str, str]:
        """Envelope digest (hex) -> the reason its own rebuilder revoked it, for those revoked."""
        out: dict[str, str] = {}
        for chunk in _chunks([bytes.fromhex(e) for e in envelopes]):
            marks = ",".join("?" * len(chunk))
            for digest, reason in await self._all(
                "SELECT e.digest, r.reason FROM envelopes e JOIN revocations r"  # noqa: S608
                " ON " + _REVOKES.format(e="e")
                + f" WHERE e.digest IN ({marks})",
                tuple(chunk),
            ):
                out.setdefault(digest.hex(), reason)
        return out

    async def disagreements(self, limit: int = 100, offset: int = 0) -> list[Disagreement]:
        rows = await self._all(
            "SELECT id, source, version, artifact, digests, conflicts, detected_at"
            " FROM disagreements ORDER BY id DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [
            Disagreement(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6])
            for r in rows
        ]

    async def disagreements_for(self, source: str, version: str) -> list[Disagreement]:
        rows = await self._all(
            "SELECT id, source, version, artifact, digests, conflicts, detected_at"
            " FROM disagreements WHERE source = ? AND version = ? ORDER BY id",
            (source, version),
        )
        return [
            Disagreement(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6])
            for r in rows
        ]

    async def output_report(
        self, envelope_hex: str, artifact: str
    ) -> tuple[str, str, str, dict[str, Any]] | None:
        """(rebuilder, source, version, output row) of one output of one stored envelope."""
        rows = await self._all(
            "SELECT e.rebuilder, e.source, e.version, o.name, o.verdict, o.rebuilt, o.buildinfo,"
            " o.repository, o.report_url FROM envelopes e JOIN outputs o ON o.envelope_id = e.id"
            " WHERE e.digest = ? AND o.name = ?",
            (bytes.fromhex(envelope_hex), artifact),
        )
        if not rows:
            return None
        r = rows[0]
        return (
            r[0],
            r[1],
            r[2],
            {
                "name": r[3],
                "verdict": r[4],
                "rebuilt": r[5],
                "buildinfo": r[6],
                "repository": r[7],
                "report_url": r[8],
            },
        )

    async def tampered(
        self, source: str | None = None, version: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Published files some rebuilder reported ``tampered`` (it rebuilt what the buildinfo
        describes, the repository serves other bytes), newest first; optionally of one package
        version. Revoked attestations are left out."""
        where = "o.verdict = 'tampered'"
        params: list[Any] = []
        if source is not None and version is not None:
            where += " AND e.source = ? AND e.version = ?"
            params += [source, version]
        rows = await self._all(
            "SELECT e.rebuilder, e.source, e.version, e.architecture, e.digest, e.finished,"  # noqa: S608  # only ? marks
            " o.name, o.rebuilt, o.buildinfo, o.repository, o.report_url"
            " FROM outputs o JOIN envelopes e ON e.id = o.envelope_id"
            f" WHERE {where} AND NOT EXISTS (SELECT 1 FROM revocations r"
            " WHERE " + _REVOKES.format(e="e") + ")"
            " ORDER BY e.id DESC LIMIT ?",
            [*params, limit],
        )
        return [
            {
                "rebuilder": r[0],
                "package": {"ecosystem": "debian", "name": r[1], "version": r[2],
                            "architecture": r[3]},
                "envelope": r[4].hex(),
                "finished": r[5],
                "artifact": r[6],
                "rebuilt": r[7],
                "buildinfo": r[8],
                "repository": r[9],
                "report_url": r[10],
            }
            for r in rows
        ]

    async def totals(self) -> dict[str, int]:
        rows = await self._all(
            "SELECT (SELECT COUNT(*) FROM envelopes), (SELECT COUNT(*) FROM disagreements),"
            " (SELECT COUNT(*) FROM revocations)"
        )
        envelopes, disagreements, revocations = rows[0]
        return {
            "envelopes": int(envelopes),
            "disagreements": int(disagreements),
            "revocations": int(revocations),
        }

    # ---- the log monitor (coordinator/monitor.py) ------------------------------------------

    async def record_log_inconsistency(self, rebuilder: str, kind: str, detail: str,
                                       evidence: dict[str, Any]) -> bool:
        """Record what the monitor found; False when the same finding is already recorded."""
        async with self._lock:
            cur = await self._w.execute(
                "INSERT OR IGNORE INTO log_inconsistencies (rebuilder, kind, detail, evidence,"
                " detected_at) VALUES (?, ?, ?, ?, ?)",
                (rebuilder, kind, detail, json.dumps(evidence, sort_keys=True), time.time()))
            return cur.rowcount > 0

    async def log_inconsistencies(self, *, unpublished: bool = False,
                                  limit: int = 200) -> list[dict[str, Any]]:
        """Newest first: ``{"id", "rebuilder", "kind", "detail", "evidence", "detected_at"}``."""
        rows = await self._all(
            "SELECT id, rebuilder, kind, detail, evidence, detected_at FROM log_inconsistencies"
            " WHERE published = 0 OR ? = 0 ORDER BY id DESC LIMIT ?", (int(unpublished), limit))
        return [{"id": r[0], "rebuilder": r[1], "kind": r[2], "detail": r[3],
                 "evidence": json.loads(r[4]) if r[4] else None,
                 "detected_at": rfc3339(r[5])} for r in rows]

    async def mark_log_inconsistency_published(self, ids: Sequence[int]) -> None:
        async with self._lock:
            await self._w.executemany(
                "UPDATE log_inconsistencies SET published = 1 WHERE id = ?", [(i,) for i in ids])

    async def envelopes_of(self, rebuilder: str, after_id: int, received_before: float,
                           limit: int = 5000) -> list[tuple[int, str, str]]:
        """(id, digest hex, kind) of the envelopes received from ``rebuilder``, in id order."""
        rows = await self._all(
            "SELECT id, digest, kind FROM envelopes WHERE rebuilder = ? AND id > ?"
            " AND received < ? ORDER BY id LIMIT ?", (rebuilder, after_id, received_before, limit))
        return [(int(r[0]), bytes(r[1]).hex(), str(r[2])) for r in rows]

    async def has_envelopes(self, digests: Sequence[str]) -> set[str]:
        """Which of these envelope digests (hex) the coordinator has stored."""
        found: set[str] = set()
        for chunk in _chunks(list(digests)):
            marks = ",".join("?" * len(chunk))
            rows = await self._all(
                f"SELECT digest FROM envelopes WHERE digest IN ({marks})",  # noqa: S608  # placeholders
                [bytes.fromhex(d) for d in chunk])
            found |= {bytes(r[0]).hex() for r in rows}
        return found

    async def count_for_rebuilder(self, rebuilder: str) -> int:
        rows = await self._all("SELECT COUNT(*) FROM envelopes WHERE rebuilder = ?", (rebuilder,))
        return int(rows[0][0])


async def _migrate(conn: aiosqlite.Connection) -> None:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {version} is newer than this coordinator's "
            f"({SCHEMA_VERSION}); upgrade repro-quorum"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        log.info("migrating coordinator database to schema version %d", target)
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[target].split(";"):
                if statement.strip():
                    await conn.execute(statement)
            step = _MIGRATION_STEPS.get(target)
            if step is not None:
                await step(conn)
            await conn.execute(f"PRAGMA user_version = {int(target)}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
