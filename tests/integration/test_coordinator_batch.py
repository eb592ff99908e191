"""``POST /v1/attestations:batch`` on a real coordinator, and the verifier's use of it.

The coordinator's store is filled the way production fills it (catch-up from nodes serving
genuine signed envelopes); the verifier's batched decisions must equal its one-at-a-time ones.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from coordinator.app import CATCHUP, STORE, create_app
from coordinator.batch import MAX_QUERIES
from coordinator.config import load_config
from tests.support import free_port
from tests.unit.coordinator.factory import Signer, StandInNode, coordinator_toml, serving, sha
from verifier.debian import DebIdentity
from verifier.decision import Artifact
from verifier.keys import load_public_key
from verifier.policy import Policy, TrustedRebuilder
from verifier.sources import check_many_via_coordinator, check_via_coordinator, open_fetcher
from verifier.statement import Digest

N = 12


def _artifact(i: int) -> Artifact:
    return Artifact(Digest(sha(f"deb{i}")), DebIdentity(f"p{i}", "1.0-1", "amd64", f"p{i}",
                                                        "1.0-1"))


@pytest.fixture
async def coordinator(tmp_path: Path) -> Any:
    signers = [Signer(f"rb-{c}") for c in "abc"]
    nodes = []
    for s in signers:
        envs = []
        for i in range(N):
            digest = sha(f"deb{i}")
            if s.id == "rb-c" and i == 3:  # one rebuilder got other bytes for p3
                envs.append(s.rebuild(f"p{i}", "1.0-1", {f"p{i}_1.0-1_amd64.deb": sha("evil")},
                                      upstream={f"p{i}_1.0-1_amd64.deb": digest}))
            else:
                envs.append(s.rebuild(f"p{i}", "1.0-1", {f"p{i}_1.0-1_amd64.deb": digest}))
        if s.id == "rb-b":
            envs.append(s.revoke(envs[5], "toolchain compromised"))
        nodes.append(StandInNode(s, envelopes=envs))
    async with serving(nodes[0].app()) as u0, serving(nodes[1].app()) as u1, \
            serving(nodes[2].app()) as u2:
        for s, u in zip(signers, (u0, u1, u2), strict=True):
            s.url = u
        port = free_port()
        app = create_app(load_config(coordinator_toml(tmp_path, signers, None, port)))
        async with serving(app, port) as base:
            await app[CATCHUP].round()
            assert await app[STORE].count_for_rebuilder("rb-b") == N + 1
            policy = Policy(threshold=2, require_distinct_operators=False, rebuilders=tuple(
                TrustedRebuilder(id=s.id, operator=s.operator, url=s.url,
                                 public_key=load_public_key(s.public_pem)) for s in signers))
            yield base, policy


async def _post(base: str, body: bytes, content_type: str = "application/json"
                ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{base}/v1/attestations:batch", data=body,
            headers={"Content-Type": content_type}) as r:
        return r.status, await r.json()


def _queries(artifacts: list[Artifact]) -> bytes:
    return json.dumps({"queries": [
        {"digest": f"sha256:{a.sha256}", "package": {"ecosystem": "debian",
                                                     "name": a.identity.source,
                                                     "version": a.identity.source_version}}
        for a in artifacts]}).encode()


async def test_batch_answers_each_query_in_order(coordinator: Any) -> None:
    base, _ = coordinator
    artifacts = [_artifact(i) for i in (7, 3, 5)]
    status, doc = await _post(base, _queries(artifacts))
    assert status == 200, doc
    assert [r["digest"] for r in doc["results"]] == [f"sha256:{a.sha256}" for a in artifacts]
    counts = [len(r["attestations"]) for r in doc["results"]]
    # p7: three agreeing; p3: two agreeing plus rb-c's mismatch (found by package);
    # p5: three agreeing plus rb-b's revocation.
    assert counts == [3, 3, 4]
    assert {r["id"] for r in doc["rebuilders"]} == {"rb-a", "rb-b", "rb-c"}


async def test_batched_decisions_equal_one_at_a_time(coordinator: Any) -> None:
    base, policy = coordinator
    artifacts = [_artifact(i) for i in range(N)] + [_artifact(99)]  # p99: nobody has it
    now = datetime.now(UTC)
    async with open_fetcher() as fetcher:
        batched = await check_many_via_coordinator(artifacts, policy, fetcher, base, now)
        single = [await check_via_coordinator(a, policy, fetcher, base, now) for a in artifacts]
    assert [r.to_dict() for r in batched] == [r.to_dict() for r in single]
    accepted = [r.accepted for r in batched]
    assert accepted[3] is False and accepted[N] is False  # the disagreement, the unknown one
    assert accepted[5] is True  # revoked by rb-b, still 2 of 3 (rb-a, rb-c)
    assert sum(accepted) == N - 1


async def test_coordinator_without_batch_is_asked_per_artifact(coordinator: Any) -> None:
    base, policy = coordinator
    # A proxy that answers 404 to the batch and forwards everything else: an older coordinator.
    async def forward(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as s, s.get(f"{base}{request.path_qs}") as r:
            return web.Response(body=await r.read(), status=r.status,
                                content_type="application/json")

    old = web.Application()
    old.router.add_get("/{tail:.*}", forward)
    async with serving(old) as old_base, open_fetcher() as fetcher:
        now = datetime.now(UTC)
        via_old = await check_many_via_coordinator([_artifact(1), _artifact(3)], policy,
                                                   fetcher, old_base, now)
    assert [r.accepted for r in via_old] == [True, False]


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b"not json", 400, "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "not JSON"),
    (b'{"queries": []}', 400, f"give 1 to {MAX_QUERIES} queries"),
    (b'{"queries": [], "more": 1}', 400, 'must be {"queries"'),
    (json.dumps({"queries": [{"digest": "sha256:" + "A" * 64, "package": {
        "ecosystem": "debian", "name": "p", "version": "1"}}]}).encode(), 400, "64 lowercase"),
    (json.dumps({"queries": [{"digest": "sha256:" + "a" * 64, "package": {
        "ecosystem": "pypi", "name": "p", "version": "1"}}]}).encode(), 400, "ecosystem"),
    (json.dumps({"queries": [{"digest": "sha256:" + "a" * 64, "package": {
        "ecosystem": "debian", "name": "../x", "version": "1"}}]}).encode(), 400, "name"),
    (json.dumps({"queries": [{"digest": "sha256:" + "a" * 64, "package": {
        "ecosystem": "debian", "name": "p", "version": "1"}}] * (MAX_QUERIES + 1)}).encode(),
     400, f"not {MAX_QUERIES + 1}"),
    (b" " * (600 * 1024), 413, "over"),
])
async def test_bad_batches_are_refused_by_name(coordinator: Any, body: bytes, status: int,
                                               needle: str) -> None:
    base, _ = coordinator
    got, doc = await _post(base, body)
    assert got == status, doc
    assert needle in doc["error"]


async def test_batch_wants_json(coordinator: Any) -> None:
    base, _ = coordinator
    got, doc = await _post(base, b"digest=x", "application/x-www-form-urlencoded")
    assert got == 415 and "application/json" in doc["error"]
