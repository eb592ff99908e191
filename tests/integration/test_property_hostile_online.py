"""Property, online: a hostile rebuilder or coordinator behind a real aiohttp server (any body,
status, size, or no answer) never changes the honest rebuilders' results, and no exception
escapes ``check_online`` or ``check_via_coordinator`` (issue 11)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration._verifier_servers import Behaviour, serving_in_thread
from tests.integration.test_verifier_online import ARTIFACT, NOW, att, policy_for
from tests.unit.verifier._hostile import hostile_bodies
from tests.unit.verifier._vectors import make_vectors
from verifier.decision import Status
from verifier.dsse import Envelope
from verifier.sources import ClientConfig, check_online, check_via_coordinator, open_fetcher

mv = make_vectors()
G = att("agree-rb-gamma")
STATEMENT = json.loads(Envelope.from_bytes(G).payload)
GAMMA = mv.private_key("rb-gamma")
CONFIG = ClientConfig(timeout=0.5, max_response_bytes=256 * 1024)
HOSTILE = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)

behaviours = st.fixed_dictionaries(
    {
        "body": hostile_bodies(GAMMA, STATEMENT, G),
        "status": st.sampled_from([200, 200, 200, 200, 204, 301, 404, 418, 500, 503]),
        "package_status": st.sampled_from([200, 200, 200, 404, 500]),
        "stall": st.sampled_from([False] * 9 + [True]),
        "oversize": st.sampled_from([0] * 9 + [300 * 1024]),
    }
)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[list[Behaviour], list[str]]]:
    bs = [Behaviour(envelopes=[att("agree-rb-alpha")]), Behaviour(envelopes=[att("agree-rb-beta")]),
          Behaviour(), Behaviour()]
    with serving_in_thread(bs) as urls:
        yield bs, urls


def _configure(b: Behaviour, drawn: dict[str, object]) -> None:
    b.body = drawn["body"]  # type: ignore[assignment]
    b.status = drawn["status"]  # type: ignore[assignment]
    b.package_status = drawn["package_status"]  # type: ignore[assignment]
    b.stall = drawn["stall"]  # type: ignore[assignment]
    b.oversize = 0 if b.body else drawn["oversize"]  # type: ignore[assignment]


async def _online(urls: list[str]):  # type: ignore[no-untyped-def]
    async with open_fetcher() as fetcher:
        return await check_online(ARTIFACT, policy_for(urls[:3]), fetcher, NOW, CONFIG)


@HOSTILE
@given(drawn=behaviours)
def test_hostile_rebuilder_online_never_changes_the_honest_ones(
    servers: tuple[list[Behaviour], list[str]], drawn: dict[str, object]
) -> None:
    bs, urls = servers
    _configure(bs[2], drawn)
    result = asyncio.run(_online(urls))
    alpha, beta, gamma = result.rebuilders
    assert (alpha.status, beta.status) == (Status.AGREES, Status.AGREES), (alpha, beta)
    assert gamma.detail
    assert result.accepted or gamma.status == Status.DISAGREES, result.reasons


async def _via_coordinator(urls: list[str]):  # type: ignore[no-untyped-def]
    async with open_fetcher() as fetcher:
        return await check_via_coordinator(
            ARTIFACT, policy_for(urls[:3]), fetcher, urls[3], NOW, CONFIG
        )


@HOSTILE
@given(drawn=behaviours)
def test_hostile_coordinator_never_makes_the_verifier_fail(
    servers: tuple[list[Behaviour], list[str]], drawn: dict[str, object]
) -> None:
    """A coordinator can withhold (the result may be a rejection) but never crash a check or
    make an honest attestation count for a rebuilder whose key did not sign it."""
    bs, urls = servers
    _configure(bs[3], drawn)
    result = asyncio.run(_via_coordinator(urls))
    assert len(result.rebuilders) == 3
    for r in result.rebuilders:
        assert r.status in (Status.NO_ATTESTATION, Status.UNREACHABLE, Status.INVALID,
                            Status.AGREES, Status.DISAGREES) and r.detail
    assert result.rebuilders[0].status != Status.AGREES  # its envelope is not in the junk
