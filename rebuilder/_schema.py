"""The state database's schema and its migrations (one SQL script per version).

``schema_version`` holds the version a database is at; ``_migrate`` applies the missing scripts in
one transaction, and refuses a database written by a newer rebuilder. Append a script to change
the schema; never edit one that has shipped.
"""

from __future__ import annotations

import aiosqlite

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaError"]


class SchemaError(Exception):
    """The database was written by a newer version, or is not a rebuilder state database."""


MIGRATIONS: tuple[str, ...] = (
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
    # 3 (branch crash): interruptions (crashes, builds killed from outside) are counted apart
    # from attempts, so the give-up rule never counts finished attempts; why the last one was
    # interrupted, for the signed failure that gives up
    """
    ALTER TABLE jobs ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN interrupted_because TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


async def _migrate(db: aiosqlite.Connection) -> None:
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        async with db.execute("SELECT version FROM schema_version") as cur:
            row = await cur.fetchone()
        if row is None:
            await db.execute("INSERT INTO schema_version (version) VALUES (0)")
            current = 0
        else:
            current = int(row[0])
        if current > SCHEMA_VERSION:
            raise SchemaError(
                f"database schema version {current} is newer than this rebuilder's "
                f"{SCHEMA_VERSION}; upgrade repro-quorum"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in _split_sql(MIGRATIONS[version - 1]):
                await db.execute(statement)
            await db.execute("UPDATE schema_version SET version = ?", (version,))
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (no semicolons inside our literals); comments dropped."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
