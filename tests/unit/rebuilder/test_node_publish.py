"""The publisher against a real mosquitto: in order, at least once, nothing lost in an outage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from rebuilder.db import NewAttestation, Store
from rebuilder.publish import Publisher, attestation_topic, flush_once, status_topic
from tests.support import Mosquitto, wait_for
from tests.unit.rebuilder.node_helpers import amake_node
from verifier.keys import load_private_key
from verifier.status import open_status


def fake_attestation(i: int) -> NewAttestation:
    body = json.dumps({"n": i}).encode()
    return NewAttestation(envelope_sha256=f"{i:064x}", envelope=body, kind="rebuild",
                          source="p", version=str(i), arch="amd64",
                          subjects=((f"p_{i}_amd64.deb", f"{i + 1:064x}"),))


@contextlib.asynccontextmanager
async def subscriber(broker: Mosquitto, topic: str) -> AsyncIterator[list[Any]]:
    received: list[Any] = []
    async with aiomqtt.Client(broker.host, broker.port,
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                received.append((str(message.topic), message.payload, message.retain))

        task = asyncio.create_task(collect())
        try:
            yield received
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _status() -> dict[str, Any]:
    return {"queue": 0, "running": 0}


@pytest.mark.slow
async def test_outbox_survives_broker_outage(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = await amake_node(tmp_path, mqtt_port=mosquitto.port)
    store = await Store.open(cfg.node.db_path)
    await store.add_attestations_bulk([fake_attestation(i) for i in range(5)])
    publisher = Publisher(cfg, store, _status)
    monkeypatch.setattr("rebuilder.publish.BACKOFF_MAX_S", 1.0)  # reconnect quickly
    task: asyncio.Task[None] | None = None
    try:
        async with subscriber(mosquitto, attestation_topic(cfg.node.id)) as got:
            # Subscribe first: the broker keeps nothing for subscribers that come later.
            task = asyncio.create_task(publisher.run())
            await wait_for(lambda: _true(len(got) >= 5), 15, "first five attestations")
            assert [json.loads(p)["n"] for _, p, _ in got] == list(range(5))
            assert (await store.counts())["backlog"] == 0
        mosquitto.stop()
        await store.add_attestations_bulk([fake_attestation(i) for i in range(5, 10)])
        publisher.wake()
        await asyncio.sleep(0.5)  # the publisher is disconnected now; rows must stay pending
        assert (await store.counts())["backlog"] == 5
        mosquitto.start()
        async with subscriber(mosquitto, attestation_topic(cfg.node.id)) as got:
            # Messages published while nobody subscribed are not kept by the broker (no
            # persistence, clean session); so wait for the subscription, then check the store
            # and wait for delivery of anything still pending.
            await wait_for(lambda: _backlog_zero(store), 30, "outbox drained after restart")
            assert {json.loads(p)["n"] for _, p, _ in got} <= set(range(5, 10))
        assert publisher.published == 10
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await store.close()


async def _true(v: bool) -> bool:
    return v


async def _backlog_zero(store: Store) -> bool:
    return (await store.counts())["backlog"] == 0


async def test_retained_status_and_goodbye(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = await amake_node(tmp_path, mqtt_port=mosquitto.port)
    public_key = load_private_key(cfg.node.signing_key).public_key()
    store = await Store.open(cfg.node.db_path)
    publisher = Publisher(cfg, store, _status)
    task = asyncio.create_task(publisher.run())
    try:
        await wait_for(lambda: _true(publisher.drained.is_set()), 10, "publisher connected")
        async with subscriber(mosquitto, status_topic(cfg.node.id)) as got:
            await wait_for(lambda: _true(bool(got)), 10, "retained status")
            _, payload, retained = got[0]
            body = open_status(payload, public_key)  # signed with the node's key
            assert isinstance(body, dict)
            assert retained and body["state"] == "online" and body["queue"] == 0
            assert body["version"] and body["time"].endswith("Z") and body["session"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await publisher.goodbye()
    async with subscriber(mosquitto, status_topic(cfg.node.id)) as got:
        await wait_for(lambda: _true(bool(got)), 10, "offline status")
        body = open_status(got[0][1], public_key)
        assert isinstance(body, dict) and body["state"] == "offline" and not body.get("will")
    await store.close()


async def test_flush_once(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = await amake_node(tmp_path, mqtt_port=mosquitto.port)
    store = await Store.open(cfg.node.db_path)
    await store.add_attestations_bulk([fake_attestation(i) for i in range(3)])
    async with subscriber(mosquitto, attestation_topic(cfg.node.id)) as got:
        assert await flush_once(cfg, store) == 3
        await wait_for(lambda: _true(len(got) == 3), 10, "three messages")
    assert (await store.counts())["backlog"] == 0
    await store.close()


async def test_refused_publish_stays_in_outbox(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that acknowledges with a failure reason code (an ACL refusing the topic) must
    not make the node believe the attestation was delivered."""
    # mosquitto reads the ACL after dropping root to its own user: the file must be readable
    # by it, which pytest's private tmp_path is not.
    shared = Path(tempfile.mkdtemp(prefix="rq-acl-"))
    shared.chmod(0o755)
    acl = shared / "acl"
    acl.write_text("topic read #\n")
    acl.chmod(0o644)
    broker = Mosquitto(directory=tmp_path, extra_config=f"acl_file {acl}\n")
    broker.start()
    try:
        monkeypatch.setattr("rebuilder.publish.BACKOFF_MAX_S", 0.5)
        cfg = await amake_node(tmp_path, mqtt_port=broker.port)
        store = await Store.open(cfg.node.db_path)
        await store.add_attestations_bulk([fake_attestation(1)])
        publisher = Publisher(cfg, store, _status)
        task = asyncio.create_task(publisher.run())
        try:
            async def refused() -> bool:
                return any("refused" in r.getMessage() for r in caplog.records)

            await wait_for(refused, 15, "the refusal to be noticed")
            assert (await store.counts())["backlog"] == 1
            assert publisher.published == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()
    finally:
        broker.stop()
        shutil.rmtree(shared)
