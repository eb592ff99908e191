"""The coordinator as a monitor of every registered rebuilder's transparency log.

Each round reads a node's ``<url>/log/checkpoint`` (signed by that node's key), fetches the
entry bundles it has not read, checks that every entry is a valid envelope by that node and that
the entries hash to the checkpoint's root, extending its own mirror of the tree (so it also
proves the log only grew). It compares with what the witness cosigned, and with what reached
the coordinator over MQTT and HTTP. Findings go to ``log_inconsistencies`` in the coordinator
store and out on ``rq/v1/events/log-inconsistency``::

    monitor = await Monitor.open(path, config, store, session)
    await monitor.round()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiosqlite

from coordinator.config import CoordinatorConfig, RebuilderConfig
from coordinator.store import Store
from verifier.dsse import Envelope
from verifier.errors import BadDataError
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.merkle import (
    inclusion_proof,
    leaf_hash,
    stored_hash_index,
    stored_hashes_for_leaf,
    subtree_hash_indexes,
    tree_hash,
)
from verifier.tlog.note import Note, NoteVerifier
from verifier.tlog.tiles import TILE_WIDTH, decode_bundle, entries_path

__all__ = ["LOG_INCONSISTENCY_TOPIC", "Monitor"]

log = logging.getLogger("coordinator.monitor")

LOG_INCONSISTENCY_TOPIC = "rq/v1/events/log-inconsistency"
MAX_CHECKPOINT_BYTES = 64 * 1024
MAX_BUNDLE_BYTES = TILE_WIDTH * (2 + 0xFFFF)
# A log further ahead than this (~1,000,000 entries) than the monitor's last verified size is
# not read (logged; the mirror can only advance to a signed checkpoint, in one step).
MAX_BUNDLES_PER_ROUND = 4096
FETCH_TIMEOUT_S = 30.0
DEFAULT_GRACE_S = 120.0  # how long an envelope may be received but not yet checkpointed

Publish = Callable[[str, bytes], Awaitable[bool]]  # topic, payload -> sent?


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str
    evidence: dict[str, Any]


class _Fetch(Exception):
    pass


class Monitor:
    def __init__(self, db: aiosqlite.Connection, config: CoordinatorConfig, store: Store,
                 session: aiohttp.ClientSession, grace: float = DEFAULT_GRACE_S) -> None:
        self._db = db
        self.config = config
        self.store = store
        self.session = session
        self.grace = grace
        self.witnessed: Callable[[str], Awaitable[tuple[int, bytes] | None]] | None = None
        self.publish: Publish | None = None

    @classmethod
    async def open(cls, path: Path, config: CoordinatorConfig, store: Store,
                   session: aiohttp.ClientSession, grace: float = DEFAULT_GRACE_S) -> Monitor:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA busy_timeout=10000")
            for sql in (
                "CREATE TABLE IF NOT EXISTS mon_state (rebuilder TEXT PRIMARY KEY, origin TEXT"
                " NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL, note BLOB NOT NULL,"
                " received_cursor INTEGER NOT NULL DEFAULT 0, checked_at REAL NOT NULL)",
                "CREATE TABLE IF NOT EXISTS mon_hashes (rebuilder TEXT NOT NULL, idx INTEGER"
                " NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (rebuilder, idx)) WITHOUT ROWID",
                "CREATE TABLE IF NOT EXISTS mon_entries (rebuilder TEXT NOT NULL, idx INTEGER"
                " NOT NULL, digest TEXT NOT NULL, kind TEXT NOT NULL, seen_at REAL NOT NULL,"
                " served INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (rebuilder, idx))",
                "CREATE INDEX IF NOT EXISTS mon_entries_digest ON mon_entries (digest)",
            ):
                await db.execute(sql)
        except BaseException:
            await db.close()
            raise
        return cls(db, config, store, session, grace)

    async def close(self) -> None:
        await self._db.close()

    # -- fetching ------------------------------------------------------------------------------

    async def _get(self, url: str, limit: int) -> bytes:
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S), self.session.get(
                    url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise _Fetch(f"{url}: HTTP {resp.status}")
                data = await resp.content.read(limit + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise _Fetch(f"{url}: {e!r}") from e
        if len(data) > limit:
            raise _Fetch(f"{url}: over {limit} bytes")
        return data

    # -- the mirror ----------------------------------------------------------------------------

    async def _hashes(self, rebuilder: str, indexes: Sequence[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for i in range(0, len(indexes), 400):
            chunk = list(indexes[i:i + 400])
            marks = ",".join("?" * len(chunk))
            async with self._db.execute(
                    f"SELECT idx, hash FROM mon_hashes WHERE rebuilder = ? AND idx IN ({marks})",  # noqa: S608  # placeholders
                    [rebuilder, *chunk]) as cur:
                for r in await cur.fetchall():
                    out[int(r[0])] = bytes(r[1])
        return out

    async def _root(self, rebuilder: str, size: int) -> bytes:
        ix = subtree_hash_indexes(0, size)
        got = await self._hashes(rebuilder, ix)
        return tree_hash(size, lambda want: [got[i] for i in want])

    async def _state(self, rebuilder: str) -> tuple[int, bytes, bytes, int] | None:
        async with self._db.execute(
                "SELECT size, root, note, received_cursor FROM mon_state WHERE rebuilder = ?",
                (rebuilder,)) as cur:
            r = await cur.fetchone()
        return (int(r[0]), bytes(r[1]), bytes(r[2]), int(r[3])) if r else None

    # -- one rebuilder -------------------------------------------------------------------------

    async def check(self, r: RebuilderConfig) -> list[Finding]:
        """Read ``r``'s log up to its current checkpoint; what is wrong with it."""
        key = NoteVerifier.ed25519(r.origin, r.public_key)
        base = r.url.rstrip("/") + "/log"
        try:
            raw = await self._get(base + "/checkpoint", MAX_CHECKPOINT_BYTES)
        except _Fetch as e:
            log.info("monitor: log of %s unavailable: %s", r.id, e)
            return []
        try:
            note = Note.from_bytes(raw)
            note.verify([key])
            cp = Checkpoint.from_text(note.text)
        except BadDataError as e:
            return [Finding("invalid-checkpoint", f"checkpoint of {r.id} does not verify: "
                            f"{e.reason}", {"checkpoint": raw.decode("utf-8", "replace")})]
        if cp.origin != r.origin:
            return [Finding("invalid-checkpoint", f"checkpoint of {r.id} names origin "
                            f"{cp.origin!r}, registered {r.origin!r}", {})]
        findings: list[Finding] = []
        state = await self._state(r.id)
        size, root, old_note, cursor = state or (0, b"", b"", 0)
        evidence = {"old": old_note.decode("utf-8", "replace"), "new": note.text}
        if cp.size < size:
            return [Finding("rollback", f"{r.id}'s log went from size {size} back to "
                            f"{cp.size}", evidence)]
        if cp.size == size and state is not None:
            if cp.root != root:
                return [Finding("split-view", f"{r.id} shows two roots for size {size}",
                                evidence)]
        elif cp.size > size:
            grown = await self._extend(r, size, cp, note.to_bytes(), findings, evidence)
            if not grown:
                return findings
        findings += await self._compare_witness(r, cp)
        findings += await self._compare_received(r, cursor)
        return findings

    async def _extend(self, r: RebuilderConfig, size: int, cp: Checkpoint, note: bytes,
                      findings: list[Finding], evidence: dict[str, Any]) -> bool:
        """Fetch entries [size, cp.size), check them, hash them onto the mirror; True when the
        result is exactly ``cp`` (recorded), False when the log is not what it says."""
        first_bundle, last = size // TILE_WIDTH, cp.size
        n_bundles = (last - 1) // TILE_WIDTH - first_bundle + 1
        if n_bundles > MAX_BUNDLES_PER_ROUND:
            log.warning("monitor: %s's log is %d entry bundles ahead of what the monitor "
                        "verified (limit %d); not read", r.id, n_bundles, MAX_BUNDLES_PER_ROUND)
            return False
        known = await self._hashes(r.id, subtree_hash_indexes(0, size)) if size else {}
        new_hashes: list[tuple[str, int, bytes]] = []
        new_entries: list[tuple[str, int, str, str, float]] = []
        now = time.time()
        n = size
        for b in range(first_bundle, first_bundle + n_bundles):
            width = min(TILE_WIDTH, last - b * TILE_WIDTH)
            try:
                data = await self._get(f"{r.url.rstrip('/')}/log/{entries_path(b, width)}",
                                       MAX_BUNDLE_BYTES)
                entries = decode_bundle(data, width)
            except (_Fetch, BadDataError) as e:
                log.info("monitor: entries of %s unavailable: %s", r.id, e)
                return False
            for entry in entries[n - b * TILE_WIDTH:]:
                kind = "invalid"
                try:
                    env = Envelope.from_bytes(entry)
                    if not env.verify(r.public_key):
                        raise BadDataError("envelope", "signature does not verify")
                    kind = "valid"
                except BadDataError as e:
                    findings.append(Finding("invalid-entry", f"{r.id}'s log entry {n} is not a "
                                            f"valid envelope by {r.id}: {e.reason}", {}))
                hashes = stored_hashes_for_leaf(n, leaf_hash(entry),
                                                lambda ix: [known[i] for i in ix])
                first = stored_hash_index(0, n)
                for j, h in enumerate(hashes):
                    known[first + j] = h
                    new_hashes.append((r.id, first + j, h))
                digest = _sha256(entry)
                new_entries.append((r.id, n, digest, kind, now))
                n += 1
        got = tree_hash(last, lambda ix: [known[i] for i in ix])
        if got != cp.root:
            findings.append(Finding(
                "split-view", f"{r.id}'s checkpoint of size {last} does not match its entries "
                f"(or is not an extension of the size {size} it showed before)", evidence))
            return False
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.executemany(
                "INSERT OR REPLACE INTO mon_hashes (rebuilder, idx, hash) VALUES (?, ?, ?)",
                new_hashes)
            await self._db.executemany(
                "INSERT OR REPLACE INTO mon_entries (rebuilder, idx, digest, kind, seen_at)"
                " VALUES (?, ?, ?, ?, ?)", new_entries)
            await self._db.execute(
                "INSERT INTO mon_state (rebuilder, origin, size, root, note, checked_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rebuilder) DO UPDATE SET"
                " size = excluded.size, root = excluded.root, note = excluded.note,"
                " checked_at = excluded.checked_at",
                (r.id, cp.origin, cp.size, cp.root, note, now))
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise
        await self._db.execute("COMMIT")
        return True

    async def _compare_witness(self, r: RebuilderConfig, cp: Checkpoint) -> list[Finding]:
        """The witness's latest cosigned tree must be a prefix of what the monitor read."""
        if self.witnessed is None:
            return []
        w = await self.witnessed(r.origin)
        state = await self._state(r.id)
        if w is None or state is None:
            return []
        wsize, wroot = w
        if wsize > state[0]:
            return []  # the witness is ahead of us; compared once we have read that far
        if await self._root(r.id, wsize) != wroot:
            return [Finding("split-view", f"the witness cosigned size {wsize} of {r.id}'s log "
                            "with a root that is not the tree the node showed the monitor",
                            {"witness_root": base64.b64encode(wroot).decode()})]
        return []

    async def _compare_received(self, r: RebuilderConfig, cursor: int) -> list[Finding]:
        """Envelopes received over MQTT/HTTP must be logged; logged ones must be served."""
        findings: list[Finding] = []
        cutoff = time.time() - self.grace
        rows = await self.store.envelopes_of(r.id, cursor, cutoff)
        if rows:
            digests = [d for _, d, _ in rows]
            logged: set[str] = set()
            for i in range(0, len(digests), 400):
                chunk = digests[i:i + 400]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT digest FROM mon_entries WHERE rebuilder = ? AND digest IN ({marks})"  # noqa: S608  # placeholders
                async with self._db.execute(sql, [r.id, *chunk]) as cur:
                    logged |= {str(x[0]) for x in await cur.fetchall()}
            for _, d, kind in rows:
                if d not in logged:
                    findings.append(Finding(
                        "unlogged-envelope", f"{r.id} served {kind} envelope {d} that its log "
                        f"does not contain", {"envelope": d}))
            await self._db.execute("UPDATE mon_state SET received_cursor = ? WHERE rebuilder = ?",
                                   (rows[-1][0], r.id))
        async with self._db.execute(
                "SELECT idx, digest FROM mon_entries WHERE rebuilder = ? AND served = 0"
                " AND seen_at < ? AND kind = 'valid' ORDER BY idx LIMIT 5000",
                (r.id, cutoff)) as cur:
            pending = [(int(x[0]), str(x[1])) for x in await cur.fetchall()]
        if pending:
            have = await self.store.has_envelopes([d for _, d in pending])
            for idx, d in pending:
                if d not in have:
                    findings.append(Finding(
                        "logged-not-served", f"{r.id}'s log entry {idx} (envelope {d}) never "
                        "reached the coordinator over MQTT or HTTP", {"envelope": d}))
            await self._db.executemany(
                "UPDATE mon_entries SET served = 1 WHERE rebuilder = ? AND idx = ?",
                [(r.id, idx) for idx, _ in pending])
        return findings

    async def proof_for(self, digest: str) -> dict[str, Any] | None:
        """An inclusion proof of envelope ``digest`` in the latest checkpoint the monitor
        verified of the log that holds it (the shape of the node's, docs/formats.md)."""
        async with self._db.execute(
                "SELECT e.rebuilder, e.idx, s.size, s.root, s.note FROM mon_entries e"
                " JOIN mon_state s ON s.rebuilder = e.rebuilder WHERE e.digest = ?"
                " AND e.idx < s.size ORDER BY e.rebuilder LIMIT 1", (digest,)) as cur:
            r = await cur.fetchone()
        if r is None:
            return None
        rebuilder, idx, size = str(r[0]), int(r[1]), int(r[2])
        asked: list[int] = []

        def record(ix: Sequence[int]) -> list[bytes]:
            asked.extend(ix)
            return [bytes(32)] * len(ix)

        inclusion_proof(idx, size, record)
        got = await self._hashes(rebuilder, asked)
        hashes = inclusion_proof(idx, size, lambda ix: [got[i] for i in ix])
        return {"logIndex": str(idx), "treeSize": str(size),
                "rootHash": base64.b64encode(bytes(r[3])).decode(),
                "hashes": [base64.b64encode(h).decode() for h in hashes],
                "checkpoint": {"envelope": bytes(r[4]).decode()}}

    # -- rounds --------------------------------------------------------------------------------

    async def round(self) -> list[Finding]:
        """Check every registered rebuilder; record and announce what is new."""
        found: list[Finding] = []
        for r in self.config.rebuilders:
            try:
                findings = await self.check(r)
            except Exception:  # one broken log must not stop the others
                log.exception("monitor: checking %s's log failed", r.id)
                continue
            for f in findings:
                if await self.store.record_log_inconsistency(r.id, f.kind, f.detail,
                                                             f.evidence):
                    log.warning("log inconsistency (%s) of %s: %s", f.kind, r.id, f.detail)
                    found.append(f)
        await self.announce()
        return found

    async def announce(self) -> None:
        if self.publish is None:
            return
        pending = await self.store.log_inconsistencies(unpublished=True)
        sent: list[int] = []
        for item in reversed(pending):
            payload = json.dumps(item.to_dict(), sort_keys=True, separators=(",", ":")).encode()
            with contextlib.suppress(Exception):
                if await self.publish(LOG_INCONSISTENCY_TOPIC, payload):
                    sent.append(item.id)
                    continue
            break  # not connected: the rest waits for the next round
        if sent:
            await self.store.mark_log_inconsistency_published(sent)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
