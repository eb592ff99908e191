"""The quorum decision (ARCHITECTURE §4.5): pure, no I/O, no clock.

``decide(artifact, policy, evidence, now)`` looks at what each trusted rebuilder sent and says
whether the artifact may be installed, and why::

    result = decide(Artifact(sha256, identity), policy, {"rb-alpha": [envelope_bytes]}, now)
    result.accepted, result.reasons, [(r.id, r.status) for r in result.rebuilders]

The work is split in two pure steps, also public so the online client can stop early:
``assess`` gives one rebuilder its status from its own evidence only, ``conclude`` applies the
policy to all statuses, and ``is_settled`` says whether unanswered rebuilders could still change
the outcome.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from verifier.dsse import MAX_ENVELOPE_BYTES, Envelope, Signature
from verifier.ecosystem import ArtifactIdentity
from verifier.errors import BadDataError
from verifier.policy import Policy, TrustedRebuilder
from verifier.statement import (
    Digest,
    RebuildStatement,
    RevocationStatement,
    format_time,
    parse_statement,
    validate_sha256,
)

__all__ = [
    "NOT_WAITED_FOR",
    "Artifact",
    "BadResponse",
    "Evidence",
    "QuorumResult",
    "RebuilderResult",
    "Status",
    "Unreachable",
    "assess",
    "conclude",
    "decide",
    "is_settled",
]

NOT_QUERIED = "not queried: the decision was already settled by the other rebuilders"
# The start of the detail of a rebuilder whose URL answers like no rebuilder (404 everywhere).
NOT_A_REBUILDER = "the URL does not look like a rebuilder"
# check_online: still silent when the others had settled the outcome, after the grace period.
NOT_WAITED_FOR = (
    "not waited for: no answer yet when the others had settled the outcome, which its answer"
    " could not change"
)


class Status(StrEnum):
    AGREES = "agrees"
    DISAGREES = "disagrees"
    NO_ATTESTATION = "no_attestation"
    UNREACHABLE = "unreachable"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Artifact:
    """The file being decided on: its sha256 and the identity read from the file itself
    (its ecosystem's ``read_identity``; Debian: the ``.deb``'s control data)."""

    sha256: Digest
    identity: ArtifactIdentity

    def __post_init__(self) -> None:
        validate_sha256(self.sha256, "artifact digest")

    def to_dict(self) -> dict[str, str]:
        return {"sha256": self.sha256, "name": self.identity.subject_name}


@dataclass(frozen=True, slots=True)
class Unreachable:
    """Evidence for a rebuilder that could not be asked: why."""

    error: str


@dataclass(frozen=True, slots=True)
class BadResponse:
    """Evidence for a rebuilder that answered, but with something unusable (not envelopes)."""

    error: str


Evidence = Mapping[str, Sequence[bytes] | Unreachable | BadResponse]


@dataclass(frozen=True, slots=True)
class RebuilderResult:
    """One trusted rebuilder's status for the artifact, with a sentence saying why."""

    id: str
    operator: str
    status: Status
    detail: str
    digest: Digest | None = None  # what it attested (agrees) or rebuilt instead (disagrees)
    report_url: str | None = None  # the diffoscope report of a disagreement, when it gave one
    # a disagreement's class from its signed verdict: "tampered" (it rebuilt what the
    # buildinfo describes; the repository serves other bytes) or "unreproducible"
    verdict: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "operator": self.operator,
            "status": str(self.status),
            "detail": self.detail,
        }
        if self.digest is not None:
            d["digest"] = self.digest
        if self.report_url is not None:
            d["report_url"] = self.report_url
        if self.verdict is not None:
            d["verdict"] = self.verdict
        return d


@dataclass(frozen=True, slots=True)
class QuorumResult:
    artifact: Artifact
    accepted: bool
    reasons: tuple[str, ...]  # for a rejection: what failed and what would make it pass
    rebuilders: tuple[RebuilderResult, ...]
    threshold: int
    counted: int  # agreeing rebuilders as the policy counts them (distinct operators if required)
    distinct_operators: bool = True

    def by_status(self, status: Status) -> tuple[RebuilderResult, ...]:
        return tuple(r for r in self.rebuilders if r.status == status)

    @property
    def summary(self) -> str:
        """One line: verdict, artifact, and the counts behind it."""
        unit = "distinct operators" if self.distinct_operators else "rebuilders"
        verdict = "ACCEPTED" if self.accepted else "REJECTED"
        line = (
            f"{verdict} {self.artifact.identity.subject_name} (sha256 {self.artifact.sha256}):"
            f" {self.counted} of {self.threshold} required {unit} reproduced it"
        )
        disagreeing = self.by_status(Status.DISAGREES)
        if disagreeing:
            line += f", {_plural(len(disagreeing), 'rebuilder')} disagreed"
            tampered = sum(1 for r in disagreeing if r.verdict == "tampered")
            if tampered:
                line += f" ({tampered} reporting tampering)"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact.to_dict(),
            "accepted": self.accepted,
            "reasons": list(self.reasons),
            "rebuilders": [r.to_dict() for r in self.rebuilders],
        }


