"""Writing the SQLite store: verified batches in one transaction each, status, catch-up state.

Row ids come from the database (``INTEGER PRIMARY KEY``): after the envelopes of a batch are
inserted, their ids are read back by digest (unique), never computed as ``MAX(id) + 1``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from coordinator.checks import Accepted
from coordinator.store._sql import _REVOKES, _Base, _chunks, _payload_digest
from coordinator.store.rows import BatchResult, Disagreement
from coordinator.verdicts import envelope_class

_HISTORY_KEEP = 500  # status changes kept per rebuilder


class _Writes(_Base):
    async def ensure_rebuilders(self, ids: Iterable[str]) -> None:
        await self._w.executemany(
            "INSERT OR IGNORE INTO rebuilders(id) VALUES (?)", [(i,) for i in ids]
        )

    async def store_batch(
        self,
        items: Sequence[Accepted],
        now: float | None = None,
        cursor: tuple[str, str] | None = None,
    ) -> BatchResult:
        """Store verified envelopes in one transaction; the same envelope twice is one row.

        ``cursor`` (rebuilder id, cursor) is saved in the same transaction, so a catch-up page
        is either stored with its cursor or not at all.
        """
        now = time.time() if now is None else now
        result = BatchResult()
        # One row per rebuilder and signed statement: another envelope of the same payload
        # (rewritten hints, extra signatures) is a duplicate, never a second attestation.
        unique: dict[tuple[str, str], Accepted] = {}
        for a in items:
            unique.setdefault((a.rebuilder, _payload_digest(a)), a)
        result.duplicates = len(items) - len(unique)
        async with self._lock:
            return await self._store_locked(unique, now, cursor, result)

    async def _store_locked(
        self,
        unique: dict[tuple[str, str], Accepted],
        now: float,
        cursor: tuple[str, str] | None,
        result: BatchResult,
    ) -> BatchResult:
        try:
            await self._w.execute("BEGIN IMMEDIATE")
            existing: set[tuple[str, bytes]] = set()
            keys = [bytes.fromhex(d) for _, d in unique]
            for chunk in _chunks(keys):
                marks = ",".join("?" * len(chunk))
                async with self._w.execute(
                    "SELECT rebuilder, payload_digest FROM envelopes"  # noqa: S608  # only ? marks
                    f" WHERE payload_digest IN ({marks})",
                    tuple(chunk),
                ) as cur:
                    existing.update((row[0], row[1]) for row in await cur.fetchall())
            new = [a for (r, d), a in unique.items() if (r, bytes.fromhex(d)) not in existing]
            result.duplicates += len(unique) - len(new)
            if new:
                await self._insert(new, now, result)
            if cursor is not None:
                await self._w.execute(
                    "UPDATE rebuilders SET cursor = ?, last_catchup = ?, last_seen = ?,"
                    " last_error = NULL, state = 'online' WHERE id = ?",
                    (cursor[1], now, now, cursor[0]),
                )
            await self._w.execute("COMMIT")
        except BaseException:
            # Cancelled while a statement runs, the writer thread still finishes it: after
            # BEGIN there is a transaction to roll back, after COMMIT none. Either way the
            # original exception (a cancellation above all) must go on, or shutdown would
            # wait forever.
            with contextlib.suppress(sqlite3.Error):
                await self._w.execute("ROLLBACK")
            raise
        result.stored = new
        return result

    async def _insert(self, new: list[Accepted], now: float, result: BatchResult) -> None:
        env_rows = []
        counts: Counter[tuple[str, str]] = Counter()
        class_counts: Counter[tuple[str, str]] = Counter()
        seen_rebuilders: dict[str, float] = {}
        for a in new:
            cls = envelope_class(
                a.kind,
                a.failure,
                ({"verdict": o.verdict, "rebuilt": o.rebuilt, "buildinfo": o.buildinfo,
                  "repository": o.repository} for o in a.outputs),
            )
            if cls is not None:
                class_counts[(a.rebuilder, cls)] += 1
            suite = a.repository.split()[-1] if a.repository and a.repository.split() else None
            env_rows.append(
                (
                    bytes.fromhex(a.digest),
                    a.rebuilder,
                    a.kind,
                    a.ecosystem,
                    a.source,
                    a.version,
                    a.architecture,
                    a.verdict,
                    a.invocation,
                    a.failure,
                    a.finished,
                    now,
                    a.body,
                    cls,
                    suite,
                    bytes.fromhex(_payload_digest(a)),
                )
            )
            if a.verdict is not None:
                counts[(a.rebuilder, a.verdict)] += 1
            seen_rebuilders[a.rebuilder] = now
        await self._w.executemany(
            "INSERT INTO envelopes(digest, rebuilder, kind, ecosystem, source, version,"
            " architecture, verdict, invocation, failure, finished, received, body, class, suite,"
            " payload_digest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            env_rows,
        )
        ids = await self._ids_of([a.digest for a in new])
        subject_rows = []
        output_rows = []
        revocation_rows = []
        latest: dict[tuple[str, str, str], int] = {}
        for a in new:
            eid = ids[a.digest]
            for name, sha in a.subjects:
                subject_rows.append((eid, a.rebuilder, a.ecosystem, a.source, a.version, name,
                                     bytes.fromhex(sha)))
            for o in a.outputs:
                output_rows.append(
                    (eid, o.name, o.verdict, o.rebuilt, o.buildinfo, o.repository, o.report_url)
                )
            if a.revoked is not None:
                revocation_rows.append(
                    (eid, a.rebuilder, bytes.fromhex(a.revoked), a.reason or "", int(a.legacy))
                )
            if a.source is not None and a.version is not None:
                key = (a.ecosystem, a.source, a.version)
                latest[key] = max(latest.get(key, 0), eid)
        if subject_rows:
            await self._w.executemany(
                "INSERT INTO subjects(envelope_id, rebuilder, ecosystem, source, version, name,"
                " sha256) VALUES (?,?,?,?,?,?,?)",
                subject_rows,
            )
        if output_rows:
            await self._w.executemany(
                "INSERT INTO outputs(envelope_id, name, verdict, rebuilt, buildinfo, repository,"
                " report_url) VALUES (?,?,?,?,?,?,?)",
                output_rows,
            )
        if revocation_rows:
            await self._w.executemany(
                "INSERT INTO revocations(envelope_id, rebuilder, revoked, reason, legacy)"
                " VALUES (?,?,?,?,?)",
                revocation_rows,
            )
        if latest:
            await self._w.executemany(
                "INSERT INTO packages(ecosystem, source, version, latest) VALUES (?,?,?,?)"
                " ON CONFLICT(ecosystem, source, version) DO UPDATE SET latest = excluded.latest",
                [(eco, src, ver, eid) for (eco, src, ver), eid in latest.items()],
            )
        if counts:
            await self._w.executemany(
                "INSERT INTO counts(rebuilder, verdict, n) VALUES (?,?,?)"
                " ON CONFLICT(rebuilder, verdict) DO UPDATE SET n = n + excluded.n",
                [(r, v, n) for (r, v), n in counts.items()],
            )
        if class_counts:
            await self._w.executemany(
                "INSERT INTO class_counts(rebuilder, class, n) VALUES (?,?,?)"
                " ON CONFLICT(rebuilder, class) DO UPDATE SET n = n + excluded.n",
                [(r, c, n) for (r, c), n in class_counts.items()],
            )
        await self._w.executemany(
            "UPDATE rebuilders SET last_seen = MAX(COALESCE(last_seen, 0), ?), state = 'online'"
            " WHERE id = ?",
            [(t, r) for r, t in seen_rebuilders.items()],
        )
        artifacts = sorted({(a.ecosystem, a.source, a.version, n)
                            for a in new for n, _ in a.subjects})
        if artifacts:
            result.new_disagreements.extend(await self._detect(artifacts, now))

    async def _ids_of(self, digests: Sequence[str]) -> dict[str, int]:
        """The ids the database gave the envelopes of these digests (hex), in this transaction."""
        ids: dict[str, int] = {}
        for chunk in _chunks([bytes.fromhex(d) for d in digests]):
            marks = ",".join("?" * len(chunk))
            async with self._w.execute(
                f"SELECT digest, id FROM envelopes WHERE digest IN ({marks})",  # noqa: S608  # only ? marks
                tuple(chunk),
            ) as cur:
                ids.update((bytes(r[0]).hex(), int(r[1])) for r in await cur.fetchall())
        return ids

    async def _detect(
        self, artifacts: Sequence[tuple[str, str | None, str | None, str]], now: float
    ) -> list[Disagreement]:
        """Record a disagreement for every touched artifact that now has two digests."""
        conflicted: list[tuple[str, str, str, str]] = []
        for chunk in _chunks(artifacts, 200):
            values = ",".join("(?,?,?,?)" for _ in chunk)
            params = [p for a in chunk for p in a]
            async with self._w.execute(
                "SELECT ecosystem, source, version, name FROM subjects"  # noqa: S608  # only ? marks
                f" WHERE (ecosystem, source, version, name) IN (VALUES {values})"
                " GROUP BY ecosystem, source, version, name HAVING COUNT(DISTINCT sha256) > 1",
                params,
            ) as cur:
                conflicted.extend((r[0], r[1], r[2], r[3]) for r in await cur.fetchall())
        fresh: list[Disagreement] = []
        for ecosystem, source, version, name in conflicted:
            # Revoked statements are withdrawn: they no longer disagree with anything.
            async with self._w.execute(
                "SELECT s.rebuilder, s.sha256, e.digest FROM subjects s"  # noqa: S608  # a constant fragment
                " JOIN envelopes e ON e.id = s.envelope_id"
                " WHERE s.ecosystem = ? AND s.source = ? AND s.version = ? AND s.name = ?"
                " AND NOT EXISTS (SELECT 1 FROM revocations r WHERE " + _REVOKES.format(e="e")
                + ") ORDER BY s.envelope_id",
                (ecosystem, source, version, name),
            ) as cur:
                rows = await cur.fetchall()
            if len({sha for _, sha, _ in rows}) < 2:
                continue
            digests: dict[str, str] = {}  # each rebuilder once: its latest digest
            conflicts: list[dict[str, str]] = []
            pairs: set[tuple[str, bytes]] = set()
            for rebuilder, sha, env in rows:
                digests[rebuilder] = sha.hex()
                if (rebuilder, sha) not in pairs:
                    pairs.add((rebuilder, sha))
                    conflicts.append(
                        {"rebuilder": rebuilder, "sha256": sha.hex(), "envelope": env.hex()}
                    )
            async with self._w.execute(
                "SELECT id, detected_at FROM disagreements"
                " WHERE ecosystem = ? AND source = ? AND version = ? AND artifact = ?",
                (ecosystem, source, version, name),
            ) as cur:
                old = await cur.fetchone()
            if old is None:
                async with self._w.execute(
                    "INSERT INTO disagreements(ecosystem, source, version, artifact, digests,"
                    " conflicts, detected_at) VALUES (?,?,?,?,?,?,?) RETURNING id",
                    (ecosystem, source, version, name, json.dumps(digests),
                     json.dumps(conflicts), now),
                ) as cur:
                    row = await cur.fetchone()
                assert row is not None
                fresh.append(
                    Disagreement(int(row[0]), source, version, name, digests, conflicts, now,
                                 ecosystem)
                )
            else:
                await self._w.execute(
                    "UPDATE disagreements SET digests = ?, conflicts = ? WHERE id = ?",
                    (json.dumps(digests), json.dumps(conflicts), old[0]),
                )
        return fresh

    async def record_status(
        self, rebuilder: str, state: str, status: dict[str, Any], seen: float | None
    ) -> None:
        """Store a status message; ``seen`` (None for 'offline') moves last_seen forward."""
        async with self._lock:
            await self._w.execute(
                "UPDATE rebuilders SET state = ?, status = ?,"
                " last_seen = MAX(COALESCE(last_seen, 0), COALESCE(?, 0)) WHERE id = ?",
                (state, json.dumps(status), seen, rebuilder),
            )
            await self._note_state(rebuilder, state, time.time() if seen is None else seen)

    async def _note_state(self, rebuilder: str, state: str, at: float) -> None:
        """Append to the online history when the state changed (caller holds the lock)."""
        async with self._w.execute(
            "SELECT state FROM status_history WHERE rebuilder = ? ORDER BY at DESC, rowid DESC"
            " LIMIT 1",
            (rebuilder,),
        ) as cur:
            row = await cur.fetchone()
        if row is not None and row[0] == state:
            return
        await self._w.execute(
            "INSERT INTO status_history(rebuilder, state, at) VALUES (?,?,?)",
            (rebuilder, state, at),
        )
        await self._w.execute(
            "DELETE FROM status_history WHERE rebuilder = ? AND rowid NOT IN (SELECT rowid"
            " FROM status_history WHERE rebuilder = ? ORDER BY at DESC LIMIT ?)",
            (rebuilder, rebuilder, _HISTORY_KEEP),
        )

    async def record_catchup_error(self, rebuilder: str, error: str, now: float) -> None:
        async with self._lock:
            await self._w.execute(
                "UPDATE rebuilders SET last_error = ?, last_catchup = ? WHERE id = ?",
                (error[:500], now, rebuilder),
            )

    async def record_catchup_ok(self, rebuilder: str, now: float) -> None:
        async with self._lock:
            await self._w.execute(
                "UPDATE rebuilders SET last_error = NULL, last_catchup = ?, state = 'online',"
                " last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE id = ?",
                (now, now, rebuilder),
            )
            await self._note_state(rebuilder, "online", now)

    # ---- the log monitor (coordinator/monitor.py) ------------------------------------------

    async def record_log_inconsistency(self, rebuilder: str, kind: str, detail: str,
                                       evidence: dict[str, Any]) -> bool:
        """Record what the monitor found; False when the same finding is already recorded."""
        async with self._lock:
            cur = await self._w.execute(
                "INSERT OR IGNORE INTO log_inconsistencies (rebuilder, kind, detail, evidence,"
                " detected_at) VALUES (?, ?, ?, ?, ?)",
                (rebuilder, kind, detail, json.dumps(evidence, sort_keys=True), time.time()))
            return cur.rowcount > 0


    async def mark_log_inconsistency_published(self, ids: Sequence[int]) -> None:
        async with self._lock:
            await self._w.executemany(
                "UPDATE log_inconsistencies SET published = 1 WHERE id = ?", [(i,) for i in ids])

