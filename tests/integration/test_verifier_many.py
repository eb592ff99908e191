"""Many artifacts against every rebuilder at once (``verifier.many``): one batch request per
rebuilder, per-artifact GETs to a node without the batch endpoint, and a lying, failing or
stalled rebuilder costing only its own vote; then ``verifier check`` against real nodes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

import verifier.many
from tests.integration._debs import make_deb
from tests.integration._nodes import policy_toml, real_nodes
from tests.integration._verifier_servers import Behaviour, serving
from tests.integration.test_verifier_online import FAST, IDS, att, policy_for
from tests.unit.verifier._vectors import VECTORS, load_case
from verifier.cli import main
from verifier.debian import read_deb_identity, sha256_file
from verifier.decision import NOT_WAITED_FOR, Artifact, QuorumResult, Status
from verifier.many import BATCH_PATH, check_many_online
from verifier.sources import ClientConfig, open_fetcher

_, ARTIFACT, _, _, NOW = load_case("quorum_reached")
OTHER_DEB = VECTORS / "debs/other/hello_1.0-1_amd64.deb"
OTHER = Artifact(sha256_file(OTHER_DEB), read_deb_identity(OTHER_DEB))


def honest(rid: str, **kw: object) -> Behaviour:
    return Behaviour(envelopes=[att(f"agree-{rid}")], batch=True, **kw)  # type: ignore[arg-type]


async def many(behaviours: list[Behaviour], artifacts: list[Artifact],
               config: ClientConfig = FAST, **change: object) -> list[QuorumResult]:
    async with serving(behaviours) as urls, open_fetcher() as fetcher:
        policy = policy_for(urls, **change)
        return await check_many_online(artifacts, policy, fetcher, NOW, config)


def statuses(result: QuorumResult) -> dict[str, tuple[Status, str]]:
    return {r.id: (r.status, r.detail) for r in result.rebuilders}


async def test_one_batch_per_rebuilder_decides_each_artifact() -> None:
    behaviours = [honest(rid) for rid in IDS]
    good, other = await many(behaviours, [ARTIFACT, OTHER])
    assert good.accepted and good.artifact == ARTIFACT
    assert {s for s, _ in statuses(good).values()} == {Status.AGREES}
    # The rebuilders reproduced other bytes under that name: the second one is refused.
    assert not other.accepted and other.artifact == OTHER
    assert {s for s, _ in statuses(other).values()} == {Status.DISAGREES}
    assert [b.requests for b in behaviours] == [[BATCH_PATH]] * 3


async def test_a_node_without_the_batch_is_asked_per_artifact() -> None:
    old = Behaviour(envelopes=[att("agree-rb-alpha")])  # no batch route: 404
    behaviours = [old, honest("rb-beta"), honest("rb-gamma")]
    good, other = await many(behaviours, [ARTIFACT, OTHER])
    assert good.accepted and statuses(good)["rb-alpha"][0] == Status.AGREES
    assert statuses(other)["rb-alpha"][0] == Status.DISAGREES
    assert sorted(old.requests) == sorted(
        f"/v1/{q}" for a in (ARTIFACT, OTHER) for q in
        (f"attestations?digest=sha256:{a.sha256}", "packages/debian/hello/1.0-1"))
    assert behaviours[1].requests == [BATCH_PATH]


def _results(*digests: str, attestations: object = ()) -> bytes:
    return json.dumps({"results": [{"digest": f"sha256:{d}", "attestations": attestations}
                                   for d in digests]}).encode()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_results(ARTIFACT.sha256, ARTIFACT.sha256), "answered another digest"),
        (_results(ARTIFACT.sha256), "one result per query"),
        (_results(OTHER.sha256, ARTIFACT.sha256), "answered another digest"),
        (_results(ARTIFACT.sha256, OTHER.sha256, attestations={"a": 1}),
         "bad attestations list"),
        (b"{not json", "bad response to the batch query"),
        (b'{"results": "x"}', "one result per query"),
    ],
    ids=["duplicated", "too-few", "reordered", "not-a-list", "not-json", "not-results"],
)
async def test_a_lying_batch_answer_costs_only_that_vote(body: bytes, needle: str) -> None:
    liar = Behaviour(envelopes=[att("agree-rb-gamma")], batch=True, batch_body=body)
    good, other = await many([honest("rb-alpha"), honest("rb-beta"), liar], [ARTIFACT, OTHER])
    assert good.accepted  # 2 of 2 required
    for result in (good, other):
        status, detail = statuses(result)["rb-gamma"]
        assert status == Status.INVALID
        assert "bad response to the batch query" in detail and needle in detail


async def test_a_failing_batch_is_unreachable_for_every_artifact() -> None:
    broken = Behaviour(envelopes=[att("agree-rb-gamma")], batch=True, status=500)
    good, other = await many([honest("rb-alpha"), honest("rb-beta"), broken], [ARTIFACT, OTHER])
    assert good.accepted
    for result in (good, other):
        assert statuses(result)["rb-gamma"] == (
            Status.UNREACHABLE, f"HTTP status 500 (POST {BATCH_PATH})")


async def test_a_stalled_rebuilder_is_not_waited_for_once_every_outcome_is_settled() -> None:
    config = ClientConfig(timeout=30, settle_grace=0.2, max_response_bytes=256 * 1024)
    stalled = Behaviour(envelopes=[att("agree-rb-gamma")], batch=True, stall=True)
    # Mismatches tolerated: two agreements settle the first, two disagreements the second.
    good, other = await many([honest("rb-alpha"), honest("rb-beta"), stalled],
                             [ARTIFACT, OTHER], config, reject_on_mismatch=0)
    assert good.accepted and not other.accepted
    for result in (good, other):
        assert statuses(result)["rb-gamma"] == (Status.NO_ATTESTATION, NOT_WAITED_FOR)


async def test_batches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verifier.many, "BATCH_SIZE", 2)
    behaviours = [honest(rid) for rid in IDS]
    results = await many(behaviours, [ARTIFACT, OTHER, ARTIFACT, OTHER, ARTIFACT])
    assert [r.accepted for r in results] == [True, False, True, False, True]
    assert [b.requests for b in behaviours] == [[BATCH_PATH] * 3] * 3


# --- `verifier check` against real nodes ---------------------------------------------------


async def test_verifier_check_asks_each_real_node_once(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    debs = []
    for i in range(12):
        path = tmp_path / "debs" / f"pkg{i}_1.0-1_amd64.deb"
        path.parent.mkdir(exist_ok=True)
        make_deb(path, f"pkg{i}", "1.0-1", "amd64")
        debs.append(path)
    stranger = tmp_path / "stranger_1.0_amd64.deb"
    make_deb(stranger, "stranger", "1.0", "amd64")
    async with real_nodes(tmp_path, debs, 3) as (nodes, seen):
        policy = tmp_path / "policy.toml"
        policy.write_text(policy_toml(nodes, threshold=2))
        argv = ["check", "--json", "--policy", str(policy), *map(str, debs)]
        code = await asyncio.to_thread(main, argv)
        docs = json.loads(capsys.readouterr().out)
        assert code == 0, docs
        assert [d["artifact"]["path"] for d in docs] == list(map(str, debs))
        assert all(r["status"] == "agrees" for d in docs for r in d["rebuilders"])
        assert seen == [[f"POST {BATCH_PATH}"]] * 3
        # One the nodes never saw is refused, and the batch said so for each of them.
        code = await asyncio.to_thread(main, ["check", "--json", "--policy", str(policy),
                                              str(debs[0]), str(stranger)])
        first, last = json.loads(capsys.readouterr().out)
        assert code == 1 and first["accepted"] and not last["accepted"]
        assert {r["status"] for r in last["rebuilders"]} == {"no_attestation"}
        digest = hashlib.sha256(stranger.read_bytes()).hexdigest()
        assert last["artifact"]["sha256"] == digest