def _short(d: str) -> str:
    return d[:16] + "…"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(slots=True)
class _Attestation:
    envelope: Envelope
    statement: RebuildStatement
    signature: Signature  # the one that verified under the rebuilder's key
    digest: Digest | None = None  # the other digest, for a disagreement
    report_url: str | None = None
    verdict: str | None = None  # the signed verdict of a disagreement
    why: str = ""  # for a contradiction


class _Findings:
    """What one rebuilder's verified envelopes say about the artifact, before revocations."""

    __slots__ = (
        "agreements",
        "contradictions",
        "disagreements",
        "failures",
        "junk",
        "legacy_revocations",
        "missing",
        "revocations",
    )

    def __init__(self) -> None:  # plain, not a dataclass: one is made per rebuilder per decision
        self.agreements: list[_Attestation] = []
        self.disagreements: list[_Attestation] = []
        self.contradictions: list[_Attestation] = []
        self.failures: list[str] = []
        self.missing: list[str] = []
        self.revocations: dict[str, str] = {}  # payload digest -> reason (v2)
        self.legacy_revocations: dict[str, str] = {}  # as-signed envelope digest -> reason (v1)
        self.junk: list[str] = []  # unsigned or unusable data, with why


def _classify(
    artifact: Artifact, env: Envelope, sig: Signature, stmt: RebuildStatement, f: _Findings
) -> None:
    """Step (b) and the identity half of (c): how this signed statement relates to the file."""
    ident = artifact.identity
    name = ident.subject_name
    built_by = ident.built_by(stmt.package)
    same_digest = [s for s in stmt.subjects if s.sha256 == artifact.sha256]
    named = [s for s in stmt.subjects if s.name == name]
    if same_digest:
        wrong = [s for s in same_digest if s.name != name]
        if wrong or not built_by:
            s = wrong[0] if wrong else same_digest[0]
            f.contradictions.append(
                _Attestation(
                    env,
                    stmt,
                    sig,
                    why=(
                        f"it signed sha256 {_short(artifact.sha256)} as {s.name} built from"
                        f" source {stmt.package}, but the artifact's control data makes it"
                        f" {name} from source {ident.source} {ident.source_version}"
                    ),
                )
            )
        elif any(s.sha256 != artifact.sha256 for s in named):
            f.contradictions.append(
                _Attestation(env, stmt, sig, why=f"one statement names {name} with two digests")
            )
        else:
            f.agreements.append(_Attestation(env, stmt, sig))
        return
    if not built_by:
        return  # another package, architecture or version: says nothing about this file
    if named:
        verdict = stmt.verdict_for(name)
        f.disagreements.append(
            _Attestation(
                env,
                stmt,
                sig,
                digest=named[0].sha256,
                report_url=verdict.report_url if verdict else None,
                verdict="tampered" if verdict and verdict.verdict == "tampered"
                else "unreproducible",
            )
        )
    elif stmt.failed:
        f.failures.append(stmt.failure or "no reason given")
    else:
        verdict = stmt.verdict_for(name)
        if verdict is not None and verdict.verdict == "missing-rebuild":
            f.missing.append(f"its rebuild of {stmt.package} did not produce {name}")


