"""One schema migration runner for the node's and the coordinator's SQLite databases.

A schema is a sequence of migrations, the first being version 1; each is an SQL script, an
async step (for what SQL cannot compute), or both (the script first); a bare string or step
stands for a ``Migration`` of it alone. ``migrate`` brings a
database to ``len(migrations)`` in one ``BEGIN IMMEDIATE`` transaction, so an upgrade is whole or
not at all and two processes opening one file never apply a step twice::

    MIGRATIONS = (Migration("CREATE TABLE t (id INTEGER PRIMARY KEY)"),
                  Migration("ALTER TABLE t ADD COLUMN name TEXT", step=_fill_names))
    await migrate(conn, MIGRATIONS, what="coordinator")

Where the version is kept is the database's own: ``PRAGMA user_version`` (the coordinator) or a
one-row table (the node, ``version_table="schema_version"``), as each has always kept it.
Append a migration to change a schema; never edit one that has shipped.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiosqlite

from verifier.errors import BadDataError

__all__ = ["Migration", "SchemaError", "migrate", "split_sql"]

log = logging.getLogger(__name__)

Step = Callable[[aiosqlite.Connection], Awaitable[None]]


class SchemaError(BadDataError, RuntimeError):
    """The database was written by a newer version, or is not a database of this schema (one
    of the verifier's error families, verifier/errors.py; still a RuntimeError for old callers)."""

    def __init__(self, message: str) -> None:
        super().__init__("state database", message, message=message)


@dataclass(frozen=True)
class Migration:
    """One schema version: an SQL script, then (optionally) an async step on the connection."""

    sql: str = ""
    step: Step | None = None

    def __post_init__(self) -> None:
        if not self.sql.strip() and self.step is None:
            raise ValueError("a migration needs an SQL script or a step")


async def _read_version(conn: aiosqlite.Connection, table: str | None) -> int:
    if table is None:
        async with conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
    await conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER NOT NULL)")
    async with conn.execute(f"SELECT version FROM {table}") as cur:  # noqa: S608  # our name
        row = await cur.fetchone()
    if row is None:
        await conn.execute(f"INSERT INTO {table} (version) VALUES (0)")  # noqa: S608
        return 0
    return int(row[0])


async def _write_version(conn: aiosqlite.Connection, table: str | None, version: int) -> None:
    if table is None:
        await conn.execute(f"PRAGMA user_version = {int(version)}")
    else:
        await conn.execute(f"UPDATE {table} SET version = ?", (version,))  # noqa: S608


async def migrate(
    conn: aiosqlite.Connection,
    migrations: Sequence[Migration | str | Step],
    *,
    what: str,
    version_table: str | None = None,
) -> int:
    """Apply the migrations the database lacks; returns the version it was at before.

    ``conn`` must be in autocommit mode (``isolation_level=None``). ``what`` names the program
    in the error a newer database raises. ``version_table`` is None for ``PRAGMA user_version``.
    """
    if version_table is not None and not version_table.isidentifier():
        raise ValueError(f"version table {version_table!r} is not an SQL identifier")
    latest = len(migrations)
    await conn.execute("BEGIN IMMEDIATE")
    try:
        current = await _read_version(conn, version_table)
        if current > latest:
            raise SchemaError(
                f"database schema version {current} is newer than this {what}'s "
                f"({latest}); upgrade repro-quorum"
            )
        for version in range(current + 1, latest + 1):
            log.info("migrating %s database to schema version %d", what, version)
            m = _as_migration(migrations[version - 1])
            for statement in split_sql(m.sql):
                await conn.execute(statement)
            if m.step is not None:
                await m.step(conn)
            await _write_version(conn, version_table, version)
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return current


def _as_migration(m: Migration | str | Step) -> Migration:
    if isinstance(m, Migration):
        return m
    return Migration(sql=m) if isinstance(m, str) else Migration(step=m)


def split_sql(script: str) -> list[str]:
    """Statements of a migration script (no semicolons inside our literals); comments dropped.
    A trigger's ``BEGIN ... END`` body stays one statement (``sqlite3.complete_statement``)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    out: list[str] = []
    buf = ""
    for piece in "\n".join(lines).split(";"):
        buf = f"{buf};{piece}" if buf else piece
        if sqlite3.complete_statement(buf + ";"):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
