"""The shared migration runner: versions kept where each database keeps them, one transaction,
newer databases refused, and both services' real schemas upgrading from their first version."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from rqdb.migrate import Migration, SchemaError, migrate, split_sql

SCHEMA = (
    Migration("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL); -- a comment; here"),
    "ALTER TABLE t ADD COLUMN size INTEGER",  # a bare script
)


async def _fill(conn: aiosqlite.Connection) -> None:
    await conn.execute("UPDATE t SET size = length(name)")


async def _connect(path: Path) -> aiosqlite.Connection:
    return await aiosqlite.connect(path, isolation_level=None)


@pytest.mark.parametrize("table", [None, "schema_version"])
async def test_upgrades_step_by_step_and_records_the_version(tmp_path: Path,
                                                             table: str | None) -> None:
    path = tmp_path / "db"
    conn = await _connect(path)
    try:
        assert await migrate(conn, SCHEMA[:1], what="test", version_table=table) == 0
        await conn.execute("INSERT INTO t (name) VALUES ('abc')")
        full = (*SCHEMA, Migration(step=_fill))
        assert await migrate(conn, full, what="test", version_table=table) == 1
        assert await migrate(conn, full, what="test", version_table=table) == 3  # nothing to do
        async with conn.execute("SELECT name, size FROM t") as cur:
            assert await cur.fetchall() == [("abc", 3)]
    finally:
        await conn.close()
    with sqlite3.connect(path) as db:
        if table is None:
            assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        else:
            assert db.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
            assert db.execute("PRAGMA user_version").fetchone()[0] == 0


async def test_a_failing_step_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    async def broken(conn: aiosqlite.Connection) -> None:
        await conn.execute("INSERT INTO t (name) VALUES ('half')")
        raise ValueError("step 3 cannot compute the sizes")

    conn = await _connect(tmp_path / "db")
    try:
        with pytest.raises(ValueError, match="step 3"):
            await migrate(conn, (*SCHEMA, Migration(step=broken)), what="test")
        async with conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cur:
            assert await cur.fetchall() == []  # versions 1 and 2 rolled back with 3
        async with conn.execute("PRAGMA user_version") as cur:
            assert await cur.fetchone() == (0,)
    finally:
        await conn.close()


@pytest.mark.parametrize("table", [None, "schema_version"])
async def test_a_newer_database_is_refused(tmp_path: Path, table: str | None) -> None:
    conn = await _connect(tmp_path / "db")
    try:
        await migrate(conn, SCHEMA, what="test", version_table=table)
        with pytest.raises(SchemaError, match=r"version 2 is newer than this old-test's \(1\)"):
            await migrate(conn, SCHEMA[:1], what="old-test", version_table=table)
    finally:
        await conn.close()


async def test_two_processes_opening_one_file_apply_each_step_once(tmp_path: Path) -> None:
    calls: list[int] = []

    async def counted(conn: aiosqlite.Connection) -> None:
        calls.append(1)
        await _fill(conn)

    schema = (*SCHEMA, Migration(step=counted))
    conns = [await _connect(tmp_path / "db") for _ in range(2)]
    try:
        for c in conns:
            await c.execute("PRAGMA busy_timeout = 10000")
        await asyncio.gather(*(migrate(c, schema, what="test") for c in conns))
        assert calls == [1]
    finally:
        for c in conns:
            await c.close()


def test_a_migration_needs_sql_or_a_step() -> None:
    with pytest.raises(ValueError, match="SQL script or a step"):
        Migration("  ")


async def test_version_table_must_be_an_identifier(tmp_path: Path) -> None:
    conn = await _connect(tmp_path / "db")
    try:
        with pytest.raises(ValueError, match="not an SQL identifier"):
            await migrate(conn, SCHEMA, what="test", version_table="v; DROP TABLE t")
    finally:
        await conn.close()


def test_split_sql_keeps_trigger_bodies_whole_and_drops_comments() -> None:
    script = """
    CREATE TABLE a (x); -- first; with a semicolon in the comment
    CREATE TRIGGER no_delete BEFORE DELETE ON a BEGIN SELECT RAISE(ABORT, 'no'); END;
    """
    assert split_sql(script) == [
        "CREATE TABLE a (x)",
        "CREATE TRIGGER no_delete BEFORE DELETE ON a BEGIN SELECT RAISE(ABORT, 'no'); END",
    ]


async def test_both_services_upgrade_their_first_schema(tmp_path: Path) -> None:
    """A database of each service at version 1, with a row, opened by today's code."""
    from coordinator.store import SCHEMA_VERSION as COORDINATOR_VERSION
    from coordinator.store import open_store
    from coordinator.store._schema import MIGRATIONS as COORDINATOR
    from rebuilder._schema import MIGRATIONS as NODE
    from rebuilder.db import SCHEMA_VERSION as NODE_VERSION
    from rebuilder.db import Store as NodeStore

    node_path, coordinator_path = tmp_path / "state.db", tmp_path / "coordinator.db"
    first = NODE[0]
    assert isinstance(first, str)
    with sqlite3.connect(node_path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        for statement in split_sql(first):
            db.execute(statement)
        db.execute("INSERT INTO jobs (repository, source, version, arch, buildinfo_url,"
                   " published, state, queued_at) VALUES ('r', 's', '1', 'amd64', 'http://x',"
                   " '{}', 'queued', 'now')")
    with sqlite3.connect(coordinator_path) as db:
        db.executescript(COORDINATOR[0].sql)
        db.execute("INSERT INTO rebuilders(id, cursor) VALUES ('rb-old', '41')")
        db.execute("PRAGMA user_version = 1")

    node = await NodeStore.open(node_path)
    try:
        assert await node.schema_version() == NODE_VERSION
        job = await node.job(1)
        assert job is not None and job.source == "s"
    finally:
        await node.close()
    coordinator = await open_store(coordinator_path)
    try:
        assert await coordinator.cursor("rb-old") == "41"
    finally:
        await coordinator.close()
    with sqlite3.connect(coordinator_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == COORDINATOR_VERSION
