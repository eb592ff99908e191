"""Online, a revoked statement stays revoked whatever its envelope looks like (issue 11).

Real aiohttp servers play the rebuilders and a coordinator; each serves rb-beta's revoked
attestation changed outside the signature (hint, signatures, base64), next to the revocation.
"""

from __future__ import annotations

import pytest

from tests.integration._verifier_servers import Behaviour, serving
from tests.integration.test_verifier_online import ARTIFACT, FAST, NOW, att, policy_for, status
from tests.unit.verifier._mutations import MUTATIONS, mutate
from verifier.sources import check_online, check_via_coordinator, open_fetcher

REVOCATIONS = {"v2": "revocation-rb-beta", "v1": "revocation-v1-rb-beta"}


@pytest.mark.parametrize("version", sorted(REVOCATIONS))
@pytest.mark.parametrize("how", sorted(MUTATIONS))
async def test_mutated_revoked_attestation_stays_revoked_online(how: str, version: str) -> None:
    beta = Behaviour(envelopes=[mutate(att("agree-rb-beta"), how), att(REVOCATIONS[version])])
    behaviours = [Behaviour(envelopes=[att("agree-rb-alpha")]), beta, Behaviour()]
    async with serving(behaviours) as urls, open_fetcher() as fetcher:
        result = await check_online(ARTIFACT, policy_for(urls), fetcher, NOW, FAST)
    got, detail = status(result, "rb-beta")
    assert got == "no_attestation", detail
    assert "revoked" in detail
    assert not result.accepted


@pytest.mark.parametrize("how", sorted(MUTATIONS))
async def test_mutated_revoked_attestation_stays_revoked_via_a_coordinator(how: str) -> None:
    envelopes = [
        att("agree-rb-alpha"),
        mutate(att("agree-rb-beta"), how),
        att("revocation-rb-beta"),
    ]
    behaviours = [Behaviour(), Behaviour(), Behaviour()]
    async with serving([*behaviours, Behaviour(envelopes=envelopes)]) as urls, open_fetcher() as f:
        policy = policy_for(urls[:3])
        result = await check_via_coordinator(ARTIFACT, policy, f, urls[3], NOW, FAST)
    assert status(result, "rb-beta")[0] == "no_attestation"
    assert not result.accepted
