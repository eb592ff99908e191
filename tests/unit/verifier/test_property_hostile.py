"""Property: whatever one trusted rebuilder sends, offline, the honest rebuilders' results and
the decision they carry do not change, and no exception escapes (issue 11)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.verifier._hostile import envelope_items
from tests.unit.verifier._vectors import VECTORS, load_case, make_vectors
from verifier.decision import Status, decide
from verifier.dsse import Envelope
from verifier.sources import check_offline

mv = make_vectors()
_, ARTIFACT, POLICY, _, NOW = load_case("quorum_reached")
A = (VECTORS / "attestations/agree-rb-alpha.json").read_bytes().strip()
B = (VECTORS / "attestations/agree-rb-beta.json").read_bytes().strip()
G = (VECTORS / "attestations/agree-rb-gamma.json").read_bytes().strip()
STATEMENT = json.loads(Envelope.from_bytes(G).payload)
GAMMA = mv.private_key("rb-gamma")
BASELINE = decide(ARTIFACT, POLICY, {"rb-alpha": [A], "rb-beta": [B]}, NOW)

HOSTILE = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _honest_unchanged(result) -> None:  # type: ignore[no-untyped-def]
    assert result.rebuilders[:2] == BASELINE.rebuilders[:2]
    gamma = result.rebuilders[2]
    assert isinstance(gamma.status, Status) and gamma.detail
    # gamma may legitimately disagree (it holds its key); nothing else can reject
    assert result.accepted or gamma.status == Status.DISAGREES, result.reasons


@HOSTILE
@given(st.lists(envelope_items(GAMMA, STATEMENT, G), min_size=1, max_size=4))
def test_hostile_rebuilder_evidence_never_changes_the_honest_ones(items: list[bytes]) -> None:
    result = decide(ARTIFACT, POLICY, {"rb-alpha": [A], "rb-beta": [B], "rb-gamma": items}, NOW)
    _honest_unchanged(result)


@HOSTILE
@given(st.lists(envelope_items(GAMMA, STATEMENT, G), min_size=1, max_size=4))
def test_hostile_items_in_an_attestation_pool_never_change_the_honest_ones(
    items: list[bytes],
) -> None:
    result = check_offline(ARTIFACT, POLICY, [*items, A, B], NOW)
    _honest_unchanged(result)