def _read(
    artifact: Artifact,
    rebuilder: TrustedRebuilder,
    envelopes: Sequence[bytes],
    latest: datetime,
) -> _Findings:
    """Step (a) for every envelope: verify under this rebuilder's key, then parse.

    A rebuild that finished after ``latest`` (now plus the allowed clock skew) is refused:
    a date in the future would otherwise dodge ``max_age_days``.
    """
    f = _Findings()
    # The same envelope twice counts, and costs, once; one envelope needs no bookkeeping.
    seen: set[Envelope] | None = None
    statements: set[bytes] | None = None  # payloads verified so far: one statement counts once
    if len(envelopes) > 1:
        envelopes = list(dict.fromkeys(envelopes))
        seen = set()
        statements = set()
    for raw in envelopes:
        if len(raw) > MAX_ENVELOPE_BYTES:
            f.junk.append(
                f"an envelope of {len(raw)} bytes is over the {MAX_ENVELOPE_BYTES}-byte limit"
            )
            continue
        try:
            env = Envelope.from_bytes(raw)
        except BadDataError as e:
            f.junk.append(f"malformed envelope ({e.reason})")
            continue
        if seen is not None:  # the same envelope serialized differently
            if env in seen:
                continue
            seen.add(env)
        # The keyid hint orders the signatures; one Ed25519 verification in the normal case.
        sig = env.verified_signature(rebuilder.public_key, rebuilder.keyid)
        if sig is None:
            f.junk.append(
                f"an envelope's signature does not verify under keyid {_short(rebuilder.keyid)}:"
                " the payload was modified or signed by another key"
            )
            continue
        if statements is not None:  # the same signed statement with other hints or signatures
            if env.payload in statements:
                continue
            statements.add(env.payload)
        # The statement is parsed only now that its signature has verified.
        try:
            stmt = parse_statement(env.payload)
        except BadDataError as e:
            f.junk.append(f"a signed statement is malformed ({e.reason})")
            continue
        if isinstance(stmt, RevocationStatement):
            kind = f.legacy_revocations if stmt.legacy else f.revocations
            kind[stmt.revoked] = stmt.reason
        elif stmt.finished_on > latest:
            f.junk.append(
                f"an attestation is future-dated: it finished {format_time(stmt.finished_on)},"
                f" later than now plus the allowed clock skew ({format_time(latest)});"
                " the rebuilder's clock or statement is wrong"
            )
        else:
            _classify(artifact, env, sig, stmt, f)
    return f


def _revocation_of(a: _Attestation, rebuilder: TrustedRebuilder, f: _Findings) -> str | None:
    """The reason of a revocation naming this attestation, or None."""
    if f.revocations:
        reason = f.revocations.get(a.envelope.payload_digest())
        if reason is not None:
            return reason
    if f.legacy_revocations:
        signed = a.envelope.as_signed(a.signature, rebuilder.keyid)
        for digest in (signed.digest(), a.envelope.digest()):
            reason = f.legacy_revocations.get(digest)
            if reason is not None:
                return reason
    return None


def assess(
    artifact: Artifact,
    rebuilder: TrustedRebuilder,
    policy: Policy,
    evidence: Sequence[bytes] | Unreachable | BadResponse | None,
    now: datetime,
) -> RebuilderResult:
    """One rebuilder's status from its own evidence alone (``None``: it was not queried).

    Whatever that evidence holds, the answer is a status: an exception raised while reading it
    (a defect a hostile answer found) makes this rebuilder ``invalid``, never the decision fail.
    """
    try:
        return _assess(artifact, rebuilder, policy, evidence, now)
    except Exception as e:  # one source must never fail the decision for the others
        return RebuilderResult(
            rebuilder.id,
            rebuilder.operator,
            Status.INVALID,
            f"its answer could not be read ({type(e).__name__}: {str(e)[:200]})",
        )


