"""Rebuilder status over MQTT: online, offline (the node's last will), stale retained status,
and invalid status messages, which are counted and change nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import aiomqtt

from coordinator.app import INGEST, MQTT, VIEWS, create_app
from coordinator.config import load_config
from tests.support import Mosquitto, free_port, wait_for
from tests.unit.coordinator.factory import Signer, coordinator_toml, serving


async def _online(base: str) -> dict[str, bool]:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/v1/rebuilders") as r:
        return {x["id"]: x["online"] for x in (await r.json())["rebuilders"]}


async def test_status_messages(tmp_path: Path, mosquitto: Mosquitto) -> None:
    alpha, beta = Signer("rb-alpha"), Signer("rb-beta")
    port = free_port()
    cfg = load_config(coordinator_toml(tmp_path, [alpha, beta], mosquitto.port, port,
                                       online_after=60))
    app = create_app(cfg)
    async with serving(app, port) as base:
        await asyncio.wait_for(app[MQTT].connected.wait(), 10)
        assert await _online(base) == {"rb-alpha": False, "rb-beta": False}

        async def states(expected: dict[str, bool]) -> bool:
            app[VIEWS].clear()  # no 1-second cache in this test
            return await _online(base) == expected

        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            await pub.publish("rq/v1/status/rb-alpha", json.dumps(
                {"state": "online", "queue": 3, "running": 1, "version": "0.1.0",
                 "time": "2099-01-01T00:00:00Z"}).encode(), qos=1, retain=True)
            # A retained status from long ago does not make a rebuilder online.
            await pub.publish("rq/v1/status/rb-beta", json.dumps(
                {"state": "online", "time": "2020-01-01T00:00:00Z"}).encode(), qos=1)
            await wait_for(lambda: states({"rb-alpha": True, "rb-beta": False}), 10,
                           "alpha online, beta stale")
            for bad in (b"nonsense", b'{"state": "online", "queue": -5}', b"{" * 5000,
                        b'{"state": "online", "time": "2026-01-01T00:00:00"}'):
                await pub.publish("rq/v1/status/rb-beta", bad, qos=1)
            await pub.publish("rq/v1/status/rb-nobody", b'{"state": "online"}', qos=1)

            async def counted() -> bool:
                return app[INGEST].metrics.status_invalid == 5
            await wait_for(counted, 10, "five invalid status messages counted")
            assert await states({"rb-alpha": True, "rb-beta": False})
            # The node's last will.
            await pub.publish("rq/v1/status/rb-alpha", b'{"state": "offline"}', qos=1,
                              retain=True)
            await wait_for(lambda: states({"rb-alpha": False, "rb-beta": False}), 10,
                           "alpha offline")
            await pub.publish("rq/v1/status/rb-alpha", b"", qos=1, retain=True)  # clean up
