"""Rebuilder status over MQTT: signed by the node, verified by the coordinator.

Online, offline (the node's pre-signed last will, sent by a real mosquitto when a real
``Publisher`` process is killed), stale retained status, and every forged or invalid status
message, which is dropped, counted by reason and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import aiomqtt

from coordinator.app import INGEST, MQTT, STORE, VIEWS, create_app
from coordinator.config import load_config
from tests.support import Mosquitto, free_port, metric, signed_status, wait_for
from tests.unit.coordinator.factory import Signer, coordinator_toml, serving
from tests.unit.rebuilder.node_helpers import amake_node
from verifier.keys import generate_private_key, load_private_key
from verifier.statement import format_time


async def _rebuilders(base: str) -> dict[str, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/v1/rebuilders") as r:
        return {x["id"]: x for x in (await r.json())["rebuilders"]}


def _at(delta: timedelta) -> str:
    return format_time(datetime.now(UTC) + delta)


async def test_status_messages(tmp_path: Path, mosquitto: Mosquitto) -> None:
    alpha, beta = Signer("rb-alpha"), Signer("rb-beta")
    port = free_port()
    cfg = load_config(coordinator_toml(tmp_path, [alpha, beta], mosquitto.port, port,
                                       online_after=60))
    app = create_app(cfg)
    async with serving(app, port) as base:
        await asyncio.wait_for(app[MQTT].connected.wait(), 10)

        async def online() -> dict[str, bool]:
            app[VIEWS].clear()  # no 1-second cache in this test
            return {k: bool(v["online"]) for k, v in (await _rebuilders(base)).items()}

        async def states(expected: dict[str, bool]) -> bool:
            return await online() == expected

        def dropped(reason: str, n: int):  # type: ignore[no-untyped-def]
            async def check() -> bool:
                return app[INGEST].metrics.status_dropped[reason] == n
            return check

        assert await online() == {"rb-alpha": False, "rb-beta": False}
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            await pub.publish("rq/v1/status/rb-alpha", signed_status(
                alpha.key, queue=3, running=1), qos=1, retain=True)
            # A retained status from long ago does not make a rebuilder online.
            await pub.publish("rq/v1/status/rb-beta", signed_status(
                beta.key, time="2020-01-01T00:00:00Z"), qos=1)
            await wait_for(lambda: states({"rb-alpha": True, "rb-beta": False}), 10,
                           "alpha online, beta stale")

            # Forgeries: an unsigned retained "offline" and an unsigned fake queue length.
            await pub.publish("rq/v1/status/rb-alpha", b'{"state": "offline"}', qos=1,
                              retain=True)
            await pub.publish("rq/v1/status/rb-alpha", json.dumps(
                {"state": "online", "queue": 99999, "time": _at(timedelta())}).encode(), qos=1)
            await wait_for(dropped("unsigned", 2), 10, "two unsigned status messages")
            # Signed by someone else's key (beta's, for alpha's topic).
            await pub.publish("rq/v1/status/rb-alpha", signed_status(beta.key, "offline"), qos=1)
            await pub.publish("rq/v1/status/rb-alpha", signed_status(
                generate_private_key(), queue=12345), qos=1)
            await wait_for(dropped("bad-signature", 2), 10, "two wrongly signed messages")
            # Signed but invalid, dated in the future, unregistered, nonsense.
            await pub.publish("rq/v1/status/rb-alpha", signed_status(alpha.key, queue=-5), qos=1)
            await pub.publish("rq/v1/status/rb-alpha", signed_status(
                alpha.key, "offline", time=_at(timedelta(days=1))), qos=1)
            await pub.publish("rq/v1/status/rb-nobody", signed_status(alpha.key), qos=1)
            await pub.publish("rq/v1/status/rb-alpha", b"{" * 5000, qos=1)
            await wait_for(dropped("malformed", 2), 10, "two malformed messages")
            await wait_for(dropped("future", 1), 10, "a future-dated message")
            await wait_for(dropped("unknown-rebuilder", 1), 10, "a message for nobody")
            # A genuine but older status (a replay) does not undo a newer one.
            await pub.publish("rq/v1/status/rb-alpha", signed_status(
                alpha.key, "offline", time=_at(timedelta(minutes=-5))), qos=1)
            await wait_for(dropped("stale", 1), 10, "a replayed older status")

            assert await states({"rb-alpha": True, "rb-beta": False})
            status = (await app[STORE].rebuilder_states())["rb-alpha"].status
            assert status is not None and status["queue"] == 3
            assert app[INGEST].metrics.status_invalid == 9
            # A genuine offline, signed now: accepted.
            await pub.publish("rq/v1/status/rb-alpha", signed_status(alpha.key, "offline"),
                              qos=1, retain=True)
            await wait_for(lambda: states({"rb-alpha": False, "rb-beta": False}), 10,
                           "alpha offline")
            await pub.publish("rq/v1/status/rb-alpha", b"", qos=1, retain=True)  # clean up
        async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
            text = await r.text()
        assert metric(text, "rq_coordinator_status_dropped_total", reason="unsigned") == 2


_NODE = """
import asyncio, sys
from pathlib import Path
from rebuilder.config import load_config
from rebuilder.db import Store
from rebuilder.publish import Publisher

async def main() -> None:
    cfg = load_config(Path(sys.argv[1]))
    store = await Store.open(cfg.node.db_path)
    async def status() -> dict[str, int]:
        return {"queue": 4, "running": 0}
    await Publisher(cfg, store, status).run()

asyncio.run(main())
"""


async def test_last_will_of_a_killed_node(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The will the node signed when it connected marks it offline when it dies, although it
    is older than the online statuses that followed it."""
    node = await amake_node(tmp_path, node_id="rb-will", mqtt_port=mosquitto.port)
    signer = Signer("rb-will", key=load_private_key(node.node.signing_key))
    port = free_port()
    (tmp_path / "c").mkdir()
    app = create_app(load_config(coordinator_toml(tmp_path / "c", [signer], mosquitto.port,
                                                  port, online_after=60)))
    async with serving(app, port):
        await asyncio.wait_for(app[MQTT].connected.wait(), 10)

        async def state(expected: str) -> bool:
            status = (await app[STORE].rebuilder_states())["rb-will"].status
            return status is not None and status["state"] == expected

        proc = subprocess.Popen(
            [sys.executable, "-c", _NODE, str(tmp_path / "node" / "config.toml")],
            start_new_session=True,
        )
        try:
            await wait_for(lambda: state("online"), 20, "the node online")
            os.killpg(proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker sends the will
            proc.wait(10)
            await wait_for(lambda: state("offline"), 20, "the node's last will applied")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        status = (await app[STORE].rebuilder_states())["rb-will"].status
        assert status is not None and status["will"] is True and status["queue"] is None
        assert app[INGEST].metrics.status_invalid == 0
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            await pub.publish("rq/v1/status/rb-will", b"", qos=1, retain=True)  # clean up
