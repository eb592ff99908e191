"""Through the coordinator, a revoked statement stays revoked (issue 11): real mosquitto, real
coordinator with its SQLite store, and ``check_via_coordinator`` against its HTTP API.

The attack: rb-beta's attestation is revoked; somebody re-publishes it with its keyid hint
changed or removed, a garbage signature appended, or the base64 re-spelled. Before, the
coordinator stored each as a new envelope and the verifier counted it again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from coordinator.app import INGEST, MQTT, STORE, create_app
from coordinator.config import load_config
from tests.support import Mosquitto, free_port, wait_for
from tests.unit.coordinator.factory import (
    T0,
    Signer,
    StandInNode,
    coordinator_toml,
    serving,
    sha,
)
from tests.unit.verifier._mutations import MUTATIONS, mutate
from verifier.debian import DebIdentity
from verifier.decision import Artifact, Status
from verifier.policy import Policy, TrustedRebuilder
from verifier.sources import ClientConfig, check_via_coordinator, open_fetcher
from verifier.statement import Digest

DEB = "hello_1.0-1_amd64.deb"
ARTIFACT = Artifact(Digest(sha("good")), DebIdentity("hello", "1.0-1", "amd64", "hello", "1.0-1"))


@pytest.mark.parametrize("legacy", [False, True], ids=["v2", "v1"])
async def test_mutated_revoked_attestation_stays_revoked_through_the_coordinator(
    tmp_path: Path, mosquitto: Mosquitto, legacy: bool
) -> None:
    alpha, beta = Signer("rb-alpha"), Signer("rb-beta")
    a = alpha.rebuild("hello", "1.0-1", {DEB: sha("good")})
    b = beta.rebuild("hello", "1.0-1", {DEB: sha("good")})
    revocation = beta.revoke(b, "built on a compromised host", legacy=legacy)
    async with serving(StandInNode(alpha).app()) as ua, serving(StandInNode(beta).app()) as ub:
        alpha.url, beta.url = ua, ub
        port = free_port()
        config = coordinator_toml(tmp_path, [alpha, beta], mosquitto.port, port)
        app = create_app(load_config(config))
        async with serving(app, port) as base:
            await asyncio.wait_for(app[MQTT].connected.wait(), 10)
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
                for topic, env in (("rb-alpha", a), ("rb-beta", b), ("rb-beta", revocation)):
                    await pub.publish(f"rq/v1/attestations/{topic}", env.to_bytes(), qos=1)
                await wait_for(lambda: _envelopes(app, 3), 10, "three envelopes stored")
                before = app[INGEST].metrics.duplicates
                for how in sorted(MUTATIONS):
                    await pub.publish(
                        "rq/v1/attestations/rb-beta", mutate(b.to_bytes(), how), qos=1
                    )
                await wait_for(
                    lambda: _duplicates(app, before + len(MUTATIONS)), 10, "the mutations seen"
                )
            assert (await app[STORE].totals()).envelopes == 3
            results = await app[STORE].package_results("hello", "1.0-1")
            assert [(r.rebuilder, r.revoked) for r in results if r.kind == "rebuild"] == [
                ("rb-alpha", False), ("rb-beta", True)]

            policy = Policy(
                threshold=2,
                rebuilders=tuple(
                    TrustedRebuilder(s.id, s.operator, s.url, s.key.public_key())
                    for s in (alpha, beta)
                ),
            )
            async with open_fetcher() as fetcher:
                result = await check_via_coordinator(
                    ARTIFACT, policy, fetcher, base, T0, ClientConfig(timeout=5)
                )
    (r_beta,) = [r for r in result.rebuilders if r.id == "rb-beta"]
    assert r_beta.status == Status.NO_ATTESTATION, r_beta.detail
    assert "revoked: built on a compromised host" in r_beta.detail
    assert not result.accepted


async def _envelopes(app, n: int) -> bool:  # type: ignore[no-untyped-def]
    return bool((await app[STORE].totals()).envelopes >= n)


async def _duplicates(app, n: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(app[INGEST].metrics.duplicates >= n)
