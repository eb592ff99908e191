"""The committed vectors regenerate byte for byte, and every named decision case holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.verifier._vectors import VECTORS, case_names, load_case, make_vectors
from verifier.debian import sha256_file
from verifier.decision import decide


def test_vectors_regenerate_identically(tmp_path: Path) -> None:
    written = make_vectors().write(tmp_path)
    fresh = {p.relative_to(tmp_path) for p in written}
    committed = {
        p.relative_to(VECTORS) for p in VECTORS.rglob("*") if p.is_file() and p.name != "README.md"
    }
    assert fresh == committed, "run `make vectors` and commit the result"
    for rel in sorted(fresh):
        assert (tmp_path / rel).read_bytes() == (VECTORS / rel).read_bytes(), f"{rel} differs"


def test_at_least_the_named_attacks_are_covered() -> None:
    expected = {
        "tampered_payload",
        "untrusted_key",
        "same_envelope_twice",
        "one_operator_two_rebuilders",
        "right_digest_other_package_name",
        "disagreement",
        "revoked_attestation",
        "distrusted_key",
        "distrusted_digest",
        "expired_attestation",
        "malformed_envelope",
        "failed_build_not_counted",
        "unreachable_rebuilder",
    }
    assert expected <= set(case_names())


@pytest.mark.parametrize("name", case_names())
def test_decision_case(name: str) -> None:
    c, artifact, policy, evidence, now = load_case(name)
    assert sha256_file(VECTORS / c["artifact"]["deb"]) == artifact.sha256
    result = decide(artifact, policy, evidence, now)
    expected = c["expected"]
    by_id = {r.id: r for r in result.rebuilders}
    assert [r.id for r in result.rebuilders] == [r.id for r in policy.rebuilders]
    for rid, status in expected["statuses"].items():
        assert by_id[rid].status == status, (rid, by_id[rid].detail)
    for rid, fragment in expected.get("details_contain", {}).items():
        assert fragment in by_id[rid].detail, (rid, by_id[rid].detail)
    if "reason_contains" in expected:
        assert any(expected["reason_contains"] in r for r in result.reasons), result.reasons
    assert result.accepted is expected["accepted"], result.reasons
    # A rejection always says why; an acceptance has nothing to complain about.
    assert bool(result.reasons) is not result.accepted
