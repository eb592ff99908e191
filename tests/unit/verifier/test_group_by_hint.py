"""Attributing a coordinator's batch answer by keyid hint (verifier.sources.group_by_hint).

The hint only saves a verification: an envelope filed under the wrong rebuilder by a lying hint
is ignored by the decision, never counted for the rebuilder the hint names.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.unit.verifier._vectors import VECTORS
from verifier.debian import read_deb_identity, sha256_file
from verifier.decision import Artifact, Status, decide
from verifier.policy import Policy
from verifier.sources import group_by_hint, group_by_key

POLICY = Policy.load(VECTORS / "policy.toml")
DEB = VECTORS / "debs/hello_1.0-1_amd64.deb"
ALPHA = (VECTORS / "attestations/agree-rb-alpha.json").read_bytes().strip()
BETA = (VECTORS / "attestations/agree-rb-beta.json").read_bytes().strip()
NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)


def _with_hint(raw: bytes, keyid: str | None) -> bytes:
    d = json.loads(raw)
    for s in d["signatures"]:
        if keyid is None:
            s.pop("keyid", None)
        else:
            s["keyid"] = keyid
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


def test_honest_hints_attribute_like_verifying() -> None:
    by_hint = group_by_hint([ALPHA, BETA, ALPHA], POLICY)
    by_key, _ = group_by_key([ALPHA, BETA], POLICY)
    assert by_hint == by_key


def test_missing_hint_falls_back_to_verifying() -> None:
    grouped = group_by_hint([_with_hint(ALPHA, None)], POLICY)
    assert [rid for rid, envs in grouped.items() if envs] == ["rb-alpha"]


def test_a_lying_hint_never_counts_for_the_rebuilder_it_names() -> None:
    gamma = POLICY.rebuilder("rb-gamma")
    assert gamma is not None
    forged = _with_hint(ALPHA, gamma.keyid)  # rb-alpha's envelope claiming to be rb-gamma's
    grouped = group_by_hint([forged, BETA], POLICY)
    assert grouped["rb-gamma"] == [forged] and grouped["rb-alpha"] == []
    artifact = Artifact(sha256_file(DEB), read_deb_identity(DEB))
    result = decide(artifact, POLICY, grouped, NOW)
    by_id = {r.id: r for r in result.rebuilders}
    assert by_id["rb-gamma"].status != Status.AGREES
    assert "does not verify under keyid" in by_id["rb-gamma"].detail
    assert not result.accepted  # only rb-beta's agreement counts: 1 of 2
