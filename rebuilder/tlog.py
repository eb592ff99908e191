"""The node's transparency log: every envelope it signs, RFC 6962 hashed, C2SP tlog-tiles served.

The log's entries *are* the stored envelopes in ``seq`` order (leaf index = seq - 1), so
storing an envelope appends it, in the same statement and transaction, at no extra write; an
envelope is never stored, hence never served, without being in the log. SQLite triggers refuse
deleting or rewriting a stored envelope; seqs are dense (AUTOINCREMENT, explicit max + 1 in bulk
inserts), checked on start and by every integration; ``check_log_entry`` (called by
``rebuilder.db`` before storing) refuses an envelope a log entry cannot hold. (An insert
trigger would cost ~8 µs per envelope, a sixth of signing it.) The tree's stored hashes,
checkpoints and the static files are derived from those committed entries afterwards::

    log = await NodeLog.open(store, settings, signer)
    await log.checkpoint()          # integrate new entries, sign, write tiles + checkpoint file
    await log.proof_for(sha256)     # inclusion proof of an envelope in the latest checkpoint

Crash safety (ARCHITECTURE §4.9): entries are committed before anything refers to them; a
checkpoint is committed (size is the primary key, the root is a function of the committed
entries) before its file is written or it is sent anywhere; files are written by rename and
rewritten on start, so a kill -9 at any point never yields two roots for one size, and never a
checkpoint that lacks a served envelope.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verifier.errors import BadDataError, ConfigError
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.merkle import consistency_proof as _consistency_proof
from verifier.tlog.merkle import (
    inclusion_proof,
    leaf_hash,
    stored_hash_index,
    stored_hashes_for_leaf,
    subtree_hash_indexes,
    tree_hash,
)
from verifier.tlog.note import Note, NoteSigner, Signature, sign_note
from verifier.tlog.tiles import (
    MAX_ENTRY_BYTES,
    TILE_HEIGHT,
    TILE_WIDTH,
    encode_bundle,
    entries_path,
    tile_path,
    tiles_for_size,
)

__all__ = [
    "LOG_MIGRATION",
    "LogConfigError",
    "LogEntryTooLarge",
    "LogSettings",
    "LogStateError",
    "NodeLog",
    "SignedCheckpoint",
    "check_log_entry",
]

log = logging.getLogger("rebuilder.tlog")

INTEGRATE_BATCH = 4096

# Appended to rebuilder/_schema.py MIGRATIONS.
LOG_MIGRATION = """
    CREATE VIEW log_entries AS SELECT seq - 1 AS idx, seq FROM attestations;
    CREATE TRIGGER log_no_delete BEFORE DELETE ON attestations
    BEGIN
        SELECT RAISE(ABORT, 'attestations are append-only (transparency log)');
    END;
    CREATE TRIGGER log_no_rewrite BEFORE UPDATE OF seq, envelope, envelope_sha256
        ON attestations
    BEGIN
        SELECT RAISE(ABORT, 'attestations are append-only (transparency log)');
    END;
    CREATE TABLE log_hashes (
        idx INTEGER PRIMARY KEY,                -- stored-hash index (verifier/tlog/merkle.py)
        hash BLOB NOT NULL
    );
    CREATE TABLE log_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        integrated INTEGER NOT NULL,            -- leaves whose stored hashes are in log_hashes
        files_size INTEGER NOT NULL             -- tree size whose tiles are all on disk
    );
    INSERT INTO log_state (id, integrated, files_size) VALUES (1, 0, 0);
    CREATE TABLE log_checkpoints (
        size INTEGER PRIMARY KEY,               -- one signed root per size, ever
        root BLOB NOT NULL,
        note BLOB NOT NULL,                     -- the node-signed note
        created_at TEXT NOT NULL
    );
    CREATE TABLE log_cosignatures (
        size INTEGER NOT NULL REFERENCES log_checkpoints (size),
        name TEXT NOT NULL,
        key_id INTEGER NOT NULL,
        line TEXT NOT NULL,                     -- the signature line, newline included
        received_at TEXT NOT NULL,
        PRIMARY KEY (size, name, key_id)
    )
