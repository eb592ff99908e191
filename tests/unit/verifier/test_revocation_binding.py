"""A revocation names the signed statement: no change outside the signature revives it.

Before revocation/v2 a revocation named ``Envelope.digest()``, which covers the unsigned keyid
hints and the signature list; each mutation below gave the revoked statement a new digest and
it counted again.
"""

from __future__ import annotations

import pytest

from tests.unit.verifier._mutations import MUTATIONS, mutate
from tests.unit.verifier._vectors import VECTORS, load_case, make_vectors
from verifier.decision import Status, decide
from verifier.dsse import Envelope, sign
from verifier.sources import check_offline

mv = make_vectors()
_, ARTIFACT, POLICY, _, NOW = load_case("quorum_reached")
A = (VECTORS / "attestations/agree-rb-alpha.json").read_bytes().strip()
B = (VECTORS / "attestations/agree-rb-beta.json").read_bytes().strip()
REV_V2 = (VECTORS / "attestations/revocation-rb-beta.json").read_bytes().strip()
REV_V1 = (VECTORS / "attestations/revocation-v1-rb-beta.json").read_bytes().strip()


@pytest.mark.parametrize("how", sorted(MUTATIONS))
def test_mutation_still_verifies_and_changes_the_envelope_digest(how: str) -> None:
    mutated = Envelope.from_bytes(mutate(B, how))
    original = Envelope.from_bytes(B)
    assert mutate(B, how) != B
    if how != "base64-reencoded":  # the digest is of the parsed fields, re-encoded canonically
        assert mutated.digest() != original.digest()
    assert mutated.payload_digest() == original.payload_digest()
    assert mutated.verify(mv.private_key("rb-beta").public_key())


@pytest.mark.parametrize("revocation", [REV_V2, REV_V1], ids=["v2", "v1"])
@pytest.mark.parametrize("how", sorted(MUTATIONS))
def test_mutated_revoked_attestation_stays_revoked_offline(how: str, revocation: bytes) -> None:
    evidence = {"rb-alpha": [A], "rb-beta": [mutate(B, how), revocation]}
    result = decide(ARTIFACT, POLICY, evidence, NOW)
    beta = result.rebuilders[1]
    assert beta.status == Status.NO_ATTESTATION, beta.detail
    assert "revoked: built on a compromised host" in beta.detail
    assert not result.accepted
    # the same through the flat pool of ``verifier check --attestations``
    pooled = check_offline(ARTIFACT, POLICY, [A, mutate(B, how), revocation], NOW)
    assert pooled.rebuilders[1].status == Status.NO_ATTESTATION


@pytest.mark.parametrize("how", sorted(MUTATIONS))
def test_mutated_revoked_attestation_next_to_the_original_stays_revoked(how: str) -> None:
    evidence = {"rb-alpha": [A], "rb-beta": [mutate(B, how), B, REV_V1]}
    assert decide(ARTIFACT, POLICY, evidence, NOW).rebuilders[1].status == Status.NO_ATTESTATION


def test_revocation_of_another_statement_revokes_nothing() -> None:
    other = sign(
        mv.revocation("rb-beta", Envelope.from_bytes(A), "not mine").to_bytes(),
        mv.private_key("rb-beta"),
    ).to_bytes()
    result = decide(ARTIFACT, POLICY, {"rb-alpha": [A], "rb-beta": [B, other]}, NOW)
    assert result.accepted


def test_revocation_v2_names_the_payload_digest_and_v1_is_marked_legacy() -> None:
    from verifier.statement import RevocationStatement, parse_statement

    v2 = parse_statement(Envelope.from_bytes(REV_V2).payload)
    v1 = parse_statement(Envelope.from_bytes(REV_V1).payload)
    assert isinstance(v2, RevocationStatement) and isinstance(v1, RevocationStatement)
    assert v2.revoked == Envelope.from_bytes(B).payload_digest() and not v2.legacy
    assert v1.revoked == Envelope.from_bytes(B).digest() and v1.legacy
