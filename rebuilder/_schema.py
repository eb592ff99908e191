"""The state database's schema and its migrations (one SQL script per version).

The one-row table ``schema_version`` holds the version a database is at; ``_migrate`` applies the
missing scripts in one transaction (``rqdb.migrate``, the runner the coordinator shares), and
refuses a database written by a newer rebuilder. Append a script to change the schema; never edit
one that has shipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import aiosqlite

from rebuilder.tlog import LOG_MIGRATION
from rqdb.migrate import SchemaError, migrate, split_sql

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaError"]

# A migration is an SQL script, or, when it must compute what SQL cannot, an async function.
Migration = str | Callable[[aiosqlite.Connection], Awaitable[None]]


async def _payload_digests(db: aiosqlite.Connection) -> None:
    """8 (branch trust): the sha256 of each attestation's signed payload, what a revocation
    (v2) names; one attestation per payload (a later duplicate keeps NULL)."""
    import base64
    import json

    await db.execute("ALTER TABLE attestations ADD COLUMN payload_sha256 TEXT")
    async with db.execute("SELECT seq, envelope FROM attestations ORDER BY seq") as cur:
        rows = await cur.fetchall()
    seen: set[str] = set()
    updates = []
    for seq, envelope in rows:
        try:
            payload = base64.b64decode(json.loads(bytes(envelope))["payload"])
        except (ValueError, KeyError, TypeError):  # not an envelope: nothing it could name
            continue
        digest = hashlib.sha256(payload).hexdigest()
        if digest not in seen:
            seen.add(digest)
            updates.append((digest, seq))
    await db.executemany("UPDATE attestations SET payload_sha256 = ? WHERE seq = ?", updates)
    await db.execute(
        "CREATE UNIQUE INDEX attestations_payload ON attestations (payload_sha256)"
    )


MIGRATIONS: tuple[Migration, ...] = (
    # 1: the first schema
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        repository TEXT NOT NULL,
        source TEXT NOT NULL,
        version TEXT NOT NULL,
        arch TEXT NOT NULL,
        buildinfo_url TEXT NOT NULL,
        published TEXT NOT NULL,            -- JSON {deb name: [sha256, pool url]}
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        queued_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        UNIQUE (repository, source, version, arch)
    );
    CREATE INDEX jobs_state ON jobs (state, id);
    CREATE INDEX jobs_package ON jobs (source, version);

    CREATE TABLE builds (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs (id),
        attempt INTEGER NOT NULL,
        invocation_id TEXT NOT NULL UNIQUE,   -- one attempt is never signed twice
        verdict TEXT NOT NULL CHECK (verdict IN ('reproduced', 'mismatch', 'failed')),
        failure TEXT,
        failure_stage TEXT,
        environment TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        duration_s REAL NOT NULL,
        log_path TEXT,
        UNIQUE (job_id, attempt)
    );
    CREATE INDEX builds_job ON builds (job_id, id);

    CREATE TABLE outputs (
        id INTEGER PRIMARY KEY,
        build_id INTEGER NOT NULL REFERENCES builds (id),
        name TEXT NOT NULL,
        verdict TEXT NOT NULL,
        rebuilt TEXT,
        buildinfo TEXT,
        repository TEXT,
        report_id TEXT UNIQUE,
        report_html TEXT,
        report_txt TEXT,
        report_sha256 TEXT
    );
    CREATE INDEX outputs_build ON outputs (build_id);

    CREATE TABLE attestations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the catch-up cursor; never reused
        envelope_sha256 TEXT NOT NULL UNIQUE,
        envelope BLOB NOT NULL,                 -- canonical Envelope.to_bytes()
        kind TEXT NOT NULL CHECK (kind IN ('rebuild', 'failure', 'revocation')),
        source TEXT,
        version TEXT,
        arch TEXT,
        build_id INTEGER UNIQUE REFERENCES builds (id),
        revokes TEXT,                           -- envelope sha256 a revocation names
        created_at TEXT NOT NULL
    );
    CREATE INDEX attestations_package ON attestations (source, version);
    CREATE INDEX attestations_revokes ON attestations (revokes);

    CREATE TABLE subjects (
        seq INTEGER NOT NULL REFERENCES attestations (seq),
        name TEXT NOT NULL,
        sha256 TEXT NOT NULL
    );
    CREATE INDEX subjects_sha256 ON subjects (sha256);

    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY REFERENCES attestations (seq),
        published_at TEXT
    );
    CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL;
    """,
    # 2: the .dsc named by the repository's Sources index, hash-pinned
    """
    ALTER TABLE jobs ADD COLUMN dsc_url TEXT;
    ALTER TABLE jobs ADD COLUMN dsc_sha256 TEXT;
    """,
    # 3 (branch intoto): in-toto links look packages up by subject file name
    """
    CREATE INDEX subjects_name ON subjects (name);
    """,
    # 4 (branch inputs): the verified Release each job was found in (JSON {uri, sha256, signer,
    # date}), and per repository the newest Release accepted: the rollback floor and the digest
    # of the last fully indexed Release (an unchanged Release is not parsed again)
    """
    ALTER TABLE jobs ADD COLUMN release TEXT;
    CREATE TABLE repository_releases (
        repository TEXT PRIMARY KEY,
        date TEXT,
        sha256 TEXT NOT NULL,
        signer TEXT,
        accepted_at TEXT NOT NULL
    );
    """,
    # 5 (branch `debian`): build verdicts reproduced | unreproducible | tampered | failed; the
    # old 'mismatch' reads as 'unreproducible' (it could not tell the two apart). SQLite cannot
    # change a CHECK, so the table is rebuilt under the same name. Foreign keys stay on (they
    # cannot be switched off inside the migration's transaction): deferred, the rows of outputs
    # and attestations are orphaned by the DROP and found again by the INSERT, before COMMIT.
    """
    PRAGMA defer_foreign_keys = ON;
    CREATE TABLE builds_copy AS SELECT * FROM builds;
    DROP TABLE builds;
    CREATE TABLE builds (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs (id),
        attempt INTEGER NOT NULL,
        invocation_id TEXT NOT NULL UNIQUE,
        verdict TEXT NOT NULL
            CHECK (verdict IN ('reproduced', 'unreproducible', 'tampered', 'failed')),
        failure TEXT,
        failure_stage TEXT,
        environment TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        duration_s REAL NOT NULL,
        log_path TEXT,
        UNIQUE (job_id, attempt)
    );
    INSERT INTO builds SELECT id, job_id, attempt, invocation_id,
        CASE verdict WHEN 'mismatch' THEN 'unreproducible' ELSE verdict END,
        failure, failure_stage, environment, started_at, finished_at, duration_s, log_path
        FROM builds_copy ORDER BY id;
    DROP TABLE builds_copy;
    CREATE INDEX builds_job ON builds (job_id, id);
    UPDATE outputs SET verdict = 'unreproducible' WHERE verdict = 'mismatch';
    """,
    # 6 (branch `debian`): a buildinfo URL an operator gave (`rebuilder rebuild --buildinfo`)
    # is used as given; any other is re-resolved from the config at every attempt.
    """
    ALTER TABLE jobs ADD COLUMN buildinfo_pinned INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN source_version TEXT;    -- a binNMU's source version
    CREATE INDEX jobs_source_version ON jobs (source, source_version);
    """,
    # 7 (branch tlog): the transparency log (rebuilder/tlog.py)
    LOG_MIGRATION,
    # 8 (branch trust): attestations.payload_sha256, unique; `revokes` then names it (v2)
    _payload_digests,
    # 9 (branch crash): interruptions (crashes, builds killed from outside) are counted apart
    # from attempts, so the give-up rule never counts finished attempts; why the last one was
    # interrupted, for the signed failure that gives up
    """
    ALTER TABLE jobs ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN interrupted_because TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


async def _migrate(db: aiosqlite.Connection) -> None:
    await migrate(db, MIGRATIONS, what="rebuilder", version_table="schema_version")


_split_sql = split_sql  # the name tests and older callers use