"""


class LogStateError(BadDataError, RuntimeError):
    """The log's stored state contradicts itself (a missing entry or hash, another root): the
    state database was damaged or edited. A ``RuntimeError`` too, as it always was."""

    def __init__(self, message: str) -> None:
        super().__init__("node log", message, message=message)


class LogConfigError(ConfigError, ValueError):
    """The log's configuration contradicts its key or its stored checkpoints. A ``ValueError``
    too, as it always was."""


class LogEntryTooLarge(ValueError):
    """tlog-tiles entry bundles prefix each entry with a uint16 length."""


def check_log_entry(envelope: bytes) -> None:
    """Refuse, before it is stored, an envelope that cannot be a log entry."""
    if len(envelope) > MAX_ENTRY_BYTES:
        raise LogEntryTooLarge(f"envelope of {len(envelope)} bytes cannot be a log entry "
                               f"(tlog-tiles: at most {MAX_ENTRY_BYTES})")


@dataclass(frozen=True)
class LogSettings:
    origin: str
    url: str               # the public URL prefix (".../log")
    directory: Path        # where <prefix>/checkpoint and tile/ are written
    checkpoint_interval: float = 10.0


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: bytes            # node-signed note (no cosignatures)
    cosignatures: tuple[Signature, ...] = ()

    def served(self) -> bytes:
        """The note as served at <prefix>/checkpoint: node signature then cosignatures."""
        n = Note.from_bytes(self.note)
        return n.with_signatures(self.cosignatures).to_bytes()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _reader(known: dict[int, bytes]) -> Callable[[Sequence[int]], list[bytes]]:
    return lambda ix: [known[i] for i in ix]


def _now() -> str:
    from rebuilder.db import now_iso  # late: rebuilder.db imports this module
    return now_iso()


class NodeLog:
    """The log of one node; the only writer of log_hashes, log_checkpoints and the files."""

    def __init__(self, store: Any, settings: LogSettings, signer: NoteSigner | None) -> None:
        self.store = store
        self.settings = settings
        self.signer = signer
        self.latest: SignedCheckpoint | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, store: Any, settings: LogSettings, signer: NoteSigner) -> NodeLog:
        if signer.name != settings.origin:
            raise LogConfigError(f"log key name {signer.name!r} must be the origin "
                             f"{settings.origin!r}")
        Checkpoint(settings.origin, 0, bytes(32))  # validates the origin
        self = cls(store, settings, signer)
        await self._check_dense()
        self.latest = await self._load_latest()
        if self.latest is not None:
            if self.latest.checkpoint.origin != settings.origin:
                raise LogConfigError(f"the log's checkpoints name origin "
                                 f"{self.latest.checkpoint.origin!r}, config says "
                                 f"{settings.origin!r}; the origin of a log cannot change")
            await self._write_files(self.latest)  # after a crash: finish what was started
        return self

    # -- reading -------------------------------------------------------------------------------

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        rows: list[Any] = await self.store._all(sql, params)
        return rows

    async def size(self) -> int:
        rows = await self._rows("SELECT COALESCE(MAX(seq), 0) AS n FROM attestations")
        return int(rows[0]["n"])

    async def _hashes(self, indexes: Sequence[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        wanted = sorted(set(indexes))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for r in await self._rows(
                    f"SELECT idx, hash FROM log_hashes WHERE idx IN ({marks})", chunk):  # noqa: S608  # placeholders only
                out[int(r["idx"])] = bytes(r["hash"])
        missing = [i for i in wanted if i not in out]
        if missing:
            raise LogStateError(f"stored hashes {missing[:5]} are missing from the log")
        return out

    async def _resolve(self, compute: Any) -> Any:
        """Run a pure merkle function that calls its reader once: first to learn the indexes
        it needs, then with those hashes fetched from the database."""
        asked: list[int] = []

        def record(ix: Sequence[int]) -> list[bytes]:
            asked.extend(ix)
            return [bytes(32)] * len(ix)

        compute(record)
        got = await self._hashes(asked)
        return compute(lambda ix: [got[i] for i in ix])

    async def root(self, size: int) -> bytes:
        root: bytes = await self._resolve(lambda read: tree_hash(size, read))
        return root

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        proof: list[bytes] = await self._resolve(
            lambda read: inclusion_proof(index, size, read))
        return proof

    async def consistency_proof(self, old: int, new: int) -> list[bytes]:
        proof: list[bytes] = await self._resolve(
            lambda read: _consistency_proof(old, new, read))
        return proof

    async def index_of(self, seq: int) -> int | None:
        rows = await self._rows("SELECT seq - 1 AS idx FROM attestations WHERE seq = ?", (seq,))
        return int(rows[0]["idx"]) if rows else None

    async def index_of_envelope(self, envelope_sha256: str) -> int | None:
        rows = await self._rows(
            "SELECT seq - 1 AS idx FROM attestations WHERE envelope_sha256 = ?",
            (envelope_sha256,))
        return int(rows[0]["idx"]) if rows else None

    async def latest_checkpoint(self) -> SignedCheckpoint | None:
        """The latest checkpoint as stored (for a read-only view in another process)."""
        return await self._load_latest()

    async def proof_for(self, envelope_sha256: str) -> dict[str, Any] | None:
        """The inclusion proof of an envelope in the latest checkpoint, shaped after the
        Sigstore bundle's ``inclusionProof`` (docs/formats.md); None until checkpointed."""
        latest = await self._load_latest()
        index = await self.index_of_envelope(envelope_sha256)
        if latest is None or index is None or index >= latest.checkpoint.size:
            return None
        size = latest.checkpoint.size
        hashes = await self.inclusion_proof(index, size)
        return {
            "logIndex": str(index),
            "treeSize": str(size),
            "rootHash": base64.b64encode(latest.checkpoint.root).decode(),
            "hashes": [base64.b64encode(h).decode() for h in hashes],
            "checkpoint": {"envelope": latest.served().decode()},
        }

    async def entries_at(self, indexes: Sequence[int]) -> dict[int, tuple[int, str]]:
        """Log index -> (seq, envelope sha256) for the given indexes."""
        out: dict[int, tuple[int, str]] = {}
        for i in range(0, len(indexes), 500):
            chunk = [ix + 1 for ix in indexes[i:i + 500]]
            marks = ",".join("?" * len(chunk))
            for r in await self._rows(
                    "SELECT seq - 1 AS idx, seq, envelope_sha256 FROM attestations"  # noqa: S608  # placeholders only
                    f" WHERE seq IN ({marks})", chunk):
                out[int(r["idx"])] = (int(r["seq"]), str(r["envelope_sha256"]))
        return out

    async def _load_latest(self) -> SignedCheckpoint | None:
        rows = await self._rows(
            "SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1")
        if not rows:
            return None
        return await self._signed(int(rows[0]["size"]), bytes(rows[0]["note"]))

    async def _signed(self, size: int, note: bytes) -> SignedCheckpoint:
        cos = await self._rows(
            "SELECT line FROM log_cosignatures WHERE size = ? ORDER BY name, key_id", (size,))
        sigs = tuple(Signature.from_line(str(r["line"])) for r in cos)
        cp = Checkpoint.from_text(Note.from_bytes(note).text)
        return SignedCheckpoint(cp, note, sigs)

    async def checkpoint_at(self, size: int) -> SignedCheckpoint | None:
        rows = await self._rows("SELECT note FROM log_checkpoints WHERE size = ?", (size,))
        return await self._signed(size, bytes(rows[0]["note"])) if rows else None

    # -- writing -------------------------------------------------------------------------------

    async def _check_dense(self) -> None:
        """The log is the attestations in seq order: refuse a database whose seqs have gaps
        (the triggers keep new ones dense; a database from before them could differ)."""
        rows = await self._rows(
            "SELECT COUNT(*) AS n, COALESCE(MAX(seq), 0) AS m FROM attestations")
        if int(rows[0]["n"]) != int(rows[0]["m"]):
            raise LogStateError(
                f"attestation seqs are not 1..{rows[0]['m']} ({rows[0]['n']} rows): this "
                "database cannot be a transparency log as is")

    async def integrate(self) -> int:
        """Compute the stored hashes of entries not integrated yet; the integrated size."""
        while True:
            state = await self._rows("SELECT integrated FROM log_state WHERE id = 1")
            start = int(state[0]["integrated"])
            rows = await self._rows(
                "SELECT seq - 1 AS idx, envelope FROM attestations WHERE seq > ?"
                " ORDER BY seq LIMIT ?", (start, INTEGRATE_BATCH))
            if not rows:
                return start
            known = await self._hashes(subtree_hash_indexes(0, start)) if start else {}
            new: list[tuple[int, bytes]] = []
            n = start
            for r in rows:
                if int(r["idx"]) != n:
                    raise LogStateError(f"log entry {n} is missing (found {r['idx']})")
                hashes = stored_hashes_for_leaf(n, leaf_hash(bytes(r["envelope"])),
                                                _reader(known))
                first = stored_hash_index(0, n)
                for j, h in enumerate(hashes):
                    known[first + j] = h
                    new.append((first + j, h))
                n += 1
            async with self.store.transaction() as db:
                async with db.execute("SELECT integrated FROM log_state WHERE id = 1") as cur:
                    again = await cur.fetchone()
                if again is None or int(again[0]) != start:
                    raise RuntimeError("two writers integrate the log at once")
                await db.executemany(
                    "INSERT OR REPLACE INTO log_hashes (idx, hash) VALUES (?, ?)", new)
                await db.execute("UPDATE log_state SET integrated = ? WHERE id = 1", (n,))

    async def checkpoint(self) -> SignedCheckpoint | None:
        """Integrate, and sign a checkpoint of the new size if the tree grew; write the files.
        Returns the latest checkpoint (None while the log is empty)."""
        async with self._lock:
            size = await self.integrate()
            if size == 0:
                return None
            if self.latest is not None and self.latest.checkpoint.size == size:
                return self.latest
            root = await self.root(size)
            existing = await self.checkpoint_at(size)
            if existing is not None:
                # Signed before a crash; the root is a function of the committed entries.
                if existing.checkpoint.root != root:
                    raise LogStateError(f"stored checkpoint of size {size} has another root")
                signed = existing
            else:
                if self.signer is None:
                    raise RuntimeError("a read-only log view cannot sign checkpoints")
                cp = Checkpoint(self.settings.origin, size, root)
                note = sign_note(cp.to_text(), [self.signer])
                async with self.store.transaction() as db:
                    await db.execute(
                        "INSERT INTO log_checkpoints (size, root, note, created_at)"
                        " VALUES (?, ?, ?, ?)", (size, root, note, _now()))
                signed = SignedCheckpoint(cp, note)
            await self._write_files(signed)
            self.latest = signed
            log.info("checkpoint %s size %d root %s", self.settings.origin, size,
                     base64.b64encode(root).decode())
            return signed

    async def add_cosignatures(self, size: int, sigs: Sequence[Signature]) -> None:
        """Keep witness cosignatures of checkpoint ``size`` (already verified by the caller)."""
        async with self._lock:
            async with self.store.transaction() as db:
                await db.executemany(
                    "INSERT OR REPLACE INTO log_cosignatures (size, name, key_id, line,"
                    " received_at) VALUES (?, ?, ?, ?, ?)",
                    [(size, s.name, s.key_id, s.line(), _now()) for s in sigs])
            if self.latest is not None and self.latest.checkpoint.size == size:
                self.latest = await self.checkpoint_at(size)
                assert self.latest is not None
                await asyncio.to_thread(_write_atomic, self.settings.directory / "checkpoint",
                                        self.latest.served())

    # -- files ---------------------------------------------------------------------------------

    async def _tile(self, level: int, n: int, width: int) -> bytes:
        height = level * TILE_HEIGHT
        ix = [stored_hash_index(height, n * TILE_WIDTH + i) for i in range(width)]
        got = await self._hashes(ix)
        return b"".join(got[i] for i in ix)

    async def _bundle(self, n: int, width: int) -> bytes:
        rows = await self._rows(
            "SELECT envelope FROM attestations WHERE seq > ? AND seq <= ? ORDER BY seq",
            (n * TILE_WIDTH, n * TILE_WIDTH + width))
        if len(rows) != width:
            raise LogStateError(f"entry bundle {n}: {len(rows)} entries, expected {width}")
        return encode_bundle([bytes(r["envelope"]) for r in rows])

    async def _write_files(self, signed: SignedCheckpoint) -> None:
        """Tiles and bundles of the tree of ``signed``'s size (those not written yet), then
        the checkpoint file last, so a client never reads a checkpoint whose tiles are missing."""
        d = self.settings.directory
        size = signed.checkpoint.size
        state = await self._rows("SELECT files_size FROM log_state WHERE id = 1")
        done = min(int(state[0]["files_size"]), size)
        writes: list[tuple[Path, bytes]] = []
        level = 0
        while TILE_WIDTH ** level <= size:
            span = TILE_WIDTH ** (level + 1)
            for n in range(done // span, size // span):  # full tiles completed since `done`
                writes.append((d / tile_path(level, n), await self._tile(level, n, TILE_WIDTH)))
                if level == 0:
                    writes.append((d / entries_path(n), await self._bundle(n, TILE_WIDTH)))
            level += 1
        for level, n, width in tiles_for_size(size):
            writes.append((d / tile_path(level, n, width), await self._tile(level, n, width)))
            if level == 0:
                writes.append((d / entries_path(n, width), await self._bundle(n, width)))

        def write_all() -> None:
            for path, data in writes:
                _write_atomic(path, data)
        await asyncio.to_thread(write_all)
        async with self.store.transaction() as db:
            await db.execute("UPDATE log_state SET files_size = MAX(files_size, ?) WHERE id = 1",
                             (size,))
        await asyncio.to_thread(_write_atomic, d / "checkpoint", signed.served())
