"""Publication is at least once (a node killed between the broker's acknowledgement and marking
its outbox sends an envelope again; the coordinator and the node both return what MQTT already
delivered): the verifier's decision counts rebuilders, so a repeated envelope adds nothing."""

from __future__ import annotations

import dataclasses

from tests.unit.verifier._vectors import VECTORS, load_case
from verifier.decision import Status, decide

_, ARTIFACT, POLICY, _, NOW = load_case("quorum_reached")
A = (VECTORS / "attestations/agree-rb-alpha.json").read_bytes()
B = (VECTORS / "attestations/agree-rb-beta.json").read_bytes()
G_MISMATCH = (VECTORS / "attestations/mismatch-rb-gamma.json").read_bytes()


def test_one_rebuilders_envelope_delivered_many_times_is_not_a_quorum() -> None:
    assert POLICY.threshold == 2
    result = decide(ARTIFACT, POLICY, {"rb-alpha": [A] * 5}, NOW)
    assert not result.accepted
    assert [str(r.status) for r in result.rebuilders[:2]] == ["agrees", "no_attestation"]


def test_repeated_envelopes_next_to_a_quorum_change_nothing() -> None:
    once = decide(ARTIFACT, POLICY, {"rb-alpha": [A], "rb-beta": [B]}, NOW)
    again = decide(ARTIFACT, POLICY, {"rb-alpha": [A, A, A], "rb-beta": [B, B]}, NOW)
    assert once.accepted and again.accepted
    assert [(r.id, r.status, r.detail) for r in again.rebuilders] == [
        (r.id, r.status, r.detail) for r in once.rebuilders]


def test_a_repeated_mismatch_is_one_disagreement() -> None:
    policy = dataclasses.replace(POLICY, reject_on_mismatch=2)
    result = decide(ARTIFACT, policy,
                    {"rb-alpha": [A], "rb-beta": [B], "rb-gamma": [G_MISMATCH] * 4}, NOW)
    assert result.rebuilders[2].status == Status.DISAGREES
    assert result.accepted  # one disagreeing rebuilder, however often its envelope arrived
