"""1,000 forged, replayed and malformed MQTT messages on the attestation topics: none is
stored, every one is counted by reason, and the coordinator keeps answering queries."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from pathlib import Path

import aiohttp
import aiomqtt

from coordinator.app import INGEST, MQTT, STORE, create_app
from coordinator.config import load_config
from tests.support import Mosquitto, free_port, metric, wait_for
from tests.unit.coordinator.factory import Signer, coordinator_toml, serving, sha
from verifier.dsse import Envelope, Signature, sign

DEB = "hello_1.0-1_amd64.deb"


def _modified(env: Envelope) -> bytes:
    d = json.loads(env.to_bytes())
    st = json.loads(base64.b64decode(d["payload"]))
    st["subject"][0]["digest"]["sha256"] = sha("backdoor")
    d["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    return json.dumps(d).encode()


async def test_thousand_hostile_messages(tmp_path: Path, mosquitto: Mosquitto) -> None:
    alpha, beta, mallory = Signer("rb-alpha"), Signer("rb-beta"), Signer("rb-mallory")
    port = free_port()
    cfg = load_config(coordinator_toml(tmp_path, [alpha, beta], mosquitto.port, port))
    app = create_app(cfg)
    genuine = alpha.rebuild("hello", "1.0-1", {DEB: sha("good")})
    rng = random.Random(1234)
    kinds: dict[str, list[tuple[str, bytes]]] = {
        # valid signature by a key that is not the topic's rebuilder's
        "wrong-key": [("rb-alpha", mallory.rebuild("hello", "1.0-1", {DEB: sha(f"e{i}")})
                       .to_bytes()) for i in range(150)]
        + [("rb-beta", genuine.to_bytes())] * 50,  # alpha's envelope replayed as beta's
        "bad-signature": [("rb-alpha", _modified(alpha.rebuild("x", str(i), {"x_1_all.deb":
                                                                          sha("x")})))
                          for i in range(100)]
        + [("rb-alpha", Envelope(genuine.payload_type, genuine.payload,
                                 (Signature(bytes(rng.randrange(256) for _ in range(64)),
                                            genuine.signatures[0].keyid),)).to_bytes())] * 50,
        "malformed": [("rb-alpha", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
                      for _ in range(100)]
        + [("rb-alpha", b'{"payloadType":"application/vnd.in-toto+json","payload":"e30=",'
                        b'"signatures":[{"sig":"%d"}], "x":1, "x":2}' % i) for i in range(50)]
        + [("rb-alpha", b"[" * 100_000)] * 10
        + [("rb-alpha", b"")] * 40,
        "oversized": [("rb-alpha", b'{"payload":"' + b"A" * (1024 * 1024 + 10) + b'"}')] * 20,
        "unknown-rebuilder": [("rb-nobody", genuine.to_bytes())] * 100
        + [("..%2f\u202e", genuine.to_bytes())] * 50,
        "bad-statement": [("rb-alpha", sign(b'{"_type": "nonsense"}', alpha.key).to_bytes())
                          for _ in range(100)]
        + [("rb-alpha", sign(b"not json at all", alpha.key).to_bytes())] * 80,
    }
    replays = 100  # the genuine envelope again on its own topic: one row, counted duplicates
    total_hostile = sum(len(v) for v in kinds.values())
    assert total_hostile + replays == 1000
    messages = [(rid, payload) for v in kinds.values() for rid, payload in v]
    messages += [("rb-alpha", genuine.to_bytes())] * replays
    rng.shuffle(messages)

    async with serving(app, port) as base:
        await asyncio.wait_for(app[MQTT].connected.wait(), 10)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            await pub.publish("rq/v1/attestations/rb-alpha", genuine.to_bytes(), qos=1)
            await wait_for(_stored(app, 1), 10, "the genuine attestation")
            latencies = []
            async with aiohttp.ClientSession() as http:
                for i, (rid, payload) in enumerate(messages):
                    await pub.publish(f"rq/v1/attestations/{rid}", payload, qos=1)
                    if i % 100 == 0:  # queries keep being answered during the flood
                        t = asyncio.get_running_loop().time()
                        async with http.get(
                            f"{base}/v1/attestations?digest=sha256:{sha('good')}"
                        ) as r:
                            assert r.status == 200
                            assert len((await r.json())["attestations"]) == 1
                        latencies.append(asyncio.get_running_loop().time() - t)
        m = app[INGEST].metrics
        await wait_for(_counted(app, 1 + 1000), 30, "every message counted")
        for reason, items in kinds.items():
            assert m.dropped[reason] == len(items), (reason, m.dropped)
        assert m.dropped_total() == total_hostile
        assert m.duplicates == replays
        assert (await app[STORE].totals()).envelopes == 1
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
            text = await r.text()
        assert metric(text, "rq_coordinator_dropped_total", reason="wrong-key") == 200
        assert metric(text, "rq_coordinator_stored_envelopes") == 1
        assert max(latencies) < 5


def _stored(app, n):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return (await app[STORE].totals()).envelopes >= n
    return check


def _counted(app, n):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        m = app[INGEST].metrics
        return m.dropped_total() + m.duplicates + m.ingested["mqtt"] >= n
    return check


async def test_broken_verification_workers_lose_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    import dataclasses
    import os
    import signal

    alpha = Signer("rb-alpha")
    port = free_port()
    cfg = load_config(coordinator_toml(tmp_path, [alpha], mosquitto.port, port))
    app = create_app(dataclasses.replace(cfg, verify_workers=1))
    async with serving(app, port):
        await asyncio.wait_for(app[MQTT].connected.wait(), 10)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            first = alpha.rebuild("a", "1", {"a_1_all.deb": sha("a")})
            await pub.publish("rq/v1/attestations/rb-alpha", first.to_bytes(), qos=1)
            await wait_for(_stored(app, 1), 20, "the first attestation, checked by a worker")
            pool = app[INGEST]._pool
            assert pool is not None
            for pid in list(pool._processes):  # the worker this test's coordinator started
                os.kill(pid, signal.SIGKILL)
            second = alpha.rebuild("b", "1", {"b_1_all.deb": sha("b")})
            await pub.publish("rq/v1/attestations/rb-alpha", second.to_bytes(), qos=1)
            await wait_for(_stored(app, 2), 20, "the second attestation, checked in-process")
        assert app[INGEST]._pool is None
