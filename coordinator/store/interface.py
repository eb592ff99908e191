"""What the coordinator asks of its database: the ``Store`` interface, in typed rows.

Every caller (ingest, catch-up, query API, dashboard, log monitor) holds a ``Store``; only
``open_store`` knows it is SQLite (``coordinator/store/sqlite.py``). Another backend, such as
PostgreSQL, implements these methods with the same answers and is chosen there, without
touching a caller. The guarantees every backend keeps:

- ``store_batch`` is one transaction: a batch (and the catch-up cursor with it) is stored
  whole or not at all; one row per (rebuilder, signed statement), whatever hints arrive;
- row ids (``EnvelopeRef.id``, ``Disagreement.id``) come from the database and only grow;
- revoked attestations are left out wherever a query says "unrevoked";
- packages are keyed by (ecosystem, name, version); ``ecosystem`` defaults to Debian.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from coordinator.checks import Accepted
from coordinator.store.rows import (
    DEFAULT_ECOSYSTEM,
    BatchResult,
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
    TamperedFile,
    Totals,
)

__all__ = ["Store"]


class Store(Protocol):
    """The coordinator's database. Methods are coroutines; rows are ``coordinator.store.rows``."""

    async def close(self) -> None: ...

    # ---- writing: ingest, status and catch-up ----------------------------------------------

    async def ensure_rebuilders(self, ids: Iterable[str]) -> None:
        """Register rebuilder ids (known ones are left as they are)."""

    async def store_batch(
        self,
        items: Sequence[Accepted],
        now: float | None = None,
        cursor: tuple[str, str] | None = None,
    ) -> BatchResult:
        """Store verified envelopes in one transaction (with ``cursor``: (rebuilder, cursor)
        of a catch-up page); new disagreements are detected in the same transaction."""
        ...

    async def record_status(
        self, rebuilder: str, state: str, status: dict[str, Any], seen: float | None
    ) -> None:
        """Store a status message; ``seen`` (None for 'offline') moves last_seen forward."""

    async def record_catchup_error(self, rebuilder: str, error: str, now: float) -> None: ...

    async def record_catchup_ok(self, rebuilder: str, now: float) -> None: ...

    # ---- rebuilders -------------------------------------------------------------------------

    async def cursor(self, rebuilder: str) -> str:
        """The catch-up cursor of ``rebuilder`` ("0" before its first page)."""
        ...

    async def rebuilder_states(self) -> dict[str, RebuilderState]: ...

    async def counts(self) -> dict[str, dict[str, int]]:
        """rebuilder -> verdict -> number of stored attestations."""
        ...

    async def class_counts(self) -> dict[str, dict[str, int]]:
        """rebuilder -> verdict class (coordinator.verdicts) -> number."""
        ...

    async def rebuilder_results(
        self, rebuilder: str, limit: int = 50, offset: int = 0
    ) -> list[RebuilderResult]: ...

    async def class_series(self, rebuilder: str, since: str) -> list[tuple[str, str, int]]:
        """(day, class, n) finished on or after ``since`` (an RFC 3339 date), oldest first."""
        ...

    async def status_history(self, rebuilder: str, limit: int = 20) -> list[StatusChange]: ...

    async def count_for_rebuilder(self, rebuilder: str) -> int: ...

    # ---- envelopes and packages -------------------------------------------------------------

    async def envelopes_for_digest(self, sha256_hex: str) -> list[bytes]:
        """Every stored envelope with a subject of that digest, then the revocations of those,
        as stored (canonical bytes)."""
        ...

    async def envelopes_for_package(
        self, source: str, version: str, *, ecosystem: str = DEFAULT_ECOSYSTEM
    ) -> list[bytes]: ...

    async def envelopes_for_digests(self, digests: Sequence[str]) -> dict[str, list[bytes]]:
        """``envelopes_for_digest`` of each digest (hex), answered together."""
        ...

    async def envelopes_for_packages(
        self, packages: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], list[bytes]]:
        """``envelopes_for_package`` of each (ecosystem, source, version), answered together."""
        ...

    async def package_results(
        self, source: str, version: str, *, ecosystem: str = DEFAULT_ECOSYSTEM
    ) -> list[PackageResult]: ...

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
        """Package versions whose name contains ``query`` (literally: no wildcards)."""
        ...

    async def package_versions(
        self, source: str, limit: int = 200, *, ecosystem: str = DEFAULT_ECOSYSTEM
    ) -> list[PackageSummary]: ...

    async def filter_values(self) -> FilterValues: ...

    async def has_envelopes(self, digests: Sequence[str]) -> set[str]: ...

    async def envelopes_of(
        self, rebuilder: str, after_id: int, received_before: float, limit: int = 5000
    ) -> list[EnvelopeRef]: ...

    async def output_report(self, envelope_hex: str, artifact: str) -> OutputReport | None: ...

    async def revocation_reasons(self, envelopes: Sequence[str]) -> dict[str, str]:
        """Envelope digest (hex) -> why its own rebuilder revoked it, for those revoked."""
        ...

    # ---- what went wrong --------------------------------------------------------------------

    async def disagreements(self, limit: int = 100, offset: int = 0) -> list[Disagreement]: ...

    async def disagreements_for(
        self, source: str, version: str, *, ecosystem: str = DEFAULT_ECOSYSTEM
    ) -> list[Disagreement]: ...

    async def tampered(
        self, source: str | None = None, version: str | None = None, limit: int = 100,
        *, ecosystem: str = DEFAULT_ECOSYSTEM,
    ) -> list[TamperedFile]: ...

    async def tampered_packages(
        self, limit: int = 20, *, ecosystem: str = DEFAULT_ECOSYSTEM
    ) -> list[tuple[str, str]]: ...

    async def totals(self) -> Totals: ...

    async def record_log_inconsistency(
        self, rebuilder: str, kind: str, detail: str, evidence: dict[str, Any]
    ) -> bool:
        """Record what the log monitor found; False when the same finding is recorded."""
        ...

    async def log_inconsistencies(
        self, *, unpublished: bool = False, limit: int = 200, rebuilder: str | None = None
    ) -> list[LogInconsistency]:
        """Newest first (of one rebuilder when given); optionally only the unpublished."""
        ...

    async def mark_log_inconsistency_published(self, ids: Sequence[int]) -> None: ...
