"""The decision beyond the vector cases: oversized input, settling early, grouping a pool."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from tests.unit.verifier._vectors import VECTORS, load_case, make_vectors
from verifier.debian import DebIdentity
from verifier.decision import (
    NOT_QUERIED,
    Artifact,
    RebuilderResult,
    Status,
    Unreachable,
    assess,
    conclude,
    decide,
    is_settled,
)
from verifier.dsse import MAX_ENVELOPE_BYTES, Envelope, Signature, sign
from verifier.keys import Ed25519PublicKey
from verifier.policy import Policy
from verifier.sources import group_by_key
from verifier.statement import Digest, OutputVerdict, PackageIdentity, Subject

mv = make_vectors()
_, ARTIFACT, POLICY, _, NOW = load_case("quorum_reached")
A = (VECTORS / "attestations/agree-rb-alpha.json").read_bytes()
B = (VECTORS / "attestations/agree-rb-beta.json").read_bytes()
G_MISMATCH = (VECTORS / "attestations/mismatch-rb-gamma.json").read_bytes()


def statuses(evidence: dict[str, object], policy: Policy = POLICY) -> dict[str, str]:
    result = decide(ARTIFACT, policy, evidence, NOW)  # type: ignore[arg-type]
    return {r.id: str(r.status) for r in result.rebuilders}


def test_oversized_envelope_is_invalid_without_parsing() -> None:
    huge = A[:-2] + b" " * (MAX_ENVELOPE_BYTES) + b"}\n"
    result = decide(ARTIFACT, POLICY, {"rb-alpha": [huge], "rb-beta": [B]}, NOW)
    alpha = result.rebuilders[0]
    assert alpha.status == Status.INVALID
    assert "over the" in alpha.detail and "limit" in alpha.detail
    assert not result.accepted


def test_missing_rebuilder_is_not_queried_and_unknown_ids_are_ignored() -> None:
    got = statuses({"rb-alpha": [A], "rb-mallory": [B]})
    assert got["rb-alpha"] == "agrees"
    assert "rb-mallory" not in got
    result = decide(ARTIFACT, POLICY, {"rb-alpha": [A]}, NOW)
    assert result.rebuilders[1].detail == NOT_QUERIED


def test_junk_next_to_a_valid_attestation_is_noted_not_fatal() -> None:
    result = decide(ARTIFACT, POLICY, {"rb-alpha": [b"garbage", A], "rb-beta": [B]}, NOW)
    assert result.accepted
    assert "ignored 1 unusable envelope" in result.rebuilders[0].detail


def test_distinct_operators_not_required_counts_rebuilders() -> None:
    policy = dataclasses.replace(POLICY, require_distinct_operators=False)
    g = (VECTORS / "attestations/agree-rb-gamma.json").read_bytes()
    d = (VECTORS / "attestations/agree-rb-delta.json").read_bytes()
    assert decide(ARTIFACT, policy, {"rb-gamma": [g], "rb-delta": [d]}, NOW).accepted
    assert not decide(ARTIFACT, POLICY, {"rb-gamma": [g], "rb-delta": [d]}, NOW).accepted


def test_reject_on_mismatch_zero_ignores_disagreements() -> None:
    policy = dataclasses.replace(POLICY, reject_on_mismatch=0)
    result = decide(
        ARTIFACT, policy, {"rb-alpha": [A], "rb-beta": [B], "rb-gamma": [G_MISMATCH]}, NOW
    )
    assert result.accepted
    assert result.rebuilders[2].status == Status.DISAGREES


def test_disagreement_detail_carries_digest_and_report() -> None:
    result = decide(ARTIFACT, POLICY, {"rb-gamma": [G_MISMATCH]}, NOW)
    gamma = result.rebuilders[2]
    assert gamma.digest and gamma.digest != ARTIFACT.sha256
    assert gamma.report_url == "http://127.0.0.1:8403/v1/reports/7.html"
    assert gamma.digest in result.reasons[0] and gamma.report_url in result.reasons[0]


def test_revoking_a_mismatch_withdraws_the_disagreement() -> None:
    env = Envelope.from_bytes(G_MISMATCH)
    rev = sign(
        mv.revocation("rb-gamma", env, "host was misconfigured").to_bytes(),
        mv.private_key("rb-gamma"),
    )
    got = statuses({"rb-alpha": [A], "rb-beta": [B], "rb-gamma": [G_MISMATCH, rev.to_bytes()]})
    assert got["rb-gamma"] == "no_attestation"


def test_architecture_all_binary_is_built_by_any_architecture() -> None:
    ident = DebIdentity("hello-doc", "1.0-1", "all", "hello", "1.0-1")
    digest = Digest("e" * 64)
    artifact = Artifact(digest, ident)
    stmt = mv.rebuild(
        "rb-alpha",
        (Subject(ident.subject_name, digest),),
        package=PackageIdentity("debian", "hello", "1.0-1", "arm64"),
    )
    env = sign(stmt.to_bytes(), mv.private_key("rb-alpha")).to_bytes()
    result = decide(artifact, POLICY, {"rb-alpha": [env]}, NOW)
    assert result.rebuilders[0].status == Status.AGREES


def test_other_binary_of_the_same_source_says_nothing() -> None:
    stmt = mv.rebuild("rb-alpha", (Subject("hello-doc_1.0-1_all.deb", Digest("e" * 64)),))
    env = sign(stmt.to_bytes(), mv.private_key("rb-alpha")).to_bytes()
    assert statuses({"rb-alpha": [env]})["rb-alpha"] == "no_attestation"


def test_missing_rebuild_is_reported_but_not_counted() -> None:
    stmt = mv.rebuild(
        "rb-alpha",
        (Subject("hello-doc_1.0-1_all.deb", Digest("e" * 64)),),
        verdicts=(OutputVerdict(mv.DEB_NAME, "missing-rebuild", repository=ARTIFACT.sha256),),
    )
    env = sign(stmt.to_bytes(), mv.private_key("rb-alpha")).to_bytes()
    result = decide(ARTIFACT, POLICY, {"rb-alpha": [env]}, NOW)
    assert result.rebuilders[0].status == Status.NO_ATTESTATION
    assert "did not produce" in result.rebuilders[0].detail


def test_max_age_boundary_counts_an_attestation_exactly_max_age_old() -> None:
    policy = dataclasses.replace(POLICY, max_age_days=2)  # the vectors finished 2 days before NOW
    assert statuses({"rb-alpha": [A]}, policy)["rb-alpha"] == "agrees"
    later = NOW + timedelta(seconds=1)
    assert (
        decide(ARTIFACT, policy, {"rb-alpha": [A]}, later).rebuilders[0].status == "no_attestation"
    )


def test_rejection_says_what_would_make_it_pass() -> None:
    result = decide(ARTIFACT, POLICY, {"rb-alpha": [A], "rb-beta": Unreachable("timed out")}, NOW)
    (reason,) = result.reasons
    assert "Only 1 of the required 2 distinct operators" in reason
    assert "rb-beta (beta-corp) to become reachable" in reason
    assert "rb-delta (gamma-org)" in reason and "publish" in reason


# --- is_settled: an answer from a pending rebuilder cannot change the outcome ---------------


def r(rid: str, status: Status) -> RebuilderResult:
    t = POLICY.rebuilder(rid)
    assert t
    return RebuilderResult(t.id, t.operator, status, "")


SETTLED = {
    # name: (known results, pending ids, policy change, settled?)
    "nothing_known": ([], ["rb-alpha", "rb-beta", "rb-gamma", "rb-delta", "rb-epsilon"], {}, False),
    "quorum_but_mismatch_still_possible": (
        [r("rb-alpha", Status.AGREES), r("rb-beta", Status.AGREES)],
        ["rb-gamma"],
        {},
        False,
    ),
    "quorum_and_mismatches_ignored": (
        [r("rb-alpha", Status.AGREES), r("rb-beta", Status.AGREES)],
        ["rb-gamma"],
        {"reject_on_mismatch": 0},
        True,
    ),
    "quorum_and_too_few_pending_to_reject": (
        [r("rb-alpha", Status.AGREES), r("rb-beta", Status.AGREES)],
        ["rb-gamma"],
        {"reject_on_mismatch": 2},
        True,
    ),
    "quorum_and_enough_pending_to_reject": (
        [r("rb-alpha", Status.AGREES), r("rb-beta", Status.AGREES)],
        ["rb-gamma", "rb-delta"],
        {"reject_on_mismatch": 2},
        False,
    ),
    "mismatch_rejects_already": (
        [r("rb-gamma", Status.DISAGREES)],
        ["rb-alpha", "rb-beta"],
        {},
        True,
    ),
    "quorum_out_of_reach": (
        [
            r("rb-alpha", Status.UNREACHABLE),
            r("rb-beta", Status.INVALID),
            r("rb-epsilon", Status.NO_ATTESTATION),
        ],
        ["rb-gamma", "rb-delta"],
        {},
        True,
    ),  # gamma and delta share one operator
    "quorum_in_reach": (
        [r("rb-alpha", Status.AGREES), r("rb-beta", Status.NO_ATTESTATION)],
        ["rb-gamma"],
        {},
        False,
    ),
    "everything_answered": ([r("rb-alpha", Status.AGREES)], [], {}, True),
}


@pytest.mark.parametrize("name", sorted(SETTLED))
def test_is_settled(name: str) -> None:
    known, pending, change, expected = SETTLED[name]
    policy = dataclasses.replace(POLICY, **change)
    pend = [t for t in policy.rebuilders if t.id in pending]
    assert is_settled(ARTIFACT, policy, known, pend) is expected
    if expected:
        # Settled means: whatever the pending rebuilders answer, the outcome is the same.
        outcomes = set()
        for status in (Status.AGREES, Status.DISAGREES, Status.NO_ATTESTATION):
            rs = {x.id: x for x in known} | {t.id: r(t.id, status) for t in pend}
            filled = [
                rs.get(t.id) or assess(ARTIFACT, t, policy, None, NOW) for t in policy.rebuilders
            ]
            outcomes.add(conclude(ARTIFACT, policy, filled).accepted)
        assert len(outcomes) == 1


def test_distrusted_digest_is_settled_before_any_answer() -> None:
    policy = Policy.load(VECTORS / "policy-distrust-digest.toml")
    assert is_settled(ARTIFACT, policy, [], policy.rebuilders)


# --- grouping a flat pool by verifying key --------------------------------------------------


def test_group_by_key_uses_the_key_not_the_hint() -> None:
    env = Envelope.from_bytes(A)
    beta_kid = POLICY.rebuilder("rb-beta").keyid  # type: ignore[union-attr]
    lying_hint = Envelope(
        env.payload_type, env.payload, (Signature(env.signatures[0].sig, beta_kid),)
    )
    mallory = (VECTORS / "attestations/untrusted-claims-rb-beta.json").read_bytes()
    grouped, dropped = group_by_key([lying_hint.to_bytes(), B, B, mallory, b"{}"], POLICY)
    assert grouped["rb-alpha"] == [lying_hint.to_bytes()]
    assert grouped["rb-beta"] == [B]
    assert grouped["rb-gamma"] == []
    assert len(dropped) == 2
    result = decide(ARTIFACT, POLICY, grouped, NOW)
    assert result.accepted


def test_revocation_explains_better_than_junk() -> None:
    rev = (VECTORS / "attestations/revocation-rb-beta.json").read_bytes()
    result = decide(ARTIFACT, POLICY, {"rb-beta": [B, rev, b"junk"]}, NOW)
    beta = result.rebuilders[1]
    assert beta.status == Status.NO_ATTESTATION
    assert "revoked: built on a compromised host" in beta.detail
    assert "ignored 1 unusable envelope" in beta.detail


# --- cost: one Ed25519 verification per envelope in the normal case -------------------------


class CountingKey(Ed25519PublicKey):
    """Wraps a real public key and counts verifications (a unit-test double, pure logic)."""

    def __init__(self, inner: Ed25519PublicKey) -> None:
        self.inner = inner
        self.calls = 0

    def verify(self, signature: bytes, data: bytes) -> None:
        self.calls += 1
        self.inner.verify(signature, data)

    def public_bytes(self, encoding, format):  # type: ignore[no-untyped-def]
        return self.inner.public_bytes(encoding, format)

    def public_bytes_raw(self) -> bytes:
        return self.inner.public_bytes_raw()

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __copy__(self) -> CountingKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> CountingKey:
        return self


def test_one_verification_per_envelope_even_among_other_signatures() -> None:
    counting = {r.id: CountingKey(r.public_key) for r in POLICY.rebuilders}
    policy = dataclasses.replace(
        POLICY,
        rebuilders=tuple(
            dataclasses.replace(r, public_key=counting[r.id]) for r in POLICY.rebuilders
        ),
    )
    # rb-alpha's envelope also carries three other signatures placed before its own.
    stmt = Envelope.from_bytes(A).payload
    keys = [mv.private_key(n) for n in ("mallory", "rb-beta", "rb-gamma", "rb-alpha")]
    multi = sign(stmt, keys).to_bytes()
    result = decide(
        ARTIFACT, policy, {"rb-alpha": [multi, multi], "rb-beta": [B], "rb-gamma": []}, NOW
    )
    assert [str(r.status) for r in result.rebuilders[:3]] == ["agrees", "agrees", "no_attestation"]
    assert counting["rb-alpha"].calls == 1  # the keyid hint picks its signature first; dedup
    assert counting["rb-beta"].calls == 1
    assert counting["rb-gamma"].calls == 0


@pytest.mark.parametrize("reject_on_mismatch", [0, 1, 2])
@pytest.mark.parametrize("distinct", [True, False])
def test_is_settled_is_exact_over_every_completion(reject_on_mismatch: int, distinct: bool) -> None:
    """Exhaustively, on four rebuilders (two share an operator): settled iff every way the
    pending rebuilders could answer gives the same outcome."""
    import itertools

    policy = dataclasses.replace(
        POLICY,
        rebuilders=POLICY.rebuilders[:4],
        reject_on_mismatch=reject_on_mismatch,
        require_distinct_operators=distinct,
    )
    kinds = (Status.AGREES, Status.DISAGREES, Status.NO_ATTESTATION)
    ids = [t.id for t in policy.rebuilders]
    for pending_mask in range(16):
        pending = [t for i, t in enumerate(policy.rebuilders) if pending_mask >> i & 1]
        known_ids = [rid for i, rid in enumerate(ids) if not pending_mask >> i & 1]
        for known_statuses in itertools.product(kinds, repeat=len(known_ids)):
            known = [r(rid, s) for rid, s in zip(known_ids, known_statuses, strict=True)]
            outcomes = set()
            for rest in itertools.product(kinds, repeat=len(pending)):
                filled = {x.id: x for x in known} | {
                    t.id: r(t.id, s) for t, s in zip(pending, rest, strict=True)
                }
                outcomes.add(conclude(ARTIFACT, policy, [filled[i] for i in ids]).accepted)
            settled = is_settled(ARTIFACT, policy, known, pending)
            assert settled is (len(outcomes) == 1), (pending_mask, known_statuses)
