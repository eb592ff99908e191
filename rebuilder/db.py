"""The node's state: one SQLite file (WAL) reached through aiosqlite, with schema migrations.

Writes go through one connection under a lock, each as one ``BEGIN IMMEDIATE`` transaction, so
a crash leaves either all of a finished build (build row, outputs, signed attestation, subjects,
outbox row) or none of it. Reads (the HTTP API, ``rebuilder status``) use their own connection
and never see a half-written build::

    store = await Store.open(Path("state.db"))
    job = await store.claim_job()          # queued -> running, attempt += 1, committed
    ...
    await store.close()

Attestations are append-only: ``seq`` is the catch-up cursor of ``GET /v1/attestations?since=``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from rebuilder._schema import SCHEMA_VERSION, SchemaError, _migrate
from rebuilder.outcome import BuildJob, ReleaseRef
from rebuilder.tlog import check_log_entry
from verifier.dsse import Envelope
from verifier.errors import BadDataError
from verifier.statement import Digest

__all__ = [
    "SCHEMA_VERSION",
    "AttestationRow",
    "JobRow",
    "NewAttestation",
    "NewBuild",
    "NewOutput",
    "SchemaError",
    "Store",
    "now_iso",
    "queue_jobs_blocking",
]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")




@dataclass(frozen=True)
class JobRow:
    id: int
    repository: str
    source: str
    version: str
    arch: str
    buildinfo_url: str
    published: dict[str, tuple[Digest, str]]
    state: str
    attempts: int
    queued_at: str
    started_at: str | None
    finished_at: str | None
    dsc_url: str | None = None
    dsc_sha256: str | None = None
    release: ReleaseRef | None = None
    buildinfo_pinned: bool = False
    source_version: str | None = None  # a binNMU's source version (version is the binNMU's)
    # unplanned stops of this job's attempts since it was queued or requeued (crash, a build
    # killed from outside); a graceful shutdown does not count
    interruptions: int = 0
    interrupted_because: str | None = None

    def to_build_job(self) -> BuildJob:
        return BuildJob(
            source=self.source,
            version=self.version,
            architecture=self.arch,
            repository=self.repository,
            buildinfo_url=self.buildinfo_url,
            published=dict(self.published),
            dsc_url=self.dsc_url,
            dsc_sha256=Digest(self.dsc_sha256) if self.dsc_sha256 else None,
            release=self.release,
            buildinfo_pinned=self.buildinfo_pinned,
            source_version=self.source_version,
        )

    def invocation_id(self, node_id: str) -> str:
        return f"{node_id}/{self.id}/{self.attempts}"


@dataclass(frozen=True)
class AttestationRow:
    seq: int
    envelope_sha256: str
    envelope: bytes
    kind: str


@dataclass(frozen=True)
class NewOutput:
    name: str
    verdict: str
    rebuilt: str | None
    buildinfo: str | None
    repository: str | None
    report_id: str | None = None
    report_html: str | None = None
    report_txt: str | None = None
    report_sha256: str | None = None


@dataclass(frozen=True)
class NewBuild:
    job_id: int
    attempt: int
    invocation_id: str
    verdict: str
    failure: str | None
    failure_stage: str | None
    environment: str
    started_at: str
    finished_at: str
    duration_s: float
    log_path: str | None
    outputs: tuple[NewOutput, ...]


@dataclass(frozen=True)
class NewAttestation:
    envelope_sha256: str
    envelope: bytes
    kind: str
    source: str | None
    version: str | None
    arch: str | None
    subjects: tuple[tuple[str, str], ...]  # (name, sha256)
    revokes: str | None = None  # what a revocation names: the revoked payload_sha256 (v2)
    payload_sha256: str = ""  # sha256 of the signed payload; derived from ``envelope`` if empty

    def statement_digest(self) -> str | None:
        """The payload sha256 (one attestation per statement); None for bytes that are not an
        envelope at all (only tests store such), which then share no uniqueness."""
        if self.payload_sha256:
            return self.payload_sha256
        try:
            return Envelope.from_bytes(self.envelope).payload_digest()
        except BadDataError:
            return None


def _named_by(rows: Iterable[sqlite3.Row]) -> list[str]:
    """Every digest a revocation of these attestations may name: v2 payload, v1 envelope."""
    return [d for r in rows for d in (r["payload_sha256"], r["envelope_sha256"]) if d]


def _published_json(published: dict[str, tuple[Digest, str]]) -> str:
    return json.dumps({k: [v[0], v[1]] for k, v in sorted(published.items())}, sort_keys=True)


_INSERT_JOB = (
    "INSERT OR IGNORE INTO jobs (repository, source, version, arch, buildinfo_url, published,"
    " state, queued_at, dsc_url, dsc_sha256, source_version, release)"
    " VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)"
)
_ACCEPT_RELEASE = (
    "INSERT INTO repository_releases (repository, date, sha256, signer, accepted_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (repository) DO UPDATE SET date = excluded.date,"
    " sha256 = excluded.sha256, signer = excluded.signer, accepted_at = excluded.accepted_at"
)


def _job_params(job: BuildJob, now: str, with_release: bool = True) -> tuple[Any, ...]:
    params = (job.repository, job.source, job.version, job.architecture, job.buildinfo_url,
              _published_json(job.published), now, job.dsc_url, job.dsc_sha256,
              job.source_version)
    if not with_release:
        return params
    return (*params, json.dumps(job.release.to_dict(), sort_keys=True) if job.release else None)


def queue_jobs_blocking(
    path: Path, repository: str, jobs: Sequence[BuildJob], *, write: bool,
    release: tuple[str | None, str, str | None] | None = None,
) -> tuple[list[BuildJob], list[BuildJob]]:
    """(new, known) among ``jobs``; with ``write``, insert the new ones and record ``release``
    (date, sha256, signer: ``accept_release``) in one transaction.

    Blocking and on its own connection: for the index worker process (rebuilder.debian.indexproc),
    which handles a first round of Debian (~40k jobs) without the node's event loop ever
    holding them. SQLite's lock (busy timeout 30 s) orders it with the node's own writes.
    """
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        if write:
            conn.execute("BEGIN IMMEDIATE")
        try:
            known = {tuple(r) for r in conn.execute(
                "SELECT source, version, arch FROM jobs WHERE repository = ?", (repository,))}
            new = [j for j in jobs if (j.source, j.version, j.architecture) not in known]
            old = [j for j in jobs if (j.source, j.version, j.architecture) in known]
            if write:
                now = now_iso()
                refs = {id(j.release): j.release for j in new}  # one Release per round: one
                as_json = {k: json.dumps(r.to_dict(), sort_keys=True) if r else None  # dumps
                           for k, r in refs.items()}
                conn.executemany(_INSERT_JOB, (
                    (*_job_params(j, now, with_release=False), as_json[id(j.release)])
                    for j in new))
                if release is not None:
                    conn.execute(_ACCEPT_RELEASE, (repository, *release, now))
                conn.execute("COMMIT")
        except BaseException:
            if write and conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return new, old


def _job(row: sqlite3.Row) -> JobRow:
    published = {k: (Digest(v[0]), str(v[1])) for k, v in json.loads(row["published"]).items()}
    return JobRow(
        id=row["id"], repository=row["repository"], source=row["source"],
        version=row["version"], arch=row["arch"], buildinfo_url=row["buildinfo_url"],
        published=published, state=row["state"], attempts=row["attempts"],
        queued_at=row["queued_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], dsc_url=row["dsc_url"], dsc_sha256=row["dsc_sha256"],
        release=ReleaseRef.from_dict(json.loads(row["release"])) if row["release"] else None,
        buildinfo_pinned=bool(row["buildinfo_pinned"]), source_version=row["source_version"],
        interruptions=row["interruptions"], interrupted_because=row["interrupted_because"],
    )


async def _connect(path: Path, readonly: bool) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA busy_timeout = 10000")
        await conn.execute("PRAGMA foreign_keys = ON")
        if readonly:
            await conn.execute("PRAGMA query_only = ON")
        else:
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        # e.g. a full disk: the connection's thread must not outlive the error (the process
        # would hang at exit instead of failing)
        await conn.close()
        raise
    return conn


class Store:
    """The node's database; create with ``await Store.open(path)``."""

    def __init__(self, write: aiosqlite.Connection | None, read: aiosqlite.Connection) -> None:
        self._w = write
        self._r = read
        self._lock = asyncio.Lock()
        self.path: Path | None = None

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False, migrate: bool = True) -> Store:
        """Open (and unless ``readonly``, create and migrate) the database at ``path``."""
        if readonly and not path.exists():  # noqa: ASYNC240  # one stat() when opening
            raise SchemaError(f"{path} does not exist; run `rebuilder init` first")
        write = None
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
            write = await _connect(path, readonly=False)
            try:
                if migrate:
                    await _migrate(write)
            except BaseException:
                await write.close()
                raise
        try:
            read = await _connect(path, readonly=True)
        except BaseException:
            if write is not None:
                await write.close()
            raise
        store = cls(write, read)
        store.path = path
        try:
            version = await store.schema_version()
        except BaseException:
            await store.close()
            raise
        if version != SCHEMA_VERSION:
            await store.close()
            raise SchemaError(
                f"{path} has schema version {version}, this rebuilder uses {SCHEMA_VERSION}"
                + ("; start `rebuilder run` once to migrate it" if version < SCHEMA_VERSION
                   else "; it was written by a newer rebuilder")
            )
        return store

    async def close(self) -> None:
        if self._w is not None:
            await self._w.close()
        await self._r.close()

    # -- plumbing -------------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; committed on success, rolled back on any exception."""
        if self._w is None:
            raise RuntimeError("store opened read-only")
        async with self._lock:
            await self._w.execute("BEGIN IMMEDIATE")
            try:
                yield self._w
            except BaseException:
                await self._w.execute("ROLLBACK")
                raise
            await self._w.execute("COMMIT")

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._r.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        async with self._r.execute(sql, params) as cur:
            return await cur.fetchone()

    async def schema_version(self) -> int:
        try:
            row = await self._one("SELECT version FROM schema_version")
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):  # a full disk, an I/O error: not "version 0"
                raise
            return 0
        return int(row["version"]) if row else 0

    # -- jobs -----------------------------------------------------------------------------------

    async def add_jobs(self, jobs: Iterable[BuildJob]) -> list[BuildJob]:
        """Insert the jobs not known yet (by repository, source, version, arch); return those."""
        added: list[BuildJob] = []
        now = now_iso()
        async with self.transaction() as db:
            for job in jobs:
                cur = await db.execute(_INSERT_JOB, _job_params(job, now))
                if cur.rowcount:
                    added.append(job)
        return added

    async def known_jobs(self, repository: str) -> set[tuple[str, str, str]]:
        """(source, version, arch) of every job of ``repository``, whatever its state."""
        rows = await self._all("SELECT source, version, arch FROM jobs WHERE repository = ?",
                               (repository,))
        return {(r["source"], r["version"], r["arch"]) for r in rows}

    async def release_state(self, repository: str) -> sqlite3.Row | None:
        """The newest Release accepted for ``repository``: date (ISO 8601), sha256, signer."""
        return await self._one("SELECT * FROM repository_releases WHERE repository = ?",
                               (repository,))

    async def accept_release(self, repository: str, date: str | None, sha256: str,
                             signer: str | None) -> None:
        """Record a fully indexed Release: the rollback floor (its Date) and its digest."""
        async with self.transaction() as db:
            await db.execute(_ACCEPT_RELEASE, (repository, date, sha256, signer, now_iso()))

    async def ensure_job(self, job: BuildJob) -> JobRow:
        """The job row of ``job``'s triple, inserting it (queued) when unknown."""
        await self.add_jobs([job])
        row = await self._one(
            "SELECT * FROM jobs WHERE repository = ? AND source = ? AND version = ? AND arch = ?",
            (job.repository, job.source, job.version, job.architecture),
        )
        assert row is not None
        return _job(row)

    async def set_buildinfo_url(self, job_id: int, url: str, pinned: bool) -> None:
        """Point a job at ``url``; ``pinned``: an operator's choice, used as given until the
        job is re-queued (otherwise the config's candidates are resolved at every attempt)."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE jobs SET buildinfo_url = ?, buildinfo_pinned = ? WHERE id = ?",
                (url, int(pinned), job_id),
            )

    async def claim_job(self, job_id: int | None = None) -> JobRow | None:
        """Mark the oldest queued job (or ``job_id``, whatever its state) running, attempt += 1.

        Committed before the build starts, so a crash never reuses an attempt number and thus
        never signs one invocation twice.
        """
        now = now_iso()
        async with self.transaction() as db:
            if job_id is None:
                sql = ("UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?,"
                       " finished_at = NULL WHERE id = (SELECT id FROM jobs WHERE state = 'queued'"
                       " ORDER BY id LIMIT 1) RETURNING *")
                params: tuple[Any, ...] = (now,)
            else:
                sql = ("UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?,"
                       " finished_at = NULL WHERE id = ? RETURNING *")
                params = (now, job_id)
            async with db.execute(sql, params) as cur:
                row = await cur.fetchone()
        return _job(row) if row else None

    async def requeue_running(self, job_ids: Iterable[int] | None = None, *,
                              reason: str | None = None) -> int:
        """Put ``running`` jobs (all of them, or those listed) back in the queue.

        With a ``reason`` (a crash found at start-up) each counts as one interruption towards
        ``rebuilder.queue.MAX_INTERRUPTIONS``; without (a graceful stop, a full disk) it does not.
        """
        counted = (1 if reason is not None else 0, reason)
        async with self.transaction() as db:
            if job_ids is None:
                cur = await db.execute(
                    "UPDATE jobs SET state = 'queued', started_at = NULL,"
                    " interruptions = interruptions + ?,"
                    " interrupted_because = COALESCE(?, interrupted_because)"
                    " WHERE state = 'running'", counted,
                )
                return cur.rowcount
            n = 0
            for jid in job_ids:
                cur = await db.execute(
                    "UPDATE jobs SET state = 'queued', started_at = NULL,"
                    " interruptions = interruptions + ?,"
                    " interrupted_because = COALESCE(?, interrupted_because)"
                    " WHERE state = 'running' AND id = ?", (*counted, jid),
                )
                n += cur.rowcount
            return n

    async def retry_interrupted(self, job_id: int, reason: str) -> JobRow:
        """Count one interruption of the running ``job_id`` and claim its next attempt, in one
        transaction (the attempt that was interrupted is never signed)."""
        async with self.transaction() as db, db.execute(
            "UPDATE jobs SET interruptions = interruptions + 1, interrupted_because = ?,"
            " attempts = attempts + 1, started_at = ? WHERE id = ? AND state = 'running'"
            " RETURNING *", (reason, now_iso(), job_id),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise RuntimeError(f"job {job_id} is not running; cannot retry it")
        return _job(row)

    async def requeue_finished(self, job_ids: Iterable[int] = (), all_failed: bool = False
                               ) -> list[int]:
        """Queue finished jobs again (operator's ``rebuilder requeue``); the ids re-queued.

        The next attempt gets a new attempt number, so a new invocation and a new attestation;
        earlier attestations stay (append-only) until revoked. The job starts fresh: its
        interruption count is reset.
        """
        done: list[int] = []
        async with self.transaction() as db:
            if all_failed:
                async with db.execute("SELECT id FROM jobs WHERE state = 'failed'") as cur:
                    job_ids = [int(r[0]) for r in await cur.fetchall()]
            for jid in job_ids:
                cur = await db.execute(
                    # re-queued: a fresh start, and the buildinfo URL resolved from the config
                    "UPDATE jobs SET state = 'queued', started_at = NULL, finished_at = NULL,"
                    " buildinfo_pinned = 0, interruptions = 0, interrupted_because = NULL"
                    " WHERE id = ? AND state IN ('done', 'failed')", (jid,),
                )
                if cur.rowcount:
                    done.append(jid)
        return done

    async def job(self, job_id: int) -> JobRow | None:
        row = await self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    async def jobs_for_package(self, source: str, version: str) -> list[JobRow]:
        rows = await self._all(
            # a source version's jobs include its binNMUs
            "SELECT * FROM jobs WHERE source = ? AND (version = ? OR source_version = ?)"
            " ORDER BY id LIMIT 1000",
            (source, version, version),
        )
        return [_job(r) for r in rows]

    async def find_job(self, source: str, version: str, arch: str) -> JobRow | None:
        row = await self._one(
            "SELECT * FROM jobs WHERE source = ? AND version = ? AND arch = ? ORDER BY id LIMIT 1",
            (source, version, arch),
        )
        return _job(row) if row else None

    # -- finishing a build ------------------------------------------------------------------------

    async def finish_build(self, build: NewBuild, attestation: NewAttestation) -> int:
        """Store a finished attempt and its signed attestation in one transaction; its seq.

        Raises ``sqlite3.IntegrityError`` when that invocation was already stored.
        """
        state = "failed" if build.verdict == "failed" else "done"
        async with self.transaction() as db:
            cur = await db.execute(
                "INSERT INTO builds (job_id, attempt, invocation_id, verdict, failure,"
                " failure_stage, environment, started_at, finished_at, duration_s, log_path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (build.job_id, build.attempt, build.invocation_id, build.verdict, build.failure,
                 build.failure_stage, build.environment, build.started_at, build.finished_at,
                 build.duration_s, build.log_path),
            )
            build_id = cur.lastrowid
            await db.executemany(
                "INSERT INTO outputs (build_id, name, verdict, rebuilt, buildinfo, repository,"
                " report_id, report_html, report_txt, report_sha256)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(build_id, o.name, o.verdict, o.rebuilt, o.buildinfo, o.repository, o.report_id,
                  o.report_html, o.report_txt, o.report_sha256) for o in build.outputs],
            )
            seq = await self._insert_attestation(db, attestation, build_id)
            await db.execute(
                "UPDATE jobs SET state = ?, finished_at = ? WHERE id = ?",
                (state, build.finished_at, build.job_id),
            )
        return seq

    async def add_attestation(self, attestation: NewAttestation) -> int:
        """Store an attestation that belongs to no build (a revocation); its seq."""
        async with self.transaction() as db:
            return await self._insert_attestation(db, attestation, None)

    async def add_attestations_bulk(self, items: Sequence[NewAttestation]) -> None:
        """Many attestations (no build) in one transaction with ``executemany`` (imports,
        benchmarks). Sequence numbers are assigned under the write lock, in order."""
        now = now_iso()
        for a in items:
            check_log_entry(a.envelope)  # the stored envelopes are the log (rebuilder/tlog.py)
        async with self.transaction() as db:
            async with db.execute("SELECT COALESCE(MAX(seq), 0) FROM attestations") as cur:
                row = await cur.fetchone()
            first = int(row[0]) + 1 if row else 1
            # AUTOINCREMENT never reuses a seq: start after the highest ever handed out too.
            async with db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'attestations'"
                                  ) as cur:
                sq = await cur.fetchone()
            if sq is not None:
                first = max(first, int(sq[0]) + 1)
            seqs = range(first, first + len(items))
            await db.executemany(
                "INSERT INTO attestations (seq, envelope_sha256, envelope, kind, source, version,"
                " arch, build_id, revokes, created_at, payload_sha256)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                [(seq, a.envelope_sha256, a.envelope, a.kind, a.source, a.version, a.arch,
                  a.revokes, now, a.statement_digest())
                 for seq, a in zip(seqs, items, strict=True)],
            )
            await db.executemany(
                "INSERT INTO subjects (seq, name, sha256) VALUES (?, ?, ?)",
                [(seq, name, sha) for seq, a in zip(seqs, items, strict=True)
                 for name, sha in a.subjects],
            )
            await db.executemany("INSERT INTO outbox (seq) VALUES (?)", [(q,) for q in seqs])

    @staticmethod
    async def _insert_attestation(
        db: aiosqlite.Connection, a: NewAttestation, build_id: int | None
    ) -> int:
        check_log_entry(a.envelope)  # the stored envelopes are the log (rebuilder/tlog.py)
        cur = await db.execute(
            "INSERT INTO attestations (envelope_sha256, envelope, kind, source, version, arch,"
            " build_id, revokes, created_at, payload_sha256)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (a.envelope_sha256, a.envelope, a.kind, a.source, a.version, a.arch, build_id,
             a.revokes, now_iso(), a.statement_digest()),
        )
        seq = cur.lastrowid
        assert seq is not None
        await db.executemany(
            "INSERT INTO subjects (seq, name, sha256) VALUES (?, ?, ?)",
            [(seq, name, sha) for name, sha in a.subjects],
        )
        await db.execute("INSERT INTO outbox (seq) VALUES (?)", (seq,))
        return seq

    # -- reading attestations -------------------------------------------------------------------

    async def attestations_by_digest(self, sha256: str, limit: int = 1000) -> list[bytes]:
        """Envelopes with a subject of that digest, then revocations of those envelopes."""
        rows = await self._all(
            "SELECT a.seq, a.envelope_sha256, a.payload_sha256, a.envelope FROM subjects s"
            " JOIN attestations a ON a.seq = s.seq"
            " WHERE s.sha256 = ? AND a.kind != 'revocation' ORDER BY a.seq LIMIT ?",
            (sha256, limit),
        )
        out = [bytes(r["envelope"]) for r in rows]
        out += await self.revocations_of(_named_by(rows))
        return out

    async def revocations_of(self, envelope_digests: Sequence[str]) -> list[bytes]:
        """Revocations naming any of these digests: a statement's payload_sha256 (v2) or an
        envelope_sha256 (v1, the node's own canonical envelope)."""
        out: list[bytes] = []
        for i in range(0, len(envelope_digests), 500):
            chunk = envelope_digests[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._all(
                f"SELECT envelope FROM attestations WHERE revokes IN ({marks}) ORDER BY seq",  # noqa: S608  # placeholders only
                chunk,
            )
            out += [bytes(r["envelope"]) for r in rows]
        return out

    async def attestations_since(self, cursor: int, limit: int) -> list[AttestationRow]:
        rows = await self._all(
            "SELECT seq, envelope_sha256, envelope, kind FROM attestations WHERE seq > ?"
            " ORDER BY seq LIMIT ?",
            (cursor, limit),
        )
        return [AttestationRow(r["seq"], r["envelope_sha256"], bytes(r["envelope"]), r["kind"])
                for r in rows]

    async def attestations_for_package(self, source: str, version: str) -> list[bytes]:
        rows = await self._all(
            "SELECT envelope_sha256, payload_sha256, envelope FROM attestations"
            " WHERE source = ? AND version = ? AND kind != 'revocation' ORDER BY seq LIMIT 1000",
            (source, version),
        )
        out = [bytes(r["envelope"]) for r in rows]
        out += await self.revocations_of(_named_by(rows))
        return out

    async def attestations_for_queries(
        self, queries: Sequence[tuple[str, str, str]], limit: int = 1000
    ) -> list[list[bytes]]:
        """For each (digest hex, source, version), in order, what ``attestations_by_digest``
        and ``attestations_for_package`` answer together, each envelope once: the batch
        endpoint's answer in a handful of SQL statements however many queries there are."""
        digests = sorted({d for d, _, _ in queries})
        packages = sorted({(s, v) for _, s, v in queries})
        by_digest: dict[str, list[sqlite3.Row]] = {d: [] for d in digests}
        by_package: dict[tuple[str, str], list[sqlite3.Row]] = {p: [] for p in packages}
        for i in range(0, len(digests), 500):
            chunk = digests[i:i + 500]
            marks = ",".join("?" * len(chunk))
            sql = (f"SELECT s.sha256 AS digest, a.seq, a.envelope_sha256, a.payload_sha256,"  # noqa: S608  # placeholders only
                   " a.envelope FROM subjects s JOIN attestations a ON a.seq = s.seq"
                   f" WHERE s.sha256 IN ({marks}) AND a.kind != 'revocation' ORDER BY a.seq")
            rows = await self._all(sql, chunk)
            for r in rows:
                by_digest[r["digest"]].append(r)
        for i in range(0, len(packages), 250):
            pchunk = packages[i:i + 250]
            pairs = ",".join(["(?, ?)"] * len(pchunk))
            sql = (f"SELECT source, version, seq, envelope_sha256, payload_sha256, envelope"  # noqa: S608  # placeholders only
                   f" FROM attestations WHERE (source, version) IN (VALUES {pairs})"
                   " AND kind != 'revocation' ORDER BY seq")
            rows = await self._all(sql, [x for p in pchunk for x in p])
            for r in rows:
                by_package[(r["source"], r["version"])].append(r)
        for d in by_digest:
            by_digest[d] = by_digest[d][:limit]
        for p in by_package:
            by_package[p] = by_package[p][:limit]
        named = sorted({d for rows in (*by_digest.values(), *by_package.values())
                        for d in _named_by(rows)})
        revoking: dict[str, list[tuple[int, bytes]]] = {}
        for i in range(0, len(named), 500):
            nchunk = named[i:i + 500]
            marks = ",".join("?" * len(nchunk))
            rows = await self._all(
                f"SELECT seq, revokes, envelope FROM attestations WHERE revokes IN ({marks})"  # noqa: S608  # placeholders only
                " ORDER BY seq",
                nchunk,
            )
            for r in rows:
                revoking.setdefault(r["revokes"], []).append((r["seq"], bytes(r["envelope"])))

        def answer(rows: list[sqlite3.Row]) -> list[bytes]:
            revs = sorted({x for d in _named_by(rows) for x in revoking.get(d, ())})
            return [bytes(r["envelope"]) for r in rows] + [env for _, env in revs]

        out = []
        for digest, source, version in queries:
            envs = answer(by_digest[digest]) + answer(by_package[(source, version)])
            out.append(list(dict.fromkeys(envs)))
        return out

    async def unrevoked_rebuilds_for_deb(
        self, name: str, version: str, limit: int = 100
    ) -> list[bytes]:
        """Rebuild envelopes with a subject ``<name>_<version without epoch>_*``, not revoked."""
        prefix = f"{name}_{version.split(':', 1)[1] if ':' in version else version}_"
        # A range on the indexed name: '_' + 1 is '`'.
        rows = await self._all(
            "SELECT DISTINCT a.seq, a.envelope FROM subjects s JOIN attestations a ON a.seq = s.seq"
            " WHERE s.name >= ? AND s.name < ? AND a.kind = 'rebuild' AND NOT EXISTS"
            " (SELECT 1 FROM attestations r WHERE r.kind = 'revocation'"
            "  AND r.revokes IN (a.payload_sha256, a.envelope_sha256))"
            " ORDER BY a.seq DESC LIMIT ?",
            (prefix, prefix[:-1] + "`", limit),
        )
        return [bytes(r["envelope"]) for r in rows]

    async def attestation(self, envelope_sha256: str) -> AttestationRow | None:
        """The attestation with that envelope_sha256 or payload (statement) sha256."""
        r = await self._one(
            "SELECT seq, envelope_sha256, envelope, kind FROM attestations"
            " WHERE envelope_sha256 = ? OR payload_sha256 = ? ORDER BY seq LIMIT 1",
            (envelope_sha256, envelope_sha256),
        )
        return AttestationRow(r["seq"], r["envelope_sha256"], bytes(r["envelope"]), r["kind"]) \
            if r else None

    async def attestation_package(self, envelope_sha256: str) -> tuple[str, str, str] | None:
        r = await self._one(
            "SELECT source, version, arch FROM attestations"
            " WHERE envelope_sha256 = ? OR payload_sha256 = ? ORDER BY seq LIMIT 1",
            (envelope_sha256, envelope_sha256),
        )
        return (r["source"], r["version"], r["arch"]) if r else None

    # -- builds -----------------------------------------------------------------------------------

    async def latest_build(self, job_id: int) -> sqlite3.Row | None:
        return await self._one(
            "SELECT b.*, a.envelope_sha256, a.payload_sha256 FROM builds b"
            " LEFT JOIN attestations a ON a.build_id = b.id"
            " WHERE b.job_id = ? ORDER BY b.id DESC LIMIT 1", (job_id,),
        )

    async def outputs(self, build_id: int) -> list[sqlite3.Row]:
        return await self._all("SELECT * FROM outputs WHERE build_id = ? ORDER BY id",
                               (build_id,))

    async def report(self, report_id: str) -> sqlite3.Row | None:
        return await self._one("SELECT * FROM outputs WHERE report_id = ?", (report_id,))

    async def recent_builds(self, limit: int = 10) -> list[sqlite3.Row]:
        """The latest builds, each with its attestation's envelope sha256 (what ``revoke``
        takes) and the envelope sha256 of a revocation naming it, if any."""
        return await self._all(
            "SELECT b.*, j.source, j.version, j.arch, a.envelope_sha256,"
            " (SELECT r.envelope_sha256 FROM attestations r WHERE r.kind = 'revocation'"
            "  AND r.revokes IN (a.payload_sha256, a.envelope_sha256) ORDER BY r.seq LIMIT 1)"
            " AS revoked_by"
            " FROM builds b JOIN jobs j ON j.id = b.job_id"
            " LEFT JOIN attestations a ON a.build_id = b.id"
            " ORDER BY b.id DESC LIMIT ?", (limit,),
        )

    async def recent_revocations(self, limit: int = 10) -> list[AttestationRow]:
        rows = await self._all(
            "SELECT seq, envelope_sha256, envelope, kind FROM attestations"
            " WHERE kind = 'revocation' ORDER BY seq DESC LIMIT ?", (limit,),
        )
        return [AttestationRow(r["seq"], r["envelope_sha256"], bytes(r["envelope"]), r["kind"])
                for r in rows]
    async def referenced_files(self) -> set[str]:
        """Every log and report path (relative to the state directory) a stored build names."""
        rows = await self._all(
            "SELECT log_path AS p FROM builds WHERE log_path IS NOT NULL"
            " UNION SELECT report_html FROM outputs WHERE report_html IS NOT NULL"
            " UNION SELECT report_txt FROM outputs WHERE report_txt IS NOT NULL"
        )
        return {str(r[0]) for r in rows}

    async def running_jobs(self) -> list[JobRow]:
        rows = await self._all("SELECT * FROM jobs WHERE state = 'running' ORDER BY id")
        return [_job(r) for r in rows]

    # -- outbox ---------------------------------------------------------------------------------

    async def pending_outbox(self, limit: int = 100) -> list[AttestationRow]:
        rows = await self._all(
            "SELECT a.seq, a.envelope_sha256, a.envelope, a.kind FROM outbox o"
            " JOIN attestations a ON a.seq = o.seq WHERE o.published_at IS NULL"
            " ORDER BY o.seq LIMIT ?", (limit,),
        )
        return [AttestationRow(r["seq"], r["envelope_sha256"], bytes(r["envelope"]), r["kind"])
                for r in rows]

    async def mark_published(self, seq: int) -> None:
        async with self.transaction() as db:
            await db.execute("UPDATE outbox SET published_at = ? WHERE seq = ?", (now_iso(), seq))

    # -- counters (status, metrics) ---------------------------------------------------------------

    async def counts(self) -> dict[str, Any]:
        r = await self._one(
            "SELECT"
            " (SELECT COUNT(*) FROM jobs WHERE state = 'queued') AS queued,"
            " (SELECT COUNT(*) FROM jobs WHERE state = 'running') AS running,"
            " (SELECT COUNT(*) FROM jobs WHERE state = 'done') AS done,"
            " (SELECT COUNT(*) FROM jobs WHERE state = 'failed') AS failed,"
            " (SELECT COUNT(*) FROM outbox WHERE published_at IS NULL) AS backlog,"
            " (SELECT COALESCE(MAX(seq), 0) FROM attestations) AS last_seq"
        )
        assert r is not None
        return dict(r)

    async def attestation_kinds(self) -> dict[str, int]:
        rows = await self._all("SELECT kind, COUNT(*) AS n FROM attestations GROUP BY kind")
        return {r["kind"]: r["n"] for r in rows}

    async def build_verdicts(self) -> dict[str, int]:
        rows = await self._all("SELECT verdict, COUNT(*) AS n FROM builds GROUP BY verdict")
        return {r["verdict"]: r["n"] for r in rows}

    async def duration_histogram(self, buckets: Sequence[float]) -> tuple[list[int], int, float]:
        """Cumulative counts per bucket upper bound, total count and sum of build durations."""
        cols = ", ".join(
            f"SUM(CASE WHEN duration_s <= {float(b)!r} THEN 1 ELSE 0 END)" for b in buckets
        )
        r = await self._one(f"SELECT {cols}, COUNT(*), COALESCE(SUM(duration_s), 0) FROM builds")  # noqa: S608  # bucket floats are ours
        assert r is not None
        values = list(r)
        return [int(v or 0) for v in values[:-2]], int(values[-2]), float(values[-1])
