"""Reading the SQLite store: the query API's and the dashboard's questions, on the reader
connection (WAL: readers never wait for the writer), answered as typed rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from coordinator.store._sql import _REVOKES, _Base, _chunks
from coordinator.store.rows import (
    DEFAULT_ECOSYSTEM,
    Disagreement,
    EnvelopeRef,
    FilterValues,
    LogInconsistency,
    OutputReport,
    PackageResult,
    PackageSummary,
    RebuilderResult,
    RebuilderState,
    StatusChange,
    StoredOutput,
    TamperedFile,
    Totals,
    rfc3339,
)


class _Reads(_Base):
    async def cursor(self, rebuilder: str) -> str:
        rows = await self._all("SELECT cursor FROM rebuilders WHERE id = ?", (rebuilder,))
        return str(rows[0][0]) if rows else "0"

    async def rebuilder_states(self) -> dict[str, RebuilderState]:
        rows = await self._all(
            "SELECT id, cursor, last_seen, state, status, last_error, last_catchup FROM rebuilders"
        )
        return {
            r[0]: RebuilderState(
                r[0], r[1], r[2], r[3], json.loads(r[4]) if r[4] else None, r[5], r[6]
            )
            for r in rows
        }

    async def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for rebuilder, verdict, n in await self._all("SELECT rebuilder, verdict, n FROM counts"):
            out.setdefault(rebuilder, {})[verdict] = int(n)
        return out

    async def envelopes_for_digest(self, sha256_hex: str) -> list[bytes]:
        """Every stored envelope with a subject of that digest, then the revocations of those.

        One statement, answered from the subjects index: the cost does not grow with the size
        of the database.
        """
        rows = await self._all(
            "WITH hits AS (SELECT DISTINCT e.id, e.rebuilder, e.digest, e.payload_digest"  # noqa: S608  # a constant fragment
            " FROM subjects s JOIN envelopes e ON e.id = s.envelope_id WHERE s.sha256 = ?)"
            " SELECT 0, e.id, e.body FROM hits h JOIN envelopes e ON e.id = h.id"
            " UNION"
            " SELECT 1, e.id, e.body FROM hits h JOIN revocations r ON " + _REVOKES.format(e="h")
            + " JOIN envelopes e ON e.id = r.envelope_id"
            " ORDER BY 1, 2",
            (bytes.fromhex(sha256_hex),),
        )
        return [r[2] for r in rows]

    async def envelopes_for_package(
        self, source: str, version: str, *, ecosystem: str = DEFAULT_ECOSYSTEM
    ) -> list[bytes]:
        """Every stored envelope of that package version, then the revocations of those."""
        rows = await self._all(
            "SELECT body FROM envelopes WHERE ecosystem = ? AND source = ? AND version = ?"
            " ORDER BY id",
            (ecosystem, source, version),
        )
        revocations = await self._all(
            "SELECT DISTINCT re.id, re.body FROM envelopes e"  # noqa: S608  # a constant fragment
            " JOIN revocations r ON " + _REVOKES.format(e="e")
            + " JOIN envelopes re ON re.id = r.envelope_id"
            " WHERE e.ecosystem = ? AND e.source = ? AND e.version = ? ORDER BY re.id",
            (ecosystem, source, version),
        )
        return [r[0] for r in rows] + [r[1] for r in revocations]

    async def envelopes_for_digests(self, digests: Sequence[str]) -> dict[str, list[bytes]]:
        """``envelopes_for_digest`` of many digests (hex) at once, in a few statements: what a
        batch query asks (``POST /v1/attestations:batch``)."""
        out: dict[str, list[bytes]] = {d: [] for d in digests}
        for chunk in _chunks(sorted(out), 500):
            values = ",".join("(?)" for _ in chunk)
            rows = await self._all(
                f"WITH q(sha) AS (VALUES {values}),"  # noqa: S608  # placeholders and a constant fragment
                " hits AS (SELECT DISTINCT s.sha256 AS sha, e.id, e.rebuilder, e.digest,"
                " e.payload_digest FROM q JOIN subjects s ON s.sha256 = q.sha"
                " JOIN envelopes e ON e.id = s.envelope_id)"
                " SELECT h.sha, 0, e.id, e.body FROM hits h JOIN envelopes e ON e.id = h.id"
                " UNION"
                " SELECT h.sha, 1, e.id, e.body FROM hits h JOIN revocations r ON "
                + _REVOKES.format(e="h") + " JOIN envelopes e ON e.id = r.envelope_id"
                " ORDER BY 1, 2, 3",
                [bytes.fromhex(d) for d in chunk],
            )
            for sha, _kind, _id, body in rows:
                out[bytes(sha).hex()].append(body)
        return out

    async def envelopes_for_packages(
        self, packages: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], list[bytes]]:
        """``envelopes_for_package`` of many (ecosystem, source, version) at once."""
        out: dict[tuple[str, str, str], list[bytes]] = {p: [] for p in packages}
        for chunk in _chunks(sorted(out), 300):
            values = ",".join("(?, ?, ?)" for _ in chunk)
            rows = await self._all(
                f"WITH q(eco, src, ver) AS (VALUES {values})"  # noqa: S608  # placeholders and a constant fragment
                " SELECT q.eco, q.src, q.ver, 0, e.id, e.body FROM q JOIN envelopes e"
                " ON e.ecosystem = q.eco AND e.source = q.src AND e.version = q.ver"
                " UNION"
                " SELECT q.eco, q.src, q.ver, 1, re.id, re.body FROM q JOIN envelopes e"
                " ON e.ecosystem = q.eco AND e.source = q.src AND e.version = q.ver"
                " JOIN revocations r ON " + _REVOKES.format(e="e")
                + " JOIN envelopes re ON re.id = r.envelope_id"
                " ORDER BY 1, 2, 3, 4, 5",
                [x for p in chunk for x in p],
            )
            for eco, src, ver, _kind, _id, body in rows:
                out[(eco, src, ver)].append(body)
        return out

    async def package_results(
        self, source: str, version: str, *, ecosystem: str = DEFAULT_ECOSYSTEM
    ) -> list[PackageResult]:
        """Per envelope of that package, oldest first: rebuilder, verdict, outputs, revoked."""
        rows = await self._all(
            "SELECT e.id, e.digest, e.rebuilder, e.kind, e.architecture, e.verdict, e.invocation,"  # noqa: S608  # a constant fragment
            " e.finished, e.failure, (SELECT r.reason FROM revocations r WHERE "
            + _REVOKES.format(e="e")
            + " ORDER BY r.envelope_id LIMIT 1), e.class, e.suite"
            " FROM envelopes e WHERE e.ecosystem = ? AND e.source = ? AND e.version = ?"
            " ORDER BY e.id",
            (ecosystem, source, version),
        )
        outputs: dict[int, list[StoredOutput]] = {int(r[0]): [] for r in rows}
        for chunk in _chunks(list(outputs)):
            marks = ",".join("?" * len(chunk))
            for eid, name, verdict, rebuilt, buildinfo, repo, report in await self._all(
                "SELECT envelope_id, name, verdict, rebuilt, buildinfo, repository,"  # noqa: S608
                f" report_url FROM outputs WHERE envelope_id IN ({marks}) ORDER BY rowid",
                tuple(chunk),
            ):
                outputs[int(eid)].append(
                    StoredOutput(name, verdict, rebuilt, buildinfo, repo, report)
                )
        return [
            PackageResult(
                envelope=digest.hex(), rebuilder=rebuilder, kind=kind, architecture=arch,
                verdict=verdict, invocation=invocation, finished=finished, failure=failure,
                revoked_reason=reason, verdict_class=cls, suite=suite,
                outputs=tuple(outputs[int(eid)]),
            )
            for (eid, digest, rebuilder, kind, arch, verdict, invocation, finished, failure,
                 reason, cls, suite) in rows
        ]

    async def search_packages(
        self,
        query: str,
        limit: int,
        offset: int = 0,
        *,
        verdict: str | None = None,
        suite: str | None = None,
        architecture: str | None = None,
        ecosystem: str | None = None,
    ) -> list[PackageSummary]:
        """Package versions whose source name contains ``query``, with per-rebuilder verdicts
        (``verdicts``: reproduced/unreproducible/..., ``classes``: coordinator.verdicts) and
        suites. The filters keep versions of that ecosystem (None: any) with an unrevoked
        attestation of that verdict class, suite and architecture."""
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = ["p.source LIKE ? ESCAPE '\\'"]
        params: list[Any] = [pattern]
        if ecosystem is not None:
            where.append("p.ecosystem = ?")
            params.append(ecosystem)
        if verdict or suite or architecture:
            cond = ["e.ecosystem = p.ecosystem", "e.source = p.source", "e.version = p.version",
                    "e.class IS NOT NULL",
                    "NOT EXISTS (SELECT 1 FROM revocations r WHERE " + _REVOKES.format(e="e")  # noqa: S608  # constant fragments
                    + ")"]
            for column, value in (("class", verdict), ("suite", suite),
                                  ("architecture", architecture)):
                if value:
                    cond.append(f"e.{column} = ?")
                    params.append(value)
            where.append(
                f"EXISTS (SELECT 1 FROM envelopes e WHERE {' AND '.join(cond)})"  # noqa: S608
            )
        pkgs = await self._all(
            "SELECT p.ecosystem, p.source, p.version FROM packages p"  # noqa: S608  # fixed columns, ? marks
            f" WHERE {' AND '.join(where)} ORDER BY p.source, p.latest DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [await self._summary(eco, source, version) for eco, source, version in pkgs]

    async def _summary(self, ecosystem: str, source: str, version: str) -> PackageSummary:
        verdicts: dict[str, str] = {}
        classes: dict[str, str] = {}
        suites: set[str] = set()
        architectures: set[str] = set()
        for rebuilder, verdict, cls, suite, arch in await self._all(
            "SELECT e.rebuilder, e.verdict, e.class, e.suite, e.architecture FROM envelopes e"  # noqa: S608  # constant fragments
            " WHERE e.ecosystem = ? AND e.source = ? AND e.version = ?"
            " AND e.verdict IS NOT NULL AND NOT EXISTS (SELECT 1 FROM revocations r WHERE "
            + _REVOKES.format(e="e") + ") ORDER BY e.id",
            (ecosystem, source, version),
        ):
            verdicts[rebuilder] = verdict  # the latest attestation of each rebuilder wins
            if cls:
                classes[rebuilder] = cls
            if suite:
                suites.add(suite)
            if arch:
                architectures.add(arch)
        return PackageSummary(ecosystem, source, version, verdicts, classes,
                              tuple(sorted(suites)), tuple(sorted(architectures)))

    async def package_versions(
        self, source: str, limit: int = 200, *, ecosystem: str = DEFAULT_ECOSYSTEM
    ) -> list[PackageSummary]:
        """Every attested version of one source package, newest attestation first."""
        rows = await self._all(
            "SELECT version FROM packages WHERE ecosystem = ? AND source = ?"
            " ORDER BY latest DESC LIMIT ?",
            (ecosystem, source, limit),
        )
        return [await self._summary(ecosystem, source, r[0]) for r in rows]

    async def filter_values(self) -> FilterValues:
        """The suites and architectures seen, for the package filters."""
        out: dict[str, tuple[str, ...]] = {}
        for column in ("suite", "architecture"):
            rows = await self._all(
                f"SELECT DISTINCT {column} FROM envelopes WHERE {column} IS NOT NULL"  # noqa: S608
                f" ORDER BY {column} LIMIT 100"
            )
            out[column] = tuple(r[0] for r in rows)
        return FilterValues(suites=out["suite"], architectures=out["architecture"])

    async def class_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for rebuilder, cls, n in await self._all("SELECT rebuilder, class, n FROM class_counts"):
            out.setdefault(rebuilder, {})[cls] = int(n)
        return out

    async def tampered_packages(
        self, limit: int = 20, *, ecosystem: str = DEFAULT_ECOSYSTEM
    ) -> list[tuple[str, str]]:
        """(source, version) with an unrevoked tampered attestation, most recent first."""
        rows = await self._all(
            "SELECT e.source, e.version, MAX(e.id) FROM envelopes e WHERE e.class = 'tampered'"  # noqa: S608  # constant fragments
            " AND e.ecosystem = ? AND NOT EXISTS (SELECT 1 FROM revocations r WHERE "
            + _REVOKES.format(e="e") + ") GROUP BY e.source, e.version"
            " ORDER BY MAX(e.id) DESC LIMIT ?",
            (ecosystem, limit),
        )
        return [(r[0], r[1]) for r in rows]

    async def rebuilder_results(
        self, rebuilder: str, limit: int = 50, offset: int = 0
    ) -> list[RebuilderResult]:
        """One rebuilder's attestations, newest first, with revocation reasons."""
        rows = await self._all(
            "SELECT e.digest, e.kind, e.source, e.version, e.architecture, e.class, e.failure,"  # noqa: S608  # constant fragments
            " e.finished, e.suite, (SELECT r.reason FROM revocations r WHERE "
            + _REVOKES.format(e="e") + " ORDER BY r.envelope_id LIMIT 1),"
            " (SELECT r.reason FROM revocations r WHERE r.envelope_id = e.id),"
            " (SELECT hex(r.revoked) FROM revocations r WHERE r.envelope_id = e.id)"
            " FROM envelopes e WHERE e.rebuilder = ? ORDER BY e.id DESC LIMIT ? OFFSET ?",
            (rebuilder, limit, offset),
        )
        return [
            RebuilderResult(
                envelope=r[0].hex(), kind=r[1], source=r[2], version=r[3], architecture=r[4],
                verdict_class=r[5], failure=r[6], finished=r[7], suite=r[8],
                revoked_reason=r[9], reason=r[10], revokes=r[11].lower() if r[11] else None,
            )
            for r in rows
        ]

    async def class_series(self, rebuilder: str, since: str) -> list[tuple[str, str, int]]:
        """(day, class, n) of one rebuilder's attestations finished on or after ``since``
        (an RFC 3339 date), oldest day first."""
        rows = await self._all(
            "SELECT substr(finished, 1, 10) AS day, class, COUNT(*) FROM envelopes"
            " WHERE rebuilder = ? AND class IS NOT NULL AND finished >= ?"
            " GROUP BY day, class ORDER BY day",
            (rebuilder, since),
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def status_history(self, rebuilder: str, limit: int = 20) -> list[StatusChange]:
        """The rebuilder's online/offline changes, newest first."""
        rows = await self._all(
            "SELECT state, at FROM status_history WHERE rebuilder = ?"
            " ORDER BY at DESC, rowid DESC LIMIT ?",
            (rebuilder, limit),
        )
        return [StatusChange(r[0], rfc3339(r[1])) for r in rows]

    async def revocation_reasons(self, envelopes: Sequence[str]) -> dict[str, str]:
        """Envelope digest (hex) -> the reason its own rebuilder revoked it, for those revoked."""
        out: dict[str, str] = {}
        for chunk in _chunks([bytes.fromhex(e) for e in envelopes]):
            marks = ",".join("?" * len(chunk))
            for digest, reason in await self._all(
                "SELECT e.digest, r.reason FROM envelopes e JOIN revocations r"  # noqa: S608
                " ON " + _REVOKES.format(e="e")
                + f" WHERE e.digest IN ({marks})",
                tuple(chunk),
            ):
                out.setdefault(digest.hex(), reason)
        return out

    async def disagreements(self, limit: int = 100, offset: int = 0) -> list[Disagreement]:
        """Every disagreement, newest first."""
        rows = await self._all(
            _DISAGREEMENT + " ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
        )
        return [_disagreement(r) for r in rows]

    async def disagreements_for(
        self, source: str, version: str, *, ecosystem: str = DEFAULT_ECOSYSTEM
    ) -> list[Disagreement]:
        """The disagreements of one package version, oldest first."""
        rows = await self._all(
            _DISAGREEMENT + " WHERE ecosystem = ? AND source = ? AND version = ? ORDER BY id",
            (ecosystem, source, version),
        )
        return [_disagreement(r) for r in rows]

    async def output_report(self, envelope_hex: str, artifact: str) -> OutputReport | None:
        """One output of one stored envelope, with whose statement it is."""
        rows = await self._all(
            "SELECT e.rebuilder, e.ecosystem, e.source, e.version, o.name, o.verdict, o.rebuilt,"
            " o.buildinfo, o.repository, o.report_url"
            " FROM envelopes e JOIN outputs o ON o.envelope_id = e.id"
            " WHERE e.digest = ? AND o.name = ?",
            (bytes.fromhex(envelope_hex), artifact),
        )
        if not rows:
            return None
        r = rows[0]
        return OutputReport(r[0], r[1], r[2], r[3], StoredOutput(*r[4:10]))

    async def tampered(
        self, source: str | None = None, version: str | None = None, limit: int = 100,
        *, ecosystem: str = DEFAULT_ECOSYSTEM,
    ) -> list[TamperedFile]:
        """Published files some rebuilder reported ``tampered`` (it rebuilt what the buildinfo
        describes, the repository serves other bytes), newest first; optionally of one package
        version (of ``ecosystem``). Revoked attestations are left out."""
        where = "o.verdict = 'tampered'"
        params: list[Any] = []
        if source is not None and version is not None:
            where += " AND e.ecosystem = ? AND e.source = ? AND e.version = ?"
            params += [ecosystem, source, version]
        rows = await self._all(
            "SELECT e.rebuilder, e.ecosystem, e.source, e.version, e.architecture, e.digest,"  # noqa: S608  # only ? marks
            " e.finished, o.name, o.rebuilt, o.buildinfo, o.repository, o.report_url"
            " FROM outputs o JOIN envelopes e ON e.id = o.envelope_id"
            f" WHERE {where} AND NOT EXISTS (SELECT 1 FROM revocations r"
            " WHERE " + _REVOKES.format(e="e") + ")"
            " ORDER BY e.id DESC LIMIT ?",
            [*params, limit],
        )
        return [
            TamperedFile(
                rebuilder=r[0], ecosystem=r[1], source=r[2], version=r[3], architecture=r[4],
                envelope=r[5].hex(), finished=r[6], artifact=r[7], rebuilt=r[8],
                buildinfo=r[9], repository=r[10], report_url=r[11],
            )
            for r in rows
        ]

    async def totals(self) -> Totals:
        rows = await self._all(
            "SELECT (SELECT COUNT(*) FROM envelopes), (SELECT COUNT(*) FROM disagreements),"
            " (SELECT COUNT(*) FROM revocations)"
        )
        envelopes, disagreements, revocations = rows[0]
        return Totals(int(envelopes), int(disagreements), int(revocations))

    # ---- the log monitor (coordinator/monitor.py) ------------------------------------------

    async def log_inconsistencies(self, *, unpublished: bool = False, limit: int = 200,
                                  rebuilder: str | None = None) -> list[LogInconsistency]:
        """What the monitor recorded, newest first (of one rebuilder when given); optionally
        only what is not yet published."""
        rows = await self._all(
            "SELECT id, rebuilder, kind, detail, evidence, detected_at FROM log_inconsistencies"
            " WHERE (published = 0 OR ? = 0) AND (rebuilder = ? OR ? IS NULL)"
            " ORDER BY id DESC LIMIT ?", (int(unpublished), rebuilder, rebuilder, limit))
        return [LogInconsistency(int(r[0]), r[1], r[2], r[3],
                                 json.loads(r[4]) if r[4] else None, rfc3339(r[5]))
                for r in rows]

    async def envelopes_of(self, rebuilder: str, after_id: int, received_before: float,
                           limit: int = 5000) -> list[EnvelopeRef]:
        """The envelopes received from ``rebuilder`` after row ``after_id``, in id order."""
        rows = await self._all(
            "SELECT id, digest, kind FROM envelopes WHERE rebuilder = ? AND id > ?"
            " AND received < ? ORDER BY id LIMIT ?", (rebuilder, after_id, received_before, limit))
        return [EnvelopeRef(int(r[0]), bytes(r[1]).hex(), str(r[2])) for r in rows]

    async def has_envelopes(self, digests: Sequence[str]) -> set[str]:
        """Which of these envelope digests (hex) the coordinator has stored."""
        found: set[str] = set()
        for chunk in _chunks(list(digests)):
            marks = ",".join("?" * len(chunk))
            rows = await self._all(
                f"SELECT digest FROM envelopes WHERE digest IN ({marks})",  # noqa: S608  # placeholders
                [bytes.fromhex(d) for d in chunk])
            found |= {bytes(r[0]).hex() for r in rows}
        return found

    async def count_for_rebuilder(self, rebuilder: str) -> int:
        rows = await self._all("SELECT COUNT(*) FROM envelopes WHERE rebuilder = ?", (rebuilder,))
        return int(rows[0][0])


_DISAGREEMENT = (
    "SELECT id, source, version, artifact, digests, conflicts, detected_at, ecosystem"
    " FROM disagreements"
)


def _disagreement(r: Sequence[Any]) -> Disagreement:
    return Disagreement(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6], r[7])