def _assess(
    artifact: Artifact,
    rebuilder: TrustedRebuilder,
    policy: Policy,
    evidence: Sequence[bytes] | Unreachable | BadResponse | None,
    now: datetime,
) -> RebuilderResult:
    def result(
        status: Status,
        detail: str,
        digest: Digest | None = None,
        report_url: str | None = None,
        verdict: str | None = None,
    ) -> RebuilderResult:
        return RebuilderResult(
            rebuilder.id, rebuilder.operator, status, detail, digest, report_url, verdict
        )

    if rebuilder.keyid in policy.distrust.keyids:
        return result(Status.INVALID, f"key distrusted by policy (keyid {rebuilder.keyid})")
    if isinstance(evidence, Unreachable):
        return result(Status.UNREACHABLE, evidence.error)
    if isinstance(evidence, BadResponse):
        return result(Status.INVALID, evidence.error)
    if evidence is None:
        return result(Status.NO_ATTESTATION, NOT_QUERIED)
    if not evidence:
        return result(Status.NO_ATTESTATION, f"no attestation for {artifact.identity.subject_name}")

    f = _read(
        artifact, rebuilder, evidence, now + timedelta(minutes=policy.max_clock_skew_minutes)
    )

    # Revocations (§4.3) remove whatever they name: v2 by the sha256 of the signed payload, so no
    # hint, extra signature or base64 spelling outside the signature revives a statement; v1 by
    # the digest of the envelope as the rebuilder signed it (its one signature, its keyid).
    revoked: list[str] = []
    if f.revocations or f.legacy_revocations:
        for bucket in (f.agreements, f.disagreements, f.contradictions):
            kept = []
            for a in bucket:
                reason = _revocation_of(a, rebuilder, f)
                if reason is None:
                    kept.append(a)
                elif bucket is not f.contradictions:
                    revoked.append(reason)
            bucket[:] = kept

    ignored = ""
    if f.junk:
        ignored = f"; ignored {_plural(len(f.junk), 'unusable envelope')}: {f.junk[0]}"

    if f.contradictions:
        return result(Status.INVALID, f"identity mismatch: {f.contradictions[0].why}")

    if f.disagreements:
        first = f.disagreements[0]
        others = sorted({a.digest for a in f.disagreements if a.digest} - {first.digest})
        if f.agreements:
            detail = (
                f"equivocated: it signed both an attestation reproducing sha256"
                f" {_short(artifact.sha256)} and one reporting sha256 {first.digest}"
            )
        else:
            detail = f"rebuilt {artifact.identity.subject_name} with sha256 {first.digest}"
            if others:
                detail += f" (and {', '.join(others)})"
            if first.verdict == "tampered":
                detail += (
                    ", exactly as the buildinfo describes: tampered, the repository serves"
                    " other bytes"
                )
        if first.report_url:
            detail += f"; diffoscope report: {first.report_url}"
        return result(
            Status.DISAGREES,
            detail + ignored,
            digest=first.digest,
            report_url=first.report_url,
            verdict=first.verdict,
        )

    expired: list[datetime] = []
    if f.agreements and policy.max_age_days > 0:
        oldest = now - timedelta(days=policy.max_age_days)
        fresh = [a for a in f.agreements if a.statement.finished_on >= oldest]
        expired = [
            a.statement.finished_on for a in f.agreements if a.statement.finished_on < oldest
        ]
        f.agreements = fresh

    if f.agreements:
        latest = max(a.statement.finished_on for a in f.agreements)
        return result(
            Status.AGREES,
            f"reproduced sha256 {_short(artifact.sha256)} (finished {format_time(latest)})"
            + ignored,
            digest=artifact.sha256,
        )

    # Nothing counts. Signed facts (revoked, expired, failed) explain that better than junk.
    if revoked:
        return result(
            Status.NO_ATTESTATION, f"its attestation was revoked: {revoked[0]}" + ignored
        )
    if expired:
        return result(
            Status.NO_ATTESTATION,
            f"its attestation finished {format_time(max(expired))}, older than the policy's"
            f" max_age_days = {policy.max_age_days}" + ignored,
        )
    if f.failures:
        return result(Status.NO_ATTESTATION, f"its rebuild failed: {f.failures[0]}" + ignored)
    if f.missing:
        return result(Status.NO_ATTESTATION, f.missing[0] + ignored)
    if f.junk:
        more = f" (and {len(f.junk) - 1} more)" if len(f.junk) > 1 else ""
        return result(Status.INVALID, f.junk[0] + more)
    return result(Status.NO_ATTESTATION, f"no attestation for {artifact.identity.subject_name}")


def _counted(rs: Iterable[RebuilderResult], distinct: bool) -> int:
    rs = list(rs)
    return len({r.operator for r in rs}) if distinct else len(rs)


def _names(rs: Sequence[RebuilderResult]) -> str:
    return ", ".join(f"{r.id} ({r.operator})" for r in rs) if rs else "none"


