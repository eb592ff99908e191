"""The coordinator database's schema: one migration per version, applied by ``rqdb.migrate``.

The version is ``PRAGMA user_version``. Version 7 keys packages by ecosystem (every row stored
before it is ``debian``). Append a migration to change the schema; never edit one that has
shipped.
"""

from __future__ import annotations

import hashlib

import aiosqlite

from rqdb.migrate import Migration, migrate
from verifier.dsse import Envelope
from verifier.errors import BadDataError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate_coordinator"]

_SQL: dict[int, str] = {
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
    # 7 (branch store): packages are keyed by ecosystem; what was stored before is Debian's.
    # SQLite cannot change a key, so packages and disagreements are rebuilt under their names
    # (disagreement ids kept).
    7: """
    ALTER TABLE envelopes ADD COLUMN ecosystem TEXT NOT NULL DEFAULT 'debian';
    ALTER TABLE subjects ADD COLUMN ecosystem TEXT NOT NULL DEFAULT 'debian';
    DROP INDEX envelopes_package;
    CREATE INDEX envelopes_package ON envelopes(ecosystem, source, version);
    DROP INDEX subjects_artifact;
    CREATE INDEX subjects_artifact ON subjects(ecosystem, source, version, name);
    CREATE TABLE packages_v7 (
        ecosystem TEXT NOT NULL,
        source TEXT NOT NULL,
        version TEXT NOT NULL,
        latest INTEGER NOT NULL,          -- id of its newest envelope
        PRIMARY KEY (ecosystem, source, version)
    ) WITHOUT ROWID;
    INSERT INTO packages_v7(ecosystem, source, version, latest)
        SELECT 'debian', source, version, latest FROM packages;
    DROP TABLE packages;
    ALTER TABLE packages_v7 RENAME TO packages;
    CREATE TABLE disagreements_v7 (
        id INTEGER PRIMARY KEY,
        ecosystem TEXT NOT NULL,
        source TEXT NOT NULL, version TEXT NOT NULL, artifact TEXT NOT NULL,
        digests TEXT NOT NULL,            -- JSON {rebuilder: hex}
        conflicts TEXT NOT NULL,          -- JSON [{rebuilder, sha256, envelope}]
        detected_at REAL NOT NULL,
        UNIQUE (ecosystem, source, version, artifact)
    );
    INSERT INTO disagreements_v7(id, ecosystem, source, version, artifact, digests, conflicts,
                                 detected_at)
        SELECT id, 'debian', source, version, artifact, digests, conflicts, detected_at
        FROM disagreements ORDER BY id;
    DROP TABLE disagreements;
    ALTER TABLE disagreements_v7 RENAME TO disagreements;
    """,
}



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



MIGRATIONS: tuple[Migration, ...] = tuple(
    Migration(_SQL[v], step=_backfill_payload_digests if v == 6 else None)
    for v in sorted(_SQL)
)
SCHEMA_VERSION = len(MIGRATIONS)


async def migrate_coordinator(conn: aiosqlite.Connection) -> None:
    """Bring the database to ``SCHEMA_VERSION`` (one transaction), refusing a newer one."""
    await migrate(conn, MIGRATIONS, what="coordinator")
