"""The coordinator as a monitor of every registered rebuilder's transparency log.

Each round reads a node's ``<url>/log/checkpoint`` (signed by that node's key), fetches the
entry bundles it has not read, checks that every entry is a valid envelope by that node and that
the entries hash to the checkpoint's root, extending its own mirror of the tree (so it also
proves the log only grew). A log far ahead is read in bounded batches (``[witness]
monitor_batch`` entry bundles per round), resuming where the last round stopped (persisted in
``mon_pending``), with the CPU work in a thread, so any size is eventually verified without
holding up the event loop. It compares with what the witness cosigned, and with what reached
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
from verifier.errors import BadDataError, HTTPStatusError, UnreachableError
from verifier.sources import FetcherInterface, fetcher_for
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.merkle import (
    inclusion_proof,
    leaf_hash,
    stored_hash_count,
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
CHUNK_BUNDLES = 64  # bundles read, checked and committed together (bounds memory per step)
FETCH_TIMEOUT_S = 30.0
DEFAULT_GRACE_S = 120.0  # how long an envelope may be received but not yet checkpointed

Publish = Callable[[str, bytes], Awaitable[bool]]  # topic, payload -> sent?


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str
    evidence: dict[str, Any]


class Monitor:
    def __init__(self, db: aiosqlite.Connection, config: CoordinatorConfig, store: Store,
                 session: aiohttp.ClientSession | FetcherInterface,
                 grace: float = DEFAULT_GRACE_S) -> None:
        self._db = db
        self.config = config
        self.store = store
        self.fetcher = fetcher_for(session)
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
                # The checkpoint being read toward and how far (entries [state size, read) are
                # stored but not verified until read reaches size and the root matches).
                "CREATE TABLE IF NOT EXISTS mon_pending (rebuilder TEXT PRIMARY KEY, size"
                " INTEGER NOT NULL, root BLOB NOT NULL, note BLOB NOT NULL, read INTEGER"
                " NOT NULL)",
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
        """The body, or ``UnreachableError`` (``HTTPStatusError`` with the status when there was
        one): a log that cannot be read (or sends too much) is unavailable this round, not a
        finding."""
        try:
            return await self.fetcher.fetch(url, max_bytes=limit, timeout=FETCH_TIMEOUT_S)
        except UnreachableError:
            raise
        except BadDataError as e:
            raise UnreachableError(url, f"over {limit} bytes") from e

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
        except UnreachableError as e:
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
        pending = await self._pending(r.id)
        if pending is not None:  # still reading toward a checkpoint the node showed before
            target, target_note, read = pending
            evidence = {"old": target_note.decode("utf-8", "replace"), "new": note.text}
            if cp.size < target.size:
                return [Finding("rollback", f"{r.id}'s log went from size {target.size} back "
                                f"to {cp.size}", evidence)]
            if cp.size == target.size and cp.root != target.root:
                return [Finding("split-view", f"{r.id} shows two roots for size {cp.size}",
                                evidence)]
        else:
            evidence = {"old": old_note.decode("utf-8", "replace"), "new": note.text}
            if cp.size < size:
                return [Finding("rollback", f"{r.id}'s log went from size {size} back to "
                                f"{cp.size}", evidence)]
            if cp.size == size and state is not None and cp.root != root:
                return [Finding("split-view", f"{r.id} shows two roots for size {size}",
                                evidence)]
            target, target_note, read = cp, note.to_bytes(), size
        if target.size > size and not await self._extend(r, size, read, target, target_note,
                                                         findings, evidence):
            return findings  # not (yet) read to a verified checkpoint
        findings += await self._compare_witness(r, cp)
        findings += await self._compare_received(r, cursor)
        return findings

    async def _bundle(self, r: RebuilderConfig, b: int, width: int) -> list[bytes]:
        """Entry bundle ``b`` of ``width`` entries; a partial one that is gone (404) is read
        from the full bundle (c2sp.org/tlog-tiles)."""
        base = r.url.rstrip("/") + "/log/"
        try:
            return decode_bundle(await self._get(base + entries_path(b, width),
                                                 MAX_BUNDLE_BYTES), width)
        except HTTPStatusError as e:
            if e.status != 404 or width == TILE_WIDTH:
                raise
        full = decode_bundle(await self._get(base + entries_path(b), MAX_BUNDLE_BYTES),
                             TILE_WIDTH)
        return full[:width]

    async def _pending(self, rebuilder: str) -> tuple[Checkpoint, bytes, int] | None:
        async with self._db.execute(
                "SELECT size, root, note, read FROM mon_pending WHERE rebuilder = ?",
                (rebuilder,)) as cur:
            r = await cur.fetchone()
        if r is None:
            return None
        note = bytes(r[2])
        cp = Checkpoint.from_text(Note.from_bytes(note).text)
        return cp, note, int(r[3])

    async def _extend(self, r: RebuilderConfig, size: int, read: int, cp: Checkpoint,
                      note: bytes, findings: list[Finding], evidence: dict[str, Any]) -> bool:
        """Read entries [read, cp.size) of the log whose verified size is ``size``, at most
        ``monitor_batch`` bundles this round, checking them and hashing them onto the mirror
        (committed every ``CHUNK_BUNDLES``, with how far it got). True once the whole tree is
        read and is exactly ``cp`` (then recorded as verified); False while more remains, when
        a bundle is unavailable, or when the log is not what it says (a finding)."""
        last = cp.size
        await self._db.execute(
            "INSERT INTO mon_pending (rebuilder, size, root, note, read) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (rebuilder) DO NOTHING", (r.id, cp.size, cp.root, note, read))
        first_bundle = read // TILE_WIDTH
        end_bundle = min((last - 1) // TILE_WIDTH + 1,
                         first_bundle + self.config.witness.monitor_batch)
        known = await self._hashes(r.id, subtree_hash_indexes(0, read)) if read else {}
        n = read
        for chunk in range(first_bundle, end_bundle, CHUNK_BUNDLES):
            bundles: list[tuple[int, list[bytes]]] = []
            for b in range(chunk, min(chunk + CHUNK_BUNDLES, end_bundle)):
                width = min(TILE_WIDTH, last - b * TILE_WIDTH)
                try:
                    bundles.append((b, await self._bundle(r, b, width)))
                except (UnreachableError, BadDataError) as e:
                    log.info("monitor: entries of %s unavailable: %s", r.id, e)
                    break
            if not bundles:
                return False
            start = n
            new_hashes, new_entries, bad = await asyncio.to_thread(
                _hash_entries, r, n, bundles, known, time.time())
            n = start + len(new_entries)
            findings += bad
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._db.executemany(
                    "INSERT OR REPLACE INTO mon_hashes (rebuilder, idx, hash) VALUES (?, ?, ?)",
                    new_hashes)
                await self._db.executemany(
                    "INSERT OR REPLACE INTO mon_entries (rebuilder, idx, digest, kind, seen_at)"
                    " VALUES (?, ?, ?, ?, ?)", new_entries)
                await self._db.execute("UPDATE mon_pending SET read = ? WHERE rebuilder = ?",
                                       (n, r.id))
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")
            # Appending needs only the roots of the complete subtrees left of leaf n.
            known = {i: known[i] for i in subtree_hash_indexes(0, n)}
            if len(bundles) < min(CHUNK_BUNDLES, end_bundle - chunk):
                return False  # a bundle was unavailable: the next round resumes here
        if n < last:
            log.info("monitor: read %s's log to %d of %d; resuming next round", r.id, n, last)
            return False
        got = await self._root(r.id, last)
        now = time.time()
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.execute("DELETE FROM mon_pending WHERE rebuilder = ?", (r.id,))
            if got != cp.root:  # forget the unverified part; the next round reads it again
                await self._db.execute("DELETE FROM mon_hashes WHERE rebuilder = ? AND idx >= ?",
                                       (r.id, stored_hash_count(size)))
                await self._db.execute("DELETE FROM mon_entries WHERE rebuilder = ? AND idx >= ?",
                                       (r.id, size))
            else:
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
        if got != cp.root:
            findings.append(Finding(
                "split-view", f"{r.id}'s checkpoint of size {last} does not match its entries "
                f"(or is not an extension of the size {size} it showed before)", evidence))
            return False
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


def _hash_entries(r: RebuilderConfig, n: int, bundles: Sequence[tuple[int, list[bytes]]],
                  known: dict[int, bytes], now: float
                  ) -> tuple[list[tuple[str, int, bytes]], list[tuple[str, int, str, str, float]],
                             list[Finding]]:
    """Check and hash entries from leaf ``n`` on (in a thread: Ed25519 and SHA-256 work);
    ``known`` (the mirror's hashes by stored index) is extended in place."""
    new_hashes: list[tuple[str, int, bytes]] = []
    new_entries: list[tuple[str, int, str, str, float]] = []
    findings: list[Finding] = []
    for b, entries in bundles:
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
            new_entries.append((r.id, n, _sha256(entry), kind, now))
            n += 1
    return new_hashes, new_entries, findings


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
