"""The online verifier against real aiohttp servers on loopback: honest, lying, slow, oversized
and absent rebuilders, early stopping, and a coordinator that is not trusted."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import pytest

from tests.integration._verifier_servers import Behaviour, serving
from tests.support import free_port
from tests.unit.verifier._vectors import VECTORS, load_case, make_vectors
from verifier.decision import NOT_WAITED_FOR, Status
from verifier.policy import Policy, TrustedRebuilder
from verifier.sources import (
    ClientConfig,
    FetcherInterface,
    check_many_via_coordinator,
    check_online,
    check_via_coordinator,
    open_fetcher,
)

mv = make_vectors()
_, ARTIFACT, _, _, NOW = load_case("quorum_reached")
IDS = ["rb-alpha", "rb-beta", "rb-gamma"]
OPS = {"rb-alpha": "alpha-university", "rb-beta": "beta-corp", "rb-gamma": "gamma-org"}
FAST = ClientConfig(timeout=1.0, max_response_bytes=256 * 1024)


def att(name: str) -> bytes:
    return (VECTORS / f"attestations/{name}.json").read_bytes().strip()


def policy_for(urls: Sequence[str], **change: object) -> Policy:
    rebuilders = tuple(
        TrustedRebuilder(rid, OPS[rid], url, mv.private_key(rid).public_key())
        for rid, url in zip(IDS, urls, strict=True)
    )
    return dataclasses.replace(Policy(threshold=2, rebuilders=rebuilders), **change)


async def run(behaviours: list[Behaviour], config: ClientConfig = FAST, **change: object):  # type: ignore[no-untyped-def]
    async with serving(behaviours) as urls, open_fetcher() as fetcher:
        policy = policy_for(urls, **change)
        t0 = time.monotonic()
        result = await check_online(ARTIFACT, policy, fetcher, NOW, config)
        return result, time.monotonic() - t0


def status(result, rid: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    (r,) = [x for x in result.rebuilders if x.id == rid]
    return str(r.status), r.detail


async def test_honest_rebuilders_reach_the_quorum() -> None:
    gamma = Behaviour(envelopes=[att("agree-rb-gamma")])
    alpha, beta = (
        Behaviour(envelopes=[att("agree-rb-alpha")]),
        Behaviour(envelopes=[att("agree-rb-beta")]),
    )
    result, _ = await run([alpha, beta, gamma])
    assert result.accepted, result.reasons
    assert [str(r.status) for r in result.rebuilders] == ["agrees"] * 3
    # Both queries went out, with the source version escaped in the path.
    assert any(q.startswith("/v1/attestations?digest=sha256:") for q in alpha.requests)
    assert "/v1/packages/debian/hello/1.0-1" in alpha.requests


async def test_disagreement_is_found_through_the_packages_query() -> None:
    behaviours = [
        Behaviour(envelopes=[att("agree-rb-alpha")]),
        Behaviour(envelopes=[att("agree-rb-beta")]),
        Behaviour(envelopes=[att("mismatch-rb-gamma")]),
    ]
    result, _ = await run(behaviours)
    assert not result.accepted
    assert status(result, "rb-gamma")[0] == "disagrees"


async def test_lying_rebuilder_serving_another_keys_envelopes_is_invalid() -> None:
    behaviours = [
        Behaviour(envelopes=[att("agree-rb-alpha")]),
        Behaviour(envelopes=[att("agree-rb-alpha"), att("untrusted-claims-rb-beta")]),
        Behaviour(envelopes=[att("tampered-rb-beta")]),
    ]
    result, _ = await run(behaviours)
    assert not result.accepted
    assert status(result, "rb-alpha")[0] == "agrees"
    assert status(result, "rb-beta")[0] == "invalid"
    assert status(result, "rb-gamma")[0] == "invalid"


async def test_slow_rebuilder_times_out_as_unreachable() -> None:
    behaviours = [
        Behaviour(envelopes=[att("agree-rb-alpha")]),
        Behaviour(envelopes=[att("agree-rb-beta")]),
        Behaviour(stall=True),
    ]
    config = ClientConfig(timeout=0.5)
    result, elapsed = await run(behaviours, config)
    # reject_on_mismatch = 1: gamma could still disagree, so the client must wait for it.
    assert status(result, "rb-gamma")[0] == "unreachable"
    assert "within 0.5s" in status(result, "rb-gamma")[1]
    assert result.accepted
    assert 0.5 <= elapsed < 5


async def test_early_stop_once_the_outcome_cannot_change() -> None:
    behaviours = [
        Behaviour(envelopes=[att("agree-rb-alpha")]),
        Behaviour(envelopes=[att("agree-rb-beta")]),
        Behaviour(stall=True),
    ]
    # With mismatches tolerated, two agreements settle it: the stalled node is waited for
    # only the grace period, then shown as not waited for.
    result, elapsed = await run(behaviours, ClientConfig(timeout=30, settle_grace=0.3),
                                reject_on_mismatch=0)
    assert result.accepted
    assert status(result, "rb-gamma") == ("no_attestation", NOT_WAITED_FOR)
    assert 0.3 <= elapsed < 5


async def test_prompt_answers_are_all_shown_even_once_settled() -> None:
    """The explanation is complete and the same every run: a rebuilder that answers promptly
    after the outcome is settled is still shown as what it is, not as not queried."""
    behaviours = [
        Behaviour(envelopes=[att("agree-rb-alpha")]),
        Behaviour(envelopes=[att("agree-rb-beta")]),
        Behaviour(envelopes=[att("mismatch-rb-gamma")], delay=0.1),
    ]
    for _ in range(3):
        result, _ = await run(behaviours, ClientConfig(timeout=30), reject_on_mismatch=0)
        assert result.accepted
        assert status(result, "rb-gamma")[0] == "disagrees"


async def test_early_stop_on_a_disagreement() -> None:
    behaviours = [
        Behaviour(stall=True),
        Behaviour(stall=True),
        Behaviour(envelopes=[att("mismatch-rb-gamma")]),
    ]
    result, elapsed = await run(behaviours, ClientConfig(timeout=30, settle_grace=0.3))
    assert not result.accepted
    assert status(result, "rb-gamma")[0] == "disagrees"
    assert status(result, "rb-alpha")[1] == NOT_WAITED_FOR
    assert elapsed < 5
    # The advice does not send the installer to wait for rebuilders that cannot change it.
    assert "wait for rb-alpha" not in " ".join(result.reasons)


async def test_oversized_response_is_invalid_not_fatal() -> None:
    behaviours = [
        Behaviour(envelopes=[att("agree-rb-alpha")]),
        Behaviour(envelopes=[att("agree-rb-beta")]),
        Behaviour(oversize=1024 * 1024),
    ]
    result, _ = await run(behaviours)
    assert result.accepted
    gamma = status(result, "rb-gamma")
    assert gamma[0] == "invalid" and "byte limit" in gamma[1]


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        pytest.param(Behaviour(status=500), ("unreachable", "HTTP status 500"), id="server_error"),
        pytest.param(Behaviour(status=404), ("invalid", "does not look like a rebuilder"),
                     id="not_a_rebuilder"),
        pytest.param(Behaviour(body=b"{nope"), ("invalid", "not valid JSON"), id="malformed_json"),
        pytest.param(
            Behaviour(body=b'{"attestations": 3}'),
            ("invalid", "attestations list"),
            id="wrong_shape",
        ),
        pytest.param(
            Behaviour(body=b'{"attestations": [1, {"a": 2}]}'),
            ("invalid", "malformed envelope"),
            id="junk_items",
        ),
    ],
)
async def test_bad_answers(behaviour: Behaviour, expected: tuple[str, str]) -> None:
    behaviours = [
        Behaviour(envelopes=[att("agree-rb-alpha")]),
        Behaviour(envelopes=[att("agree-rb-beta")]),
        behaviour,
    ]
    result, _ = await run(behaviours)
    got = status(result, "rb-gamma")
    assert got[0] == expected[0] and expected[1] in got[1], got
    assert result.accepted  # one bad node never fails the decision for the others


async def test_agreement_without_the_package_query_is_not_counted() -> None:
    behaviours = [
        Behaviour(envelopes=[att("agree-rb-alpha")]),
        # rb-beta's package query fails: a mismatch it reported could be hidden there.
        Behaviour(envelopes=[att("agree-rb-beta"), att("mismatch-rb-beta")], package_status=503),
        Behaviour(envelopes=[att("agree-rb-gamma")], package_status=404),
    ]
    result, _ = await run(behaviours)
    beta = status(result, "rb-beta")
    assert beta[0] == "unreachable" and "HTTP status 503" in beta[1]
    assert "not counted" in beta[1]
    # A 404 from the package query means "nothing there": the digest answer stands.
    assert status(result, "rb-gamma")[0] == "agrees"
    assert result.accepted


async def test_wrong_url_is_named_as_such_in_the_advice() -> None:
    """A URL that answers 404 everywhere (a typo, a web server that is not a rebuilder) says
    so, and the advice is to fix the policy, not to wait for it."""
    behaviours = [Behaviour(envelopes=[att("agree-rb-alpha")]), Behaviour(status=404),
                  Behaviour(status=404)]
    result, _ = await run(behaviours)
    assert not result.accepted
    beta = status(result, "rb-beta")
    assert beta[0] == "invalid"
    assert beta[1].startswith("the URL does not look like a rebuilder: http://127.0.0.1:")
    assert "answers 404 to the attestation queries and to GET /v1/node" in beta[1]
    (reason,) = result.reasons
    assert "to be corrected (it does not look like a rebuilder)" in reason
    assert "wait for rb-beta (beta-corp) to publish" not in reason


async def test_absent_rebuilder_is_unreachable() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with serving([Behaviour(envelopes=[att("agree-rb-alpha")])]) as urls, open_fetcher() as f:
        policy = policy_for([urls[0], dead, dead.replace("http://", "http://localhost.invalid.")])
        result = await check_online(ARTIFACT, policy, f, NOW, FAST)
    assert not result.accepted
    assert status(result, "rb-beta")[0] == "unreachable"
    assert status(result, "rb-gamma")[0] == "unreachable"
    assert "reachable" in result.reasons[0]


async def test_coordinator_is_checked_not_trusted() -> None:
    pool = [
        att("agree-rb-alpha"),
        att("agree-rb-beta"),
        att("untrusted-claims-rb-beta"),
        att("tampered-rb-beta"),
    ]
    async with serving([Behaviour(envelopes=pool)]) as (coord,), open_fetcher() as fetcher:
        policy = policy_for(["http://127.0.0.1:1"] * 3)
        result = await check_via_coordinator(ARTIFACT, policy, fetcher, coord, NOW, FAST)
    assert result.accepted
    assert [str(r.status) for r in result.rebuilders] == ["agrees", "agrees", "no_attestation"]


async def test_unreachable_coordinator_makes_every_rebuilder_unreachable() -> None:
    coordinator = f"http://127.0.0.1:{free_port()}"
    async with open_fetcher() as fetcher:
        policy = policy_for(["http://127.0.0.1:1"] * 3)
        result = await check_via_coordinator(ARTIFACT, policy, fetcher, coordinator, NOW, FAST)
        [batched] = await check_many_via_coordinator([ARTIFACT], policy, fetcher, coordinator,
                                                     NOW, FAST)
    for r in (result, batched):
        assert not r.accepted
        assert {x.status for x in r.rebuilders} == {Status.UNREACHABLE}
        assert all("via coordinator" in x.detail for x in r.rebuilders)
        # The advice names the coordinator, not the rebuilders it could not ask about.
        (reason,) = r.reasons
        assert reason.startswith(f"The coordinator at {coordinator} is unreachable (")
        assert "leave out --coordinator to ask the rebuilders directly" in reason
        assert "wait for" not in reason


class ExplodingFetcher(FetcherInterface):
    async def _fetch(self, url: str):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")
        yield b""


async def test_fetcher_seam_turns_any_failure_into_one_error_family() -> None:
    policy = policy_for(["http://127.0.0.1:1"] * 3)
    result = await check_online(ARTIFACT, policy, ExplodingFetcher(), NOW, FAST)
    unreachable = result.by_status(Status.UNREACHABLE)
    # Two failures put the quorum of 2 out of reach: the third need not be asked.
    assert len(unreachable) >= 2
    assert all("RuntimeError: boom" in r.detail for r in unreachable)
