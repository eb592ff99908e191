"""Turn a ``RebuildOutcome`` into this node's signed statement (ARCHITECTURE §4.2, §4.3).

Pure: values in, values out. The subjects are the published files *this* node built (outputs
with a rebuilt digest); rebuilt files the repository does not publish are ``unpublished:``
byproducts, never subjects; a failed rebuild has no subject and a failure reason::

    statement = rebuild_statement(outcome, identity, invocation_id="rb-a/12/1", reports={})
    envelope = sign_statement(statement.to_bytes(), key)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from rebuilder.outcome import RebuildOutcome
from verifier.dsse import Envelope, sign
from verifier.errors import BadDataError
from verifier.keys import Ed25519PrivateKey
from verifier.statement import (
    Digest,
    OutputVerdict,
    RebuildStatement,
    RevocationStatement,
    Subject,
    parse_statement,
)

__all__ = [
    "NodeIdentity",
    "ReportRef",
    "rebuild_statement",
    "revocation_statement",
    "sign_statement",
]

MAX_FAILURE_CHARS = 4000


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    builder_id: str  # URI naming this node
    version: str


@dataclass(frozen=True)
class ReportRef:
    """Where a mismatch's diffoscope report is served and the sha256 of the served HTML."""

    url: str
    sha256: Digest


def _clip(text: str, limit: int = MAX_FAILURE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rebuild_statement(
    outcome: RebuildOutcome,
    identity: NodeIdentity,
    *,
    invocation_id: str,
    repository: str,
    reports: Mapping[str, ReportRef],
) -> RebuildStatement:
    """The statement of one finished attempt; ``reports`` maps output names to their report.

    Every value goes through the verifier's own checks (the constructors). When the outcome
    breaks one (a hostile file name, say), the attempt is stated as a failure naming the rule,
    never signed as something verifiers refuse; ``BadDataError`` if even that cannot be made.
    """
    try:
        return _statement(outcome, identity, invocation_id, repository, reports, None)
    except BadDataError as e:
        why = f"the result could not be attested: {e.reason}"
        return _statement(outcome, identity, invocation_id, repository, reports, why)


def _statement(
    outcome: RebuildOutcome,
    identity: NodeIdentity,
    invocation_id: str,
    repository: str,
    reports: Mapping[str, ReportRef],
    attest_error: str | None,
) -> RebuildStatement:
    job = outcome.job
    verdicts: list[OutputVerdict] = []
    subjects: list[Subject] = []
    failure = outcome.failure
    if failure is None and attest_error is None:
        for out in outcome.outputs:
            report = reports.get(out.name)
            verdicts.append(
                OutputVerdict(
                    name=out.name,
                    verdict=out.verdict,
                    rebuilt=out.rebuilt,
                    buildinfo=out.buildinfo,
                    repository=out.repository,
                    report_sha256=report.sha256 if report else None,
                    report_url=report.url if report else None,
                )
            )
            if out.rebuilt is not None:
                subjects.append(Subject(out.name, out.rebuilt))
        if not subjects:
            failure = "the build finished but produced none of the published files"
    if attest_error is not None:
        failure, subjects, verdicts = _clip(f"internal: {attest_error}"), [], []
    elif failure is not None:
        stage = outcome.failure_stage or "internal"
        failure = _clip(f"{stage}: {failure}")
        subjects = []
    internal = dict(outcome.internal_parameters)
    internal.setdefault("environment", outcome.environment)
    return RebuildStatement(
        package=job.package,
        subjects=tuple(subjects),
        builder_id=identity.builder_id,
        builder_version=identity.version,
        started_on=outcome.started_on,
        finished_on=outcome.finished_on,
        invocation_id=invocation_id,
        buildinfo_uri=job.buildinfo_url,
        # none when the buildinfo could not be fetched: a digest of nothing would name nothing
        buildinfo_sha256=outcome.buildinfo_sha256,
        repository=repository,
        verdicts=tuple(verdicts),
        failure=failure,
        unpublished=tuple(Subject(n, d) for n, d in outcome.unpublished),
        internal_parameters=internal,
        resolved_dependencies=outcome.resolved_dependencies,
    )


def revocation_statement(
    revoked: str, reason: str, identity: NodeIdentity, when: datetime
) -> RevocationStatement:
    return RevocationStatement(
        revoked=Digest(revoked), reason=reason, builder_id=identity.builder_id, revoked_on=when
    )


def sign_statement(payload: bytes, key: Ed25519PrivateKey) -> Envelope:
    """Sign ``payload`` once the verifier's own parser accepts it (``BadDataError`` if not):
    the node never signs a statement every verifier would refuse."""
    parse_statement(payload)
    return sign(payload, key)
