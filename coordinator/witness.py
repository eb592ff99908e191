"""The coordinator as a C2SP tlog-witness (c2sp.org/tlog-witness) of registered rebuilders' logs.

``POST <prefix>/add-checkpoint`` checks a node's checkpoint against the latest one it cosigned
for that origin (the old size, a consistency proof) and answers with a cosignature/v1 line
(c2sp.org/tlog-cosignature); ``GET /v1/witness`` names the witness and its vkey. The state is
one row per origin in its own SQLite file (synchronous=FULL): the compare-and-swap and the
write are one transaction, committed before the answer::

    witness = await Witness.open(path, signer, logs={origin: (rebuilder id, verifier)})
    status, content_type, body = await witness.add_checkpoint(request_body)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
from aiohttp import web

from verifier.errors import BadDataError
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.merkle import HASH_SIZE, ProofError, verify_consistency
from verifier.tlog.note import Note, NoteError, NoteSigner, NoteVerifier

__all__ = ["MAX_REQUEST_BYTES", "Answer", "LoggedCheckpoint", "Witness", "add_witness_routes"]

log = logging.getLogger("coordinator.witness")

MAX_REQUEST_BYTES = 70 * 1024
MAX_PROOF_LINES = 63
_OLD = re.compile(r"old (0|[1-9][0-9]{0,18})")
SIZE_TYPE = "text/x.tlog.size"


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class LoggedCheckpoint:
    origin: str
    rebuilder: str
    size: int
    root: bytes
    note: bytes
    updated_at: float


def _bad(status: int, message: str) -> Answer:
    return Answer(status, "text/plain", message.encode() + b"\n")


class RequestError(BadDataError, ValueError):
    """A malformed add-checkpoint request (a ``ValueError`` too, as it always was)."""

    def __init__(self, message: str) -> None:
        super().__init__("add-checkpoint request", message, message=message)


def parse_request(body: bytes) -> tuple[int, list[bytes], bytes]:
    """(old size, consistency proof, checkpoint note bytes); ``RequestError`` naming the
    fault."""
    if len(body) > MAX_REQUEST_BYTES:
        raise RequestError(f"request is over {MAX_REQUEST_BYTES} bytes")
    head, sep, rest = body.partition(b"\n")
    if not sep:
        raise RequestError("no old size line")
    m = _OLD.fullmatch(head.decode("ascii", "replace"))
    if not m:
        raise RequestError("first line is not 'old <size>'")
    proof: list[bytes] = []
    while True:
        line, sep, rest = rest.partition(b"\n")
        if not sep:
            raise RequestError("no empty line before the checkpoint")
        if line == b"":
            break
        if len(proof) == MAX_PROOF_LINES:
            raise RequestError(f"more than {MAX_PROOF_LINES} consistency proof lines")
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError) as e:
            raise RequestError(f"consistency proof line {len(proof) + 1} is not base64") from e
        if len(h) != HASH_SIZE:
            raise RequestError(f"consistency proof line {len(proof) + 1} is not a 32-byte hash")
        proof.append(h)
    return int(m.group(1)), proof, rest


class Witness:
    def __init__(self, db: aiosqlite.Connection, signer: NoteSigner,
                 logs: Mapping[str, tuple[str, NoteVerifier]]) -> None:
        self._db = db
        self.signer = signer
        self.logs = dict(logs)  # origin -> (rebuilder id, its log key)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, signer: NoteSigner,
                   logs: Mapping[str, tuple[str, NoteVerifier]]) -> Witness:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")  # persisted before we answer
            await db.execute("PRAGMA busy_timeout=10000")
            await db.execute(
                "CREATE TABLE IF NOT EXISTS witnessed (origin TEXT PRIMARY KEY,"
                " rebuilder TEXT NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL,"
                " note BLOB NOT NULL, updated_at REAL NOT NULL)")
            await db.execute(
                "CREATE TABLE IF NOT EXISTS refused (id INTEGER PRIMARY KEY, origin TEXT NOT"
                " NULL, status INTEGER NOT NULL, reason TEXT NOT NULL, request BLOB NOT NULL,"
                " at REAL NOT NULL)")
        except BaseException:
            await db.close()
            raise
        return cls(db, signer, logs)

    async def close(self) -> None:
        await self._db.close()

    @property
    def vkey(self) -> str:
        return self.signer.vkey

    async def latest(self, origin: str) -> LoggedCheckpoint | None:
        async with self._db.execute(
                "SELECT origin, rebuilder, size, root, note, updated_at FROM witnessed"
                " WHERE origin = ?", (origin,)) as cur:
            r = await cur.fetchone()
        if r is None:
            return None
        return LoggedCheckpoint(str(r[0]), str(r[1]), int(r[2]), bytes(r[3]), bytes(r[4]),
                                float(r[5]))

    async def all_latest(self) -> list[LoggedCheckpoint]:
        async with self._db.execute("SELECT origin FROM witnessed ORDER BY origin") as cur:
            origins = [str(r[0]) for r in await cur.fetchall()]
        out = []
        for o in origins:
            lc = await self.latest(o)
            if lc is not None:
                out.append(lc)
        return out

    async def _refused(self, origin: str, answer: Answer, body: bytes) -> Answer:
        # A signed checkpoint that fails the checks may be evidence of a misbehaving log.
        await self._db.execute(
            "INSERT INTO refused (origin, status, reason, request, at) VALUES (?, ?, ?, ?, ?)",
            (origin, answer.status, answer.body.decode("utf-8", "replace").strip(), body,
             time.time()))
        return answer

    async def add_checkpoint(self, body: bytes) -> Answer:
        """Steps of tlog-witness "add-checkpoint", in the specification's order."""
        try:
            old, proof, note_bytes = parse_request(body)
            note = Note.from_bytes(note_bytes)
            cp = Checkpoint.from_text(note.text)
        except BadDataError as e:  # RequestError, NoteError, CheckpointError
            return _bad(400, f"malformed add-checkpoint request: {e}")
        known = self.logs.get(cp.origin)
        if known is None:
            return _bad(404, f"unknown log origin {cp.origin[:100]!r}")
        rebuilder, key = known
        try:
            note.verify([key])
        except NoteError as e:
            return _bad(403, f"checkpoint is not signed by {rebuilder}'s log key: {e.reason}")
        if old > cp.size:
            return await self._refused(cp.origin, _bad(
                400, f"old size {old} is larger than the checkpoint size {cp.size}"), body)
        if old == 0 and proof:
            return _bad(400, "the consistency proof must be empty when the old size is 0")
        async with self._lock:  # check and persist atomically (no rollback race)
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                answer = await self._check_and_store(rebuilder, cp, note, old, proof, body)
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")
        return answer

    async def _check_and_store(self, rebuilder: str, cp: Checkpoint, note: Note, old: int,
                               proof: list[bytes], body: bytes) -> Answer:
        async with self._db.execute(
                "SELECT size, root FROM witnessed WHERE origin = ?", (cp.origin,)) as cur:
            row = await cur.fetchone()
        size, root = (int(row[0]), bytes(row[1])) if row else (0, b"")
        if old != size:
            return Answer(409, SIZE_TYPE, b"%d\n" % size)
        if old == cp.size and row is not None and root != cp.root:
            log.warning("log %s (%s) shows another root for size %d: a split view",
                        cp.origin, rebuilder, old)
            return await self._refused(cp.origin, _bad(
                409, f"another root was cosigned for size {old}"), body)
        if old:
            try:
                verify_consistency(old, cp.size, root, cp.root, proof)
            except ProofError as e:
                log.warning("log %s (%s): checkpoint %d inconsistent with %d: %s", cp.origin,
                            rebuilder, cp.size, old, e.reason)
                return await self._refused(cp.origin, _bad(
                    422, f"consistency proof from {old} to {cp.size} fails: {e.reason}"),
                    body)
        await self._db.execute(
            "INSERT INTO witnessed (origin, rebuilder, size, root, note, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET size = excluded.size,"
            " root = excluded.root, note = excluded.note, updated_at = excluded.updated_at",
            (cp.origin, rebuilder, cp.size, cp.root, note.to_bytes(), time.time()))
        sig = self.signer.sign(note.text.encode(), timestamp=int(time.time()))
        return Answer(200, "text/plain", sig.line().encode())


WITNESS_KEY = web.AppKey("witness", Witness)


def add_witness_routes(app: web.Application, prefix: str,
                       make: Any) -> None:
    """Routes ``POST <prefix>/add-checkpoint`` and ``GET /v1/witness``; ``make`` is an async
    function returning the opened ``Witness`` (closed on cleanup)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        witness: Witness = await make()
        app[WITNESS_KEY] = witness
        yield
        await witness.close()

    async def add(request: web.Request) -> web.Response:
        body = await request.content.read(MAX_REQUEST_BYTES + 1)
        if len(body) > MAX_REQUEST_BYTES:
            answer = _bad(413, f"request is over {MAX_REQUEST_BYTES} bytes")
        else:
            answer = await request.app[WITNESS_KEY].add_checkpoint(body)
        resp = web.Response(status=answer.status, body=answer.body)
        resp.headers["Content-Type"] = answer.content_type
        return resp

    async def info(request: web.Request) -> web.Response:
        w = request.app[WITNESS_KEY]
        return web.json_response({"name": w.signer.name, "vkey": w.vkey})

    app.cleanup_ctx.append(ctx)
    app.router.add_post(prefix.rstrip("/") + "/add-checkpoint", add)
    app.router.add_get("/v1/witness", info)