def conclude(
    artifact: Artifact, policy: Policy, results: Sequence[RebuilderResult]
) -> QuorumResult:
    """Apply the policy (step (c)) to every rebuilder's status."""
    distinct = policy.require_distinct_operators
    agreeing = [r for r in results if r.status == Status.AGREES]
    disagreeing = [r for r in results if r.status == Status.DISAGREES]
    counted = _counted(agreeing, distinct)
    reasons: list[str] = []

    if artifact.sha256 in policy.distrust.digests:
        reasons.append(
            f"The artifact's sha256 {artifact.sha256} is listed under [distrust] digests in"
            f" {policy.source}: it must never be installed, whoever reproduced it; only removing"
            " it from that list would let it pass."
        )

    rom = policy.reject_on_mismatch
    if rom > 0 and len(disagreeing) >= rom:
        what = "; ".join(
            f"{r.id} ({r.operator}) got sha256 {r.digest}"
            + (f", report {r.report_url}" if r.report_url else "")
            for r in disagreeing
        )
        reasons.append(
            f"{_plural(len(disagreeing), 'trusted rebuilder')} reported a different result"
            f" ({what}) and the policy rejects at {rom} (reject_on_mismatch). Read the diffoscope"
            " report; it can pass only once those rebuilders revoke their results or the"
            " mismatch is explained and fixed."
        )

    if counted < policy.threshold:
        unit = "distinct operators" if distinct else "rebuilders"
        sentence = (
            f"Only {counted} of the required {policy.threshold} {unit} reproduced it"
            f" (agreeing: {_names(agreeing)})."
        )
        counted_ops = {r.operator for r in agreeing}
        candidates = [
            r
            for r in results
            if r.status in (Status.NO_ATTESTATION, Status.UNREACHABLE, Status.INVALID)
            and r.detail != NOT_WAITED_FOR  # settled without it: waiting for it cannot help
            and not (distinct and r.operator in counted_ops)
        ]
        need = policy.threshold - counted
        if candidates:
            hints = []
            waiting = [r for r in candidates if r.status == Status.NO_ATTESTATION]
            down = [r for r in candidates if r.status == Status.UNREACHABLE]
            misplaced = [r for r in candidates if r.detail.startswith(NOT_A_REBUILDER)]
            bad = [r for r in candidates
                   if r.status == Status.INVALID and r not in misplaced]
            if waiting:
                hints.append(f"{_names(waiting)} to publish a reproducing attestation")
            if down:
                hints.append(f"{_names(down)} to become reachable and confirm")
            if bad:
                hints.append(f"{_names(bad)} to serve validly signed attestations")
            if misplaced:
                hints.append(f"the url of {_names(misplaced)} in {policy.source} to be"
                             " corrected (it does not look like a rebuilder)")
            sentence += (
                f" It needs {need} more agreeing {'operator' if distinct else 'rebuilder'}"
                f"{'s' if need > 1 else ''}: wait for " + "; or ".join(hints) + "."
            )
        else:
            sentence += " No other trusted rebuilder can make up the difference."
        if distinct and len(agreeing) > counted:
            sentence += " Rebuilders of an operator already counted do not count again."
        reasons.append(sentence)

    tampered = [r for r in disagreeing if r.verdict == "tampered"]
    if tampered and reasons:  # said only when the artifact is rejected anyway
        built = "; ".join(f"{r.id} ({r.operator}) got sha256 {r.digest}" for r in tampered)
        if agreeing:
            sentence = (
                f"{_names(tampered)} rebuilt it exactly as its buildinfo describes ({built}),"
                " but the repository serves other bytes: tampered; do not install; report to"
                " the repository's maintainers."
            )
        else:
            sentence = (
                f"Tampered: {_names(tampered)} rebuilt it exactly as its buildinfo describes"
                f" ({built}), but the repository serves sha256 {artifact.sha256}: the"
                " repository serves bytes that no rebuilder produced; do not install; report"
                " to the repository's maintainers."
            )
        reasons.insert(0, sentence)

    return QuorumResult(
        artifact=artifact,
        accepted=not reasons,
        reasons=tuple(reasons),
        rebuilders=tuple(results),
        threshold=policy.threshold,
        counted=counted,
        distinct_operators=distinct,
    )


def decide(artifact: Artifact, policy: Policy, evidence: Evidence, now: datetime) -> QuorumResult:
    """The whole decision. ``evidence`` maps rebuilder id to the envelopes it sent (or
    ``Unreachable``); entries for ids the policy does not trust are ignored, and a trusted
    rebuilder missing from ``evidence`` counts as not queried."""
    results = [assess(artifact, r, policy, evidence.get(r.id), now) for r in policy.rebuilders]
    return conclude(artifact, policy, results)


def is_settled(
    artifact: Artifact,
    policy: Policy,
    results: Iterable[RebuilderResult],
    pending: Collection[TrustedRebuilder],
) -> bool:
    """True when no answer from the ``pending`` rebuilders could change ``accepted``.

    A pending rebuilder may still agree (raising the count) or disagree (raising the
    mismatches): the outcome is settled only if it is the same in both extremes.
    """
    if artifact.sha256 in policy.distrust.digests:
        return True
    results = list(results)
    distinct = policy.require_distinct_operators
    rom = policy.reject_on_mismatch
    disagreeing = sum(1 for r in results if r.status == Status.DISAGREES)
    if rom > 0 and disagreeing >= rom:
        return True  # rejected whatever the others say
    agreeing = [r for r in results if r.status == Status.AGREES]
    best = len({r.operator for r in agreeing} | {r.operator for r in pending}) if distinct else (
        len(agreeing) + len(pending)
    )
    if best < policy.threshold:
        return True  # rejected even if every pending rebuilder agrees
    worst_ok = rom == 0 or disagreeing + len(pending) < rom
    return _counted(agreeing, distinct) >= policy.threshold and worst_ok
