"""The typed rows the coordinator's store returns: one frozen dataclass per kind of answer.

Backends (``coordinator.store.sqlite`` today) build these; callers read their fields, and
``to_dict()`` gives the JSON shape of docs/api.md or the dashboard's templates::

    for result in await store.package_results("hello", "2.10-3"):
        if not result.revoked and result.kind == "rebuild":
            print(result.rebuilder, [o.verdict for o in result.outputs])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from coordinator.checks import Accepted

__all__ = [
    "DEFAULT_ECOSYSTEM",
    "BatchResult",
    "Disagreement",
    "EnvelopeRef",
    "FilterValues",
    "LogInconsistency",
    "OutputReport",
    "PackageResult",
    "PackageSummary",
    "RebuilderResult",
    "RebuilderState",
    "StatusChange",
    "StoredOutput",
    "TamperedFile",
    "Totals",
    "rfc3339",
]

# What rows stored before the store knew ecosystems (schema 7) are, and what a caller that
# names none means: the one ecosystem the network rebuilds so far.
DEFAULT_ECOSYSTEM = "debian"


def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Disagreement:
    id: int
    source: str
    version: str
    artifact: str
    digests: dict[str, str]
    conflicts: list[dict[str, str]]
    detected_at: float
    ecosystem: str = DEFAULT_ECOSYSTEM

    def to_dict(self) -> dict[str, Any]:
        """The shape of docs/api.md (plus ``conflicts``: every distinct rebuilder/digest pair)."""
        return {
            "id": self.id,
            "package": {"ecosystem": self.ecosystem, "name": self.source,
                        "version": self.version},
            "artifact": self.artifact,
            "digests": self.digests,
            "conflicts": self.conflicts,
            "detected_at": rfc3339(self.detected_at),
        }


@dataclass
class BatchResult:
    stored: list[Accepted] = field(default_factory=list)
    duplicates: int = 0
    new_disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def tampered(self) -> list[Accepted]:
        """Newly stored attestations reporting that the repository serves other bytes than
        the rebuild of its buildinfo gave: the alert the dashboard raises."""
        return [a for a in self.stored if a.verdict == "tampered"]


@dataclass(frozen=True)
class RebuilderState:
    id: str
    cursor: str
    last_seen: float | None
    state: str | None
    status: dict[str, Any] | None
    last_error: str | None
    last_catchup: float | None


@dataclass(frozen=True)
class StoredOutput:
    """One output file of a stored attestation, as its statement described it."""

    name: str
    verdict: str
    rebuilt: str | None
    buildinfo: str | None
    repository: str | None
    report_url: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, "rebuilt": self.rebuilt,
                "buildinfo": self.buildinfo, "repository": self.repository,
                "report_url": self.report_url}


@dataclass(frozen=True)
class PackageResult:
    """One stored envelope of a package version, oldest first in ``package_results``."""

    envelope: str  # hex digest
    rebuilder: str
    kind: str
    architecture: str | None
    verdict: str | None
    invocation: str | None
    finished: str | None
    failure: str | None
    revoked_reason: str | None  # why its own rebuilder revoked it; None: not revoked
    verdict_class: str | None  # coordinator.verdicts.CLASSES; None for a revocation
    suite: str | None
    outputs: tuple[StoredOutput, ...] = ()

    @property
    def revoked(self) -> bool:
        return self.revoked_reason is not None

    def to_dict(self) -> dict[str, Any]:
        """The dashboard's shape (``class`` for the verdict class)."""
        return {
            "class": self.verdict_class, "suite": self.suite,
            "revoked_reason": self.revoked_reason, "envelope": self.envelope,
            "rebuilder": self.rebuilder, "kind": self.kind, "architecture": self.architecture,
            "verdict": self.verdict, "invocation": self.invocation, "finished": self.finished,
            "failure": self.failure, "revoked": self.revoked,
            "outputs": [o.to_dict() for o in self.outputs],
        }


@dataclass(frozen=True)
class PackageSummary:
    """A package version with each rebuilder's latest unrevoked verdict and verdict class."""

    ecosystem: str
    source: str
    version: str
    verdicts: dict[str, str]
    classes: dict[str, str]
    suites: tuple[str, ...]
    architectures: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ecosystem": self.ecosystem, "source": self.source, "version": self.version,
                "verdicts": self.verdicts, "classes": self.classes,
                "suites": list(self.suites), "architectures": list(self.architectures)}


@dataclass(frozen=True)
class FilterValues:
    """The suites and architectures seen, for the package filters."""

    suites: tuple[str, ...]
    architectures: tuple[str, ...]


@dataclass(frozen=True)
class RebuilderResult:
    """One attestation of one rebuilder, for its dashboard page."""

    envelope: str
    kind: str
    source: str | None
    version: str | None
    architecture: str | None
    verdict_class: str | None
    failure: str | None
    finished: str | None
    suite: str | None
    revoked_reason: str | None  # this attestation was revoked, and why
    reason: str | None  # a revocation: the reason it gives
    revokes: str | None  # a revocation: the digest it names (hex)

    @property
    def revoked(self) -> bool:
        return self.revoked_reason is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "envelope": self.envelope, "kind": self.kind, "source": self.source,
            "version": self.version, "architecture": self.architecture,
            "class": self.verdict_class, "failure": self.failure, "finished": self.finished,
            "suite": self.suite, "revoked": self.revoked, "revoked_reason": self.revoked_reason,
            "reason": self.reason, "revokes": self.revokes,
        }


@dataclass(frozen=True)
class StatusChange:
    state: str  # online | offline
    at: str | None  # RFC 3339

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "at": self.at}


@dataclass(frozen=True)
class OutputReport:
    """One output of one stored envelope, with whose statement it is."""

    rebuilder: str
    ecosystem: str
    source: str
    version: str
    output: StoredOutput


@dataclass(frozen=True)
class TamperedFile:
    """A published file a rebuilder reported ``tampered``: it rebuilt what the buildinfo
    describes, the repository serves other bytes."""

    rebuilder: str
    ecosystem: str
    source: str
    version: str
    architecture: str | None
    envelope: str
    finished: str | None
    artifact: str
    rebuilt: str | None
    buildinfo: str | None
    repository: str | None
    report_url: str | None

    def to_dict(self) -> dict[str, Any]:
        """The shape of ``GET /v1/tampered`` (docs/api.md)."""
        return {
            "rebuilder": self.rebuilder,
            "package": {"ecosystem": self.ecosystem, "name": self.source,
                        "version": self.version, "architecture": self.architecture},
            "envelope": self.envelope,
            "finished": self.finished,
            "artifact": self.artifact,
            "rebuilt": self.rebuilt,
            "buildinfo": self.buildinfo,
            "repository": self.repository,
            "report_url": self.report_url,
        }


@dataclass(frozen=True)
class Totals:
    envelopes: int
    disagreements: int
    revocations: int


@dataclass(frozen=True)
class LogInconsistency:
    """What the log monitor found wrong (coordinator/monitor.py)."""

    id: int
    rebuilder: str
    kind: str
    detail: str
    evidence: dict[str, Any] | None
    detected_at: str | None  # RFC 3339

    def to_dict(self) -> dict[str, Any]:
        """The payload of the events topic (docs/api.md)."""
        return {"id": self.id, "rebuilder": self.rebuilder, "kind": self.kind,
                "detail": self.detail, "evidence": self.evidence,
                "detected_at": self.detected_at}


class EnvelopeRef(NamedTuple):
    """A stored envelope by its row id (the monitor's cursor), digest and kind."""

    id: int
    digest: str  # hex
    kind: str
