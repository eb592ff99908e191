"""The coordinator end to end: real mosquitto, real aiohttp stand-in nodes, real SQLite."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import aiomqtt

from coordinator.app import CATCHUP, INGEST, MQTT, STORE, create_app
from coordinator.config import load_config
from tests.support import Mosquitto, free_port, publish_as_node, signed_status, wait_for
from tests.unit.coordinator.factory import Signer, StandInNode, coordinator_toml, serving, sha

DEB = "hello_1.0-1_amd64.deb"


async def get_json(url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json(content_type=None)


async def test_ingest_catchup_query_and_disagreement(tmp_path: Path, mosquitto: Mosquitto) -> None:
    alpha, beta = Signer("rb-alpha"), Signer("rb-beta")
    node_a = StandInNode(alpha)
    # Published while the coordinator was not running: only catch-up can bring them.
    node_a.envelopes = [alpha.rebuild(f"pkg{i}", "1", {f"pkg{i}_1_amd64.deb": sha(f"p{i}")})
                        for i in range(30)]
    async with serving(node_a.app()) as url_a, serving(StandInNode(beta).app()) as url_b:
        alpha.url, beta.url = url_a, url_b
        port = free_port()
        cfg = load_config(coordinator_toml(tmp_path, [alpha, beta], mosquitto.port, port))
        app = create_app(cfg)
        async with serving(app, port) as base:
            await wait_for(lambda: _stored(base, 30), 20, "catch-up of 30 envelopes")
            await asyncio.wait_for(app[MQTT].connected.wait(), 10)

            events: list[dict] = []  # type: ignore[type-arg]
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as sub:
                await sub.subscribe("rq/v1/events/disagreement", qos=1)

                a = alpha.rebuild("hello", "1.0-1", {DEB: sha("good")})
                b = beta.rebuild("hello", "1.0-1", {DEB: sha("evil")}, upstream={DEB: sha("good")},
                                 report_url=f"{url_b}/v1/reports/r1.html")
                async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
                    await publish_as_node(pub, "rb-alpha", a.to_bytes())
                    await publish_as_node(pub, "rb-alpha", a.to_bytes())
                    await publish_as_node(pub, "rb-beta", b.to_bytes())
                    await pub.publish("rq/v1/status/rb-beta", signed_status(beta.key, queue=2),
                                      qos=1, retain=True)
                async with asyncio.timeout(10):
                    async for message in sub.messages:
                        events.append(json.loads(message.payload))  # type: ignore[arg-type]
                        break
            assert events[0]["artifact"] == DEB
            assert events[0]["digests"] == {"rb-alpha": sha("good"), "rb-beta": sha("evil")}

            await wait_for(lambda: _stored(base, 32), 10, "two MQTT envelopes")
            status, doc = await get_json(f"{base}/v1/attestations?digest=sha256:{sha('good')}")
            assert status == 200
            assert doc["digest"] == f"sha256:{sha('good')}"
            assert doc["attestations"] == [json.loads(a.to_bytes())]
            assert {r["id"]: r["online"] for r in doc["rebuilders"]} == {
                "rb-alpha": True, "rb-beta": True}

            status, doc = await get_json(f"{base}/v1/packages/debian/hello/1.0-1")
            assert status == 200 and len(doc["attestations"]) == 2
            assert doc["package"]["ecosystem"] == "debian"
            status, doc = await get_json(f"{base}/v1/packages/pypi/hello/1.0-1")
            assert status == 404 and "'pypi'" in doc["error"] and "debian" in doc["error"], doc

            status, doc = await get_json(f"{base}/v1/rebuilders")
            counts = {r["id"]: r["counts"] for r in doc["rebuilders"]}
            assert counts["rb-alpha"]["reproduced"] == 31
            assert counts["rb-beta"]["unreproducible"] == 1

            status, doc = await get_json(f"{base}/v1/disagreements")
            assert [d["artifact"] for d in doc["disagreements"]] == [DEB]
            assert app[INGEST].metrics.duplicates >= 1

            for bad in ("digest=sha256:XYZ", "digest=md5:" + "0" * 32, "",
                        "digest=sha256:" + "A" * 64):
                status, doc = await get_json(f"{base}/v1/attestations?{bad}")
                assert status == 400 and "error" in doc, bad
            status, _ = await get_json(f"{base}/v1/packages/debian/hello/..%2f..")
            assert status in (400, 404)
            status, _ = await get_json(f"{base}/v1/disagreements?limit=-1")
            assert status == 400

            async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
                text = await r.text()
            assert "rq_coordinator_stored_envelopes 32" in text
            assert 'rq_coordinator_rebuilder_online{rebuilder="rb-alpha"} 1' in text


async def _stored(base: str, n: int) -> bool:
    status, doc = await get_json(f"{base}/v1/rebuilders")
    return status == 200 and sum(sum(r["counts"].values()) for r in doc["rebuilders"]) >= n


async def test_junk_catchup_is_skipped_and_the_rest_keeps_working(tmp_path: Path) -> None:
    good, bad = Signer("rb-good"), Signer("rb-junk")
    node_good = StandInNode(good, envelopes=[good.rebuild("a", "1", {"a_1_amd64.deb": sha("a")})])
    node_bad = StandInNode(bad, junk=b'{"attestations": "lol", "next": 1, "more": false}')
    async with serving(node_good.app()) as ug, serving(node_bad.app()) as ub:
        good.url, bad.url = ug, ub
        port = free_port()
        cfg = load_config(coordinator_toml(tmp_path, [good, bad], None, port))
        app = create_app(cfg)
        async with serving(app, port) as base:
            await wait_for(lambda: _stored(base, 1), 10, "the good node's envelope")
            await wait_for(lambda: _has_error(base), 10, "junk node's catch-up error")
            # A page of envelopes that do not verify: counted, dropped, cursor moves on.
            forged = Signer("rb-junk").rebuild("a", "1", {"a_1_amd64.deb": sha("evil")})
            node_bad.junk = None
            node_bad.envelopes = [forged, bad.rebuild("b", "1", {"b_1_amd64.deb": sha("b")})]
            assert await app[CATCHUP].round() == {"rb-good": 0, "rb-junk": 1}
            text = await _metrics(base)
            assert 'rq_coordinator_dropped_total{reason="wrong-key"} 1' in text
            assert 'rq_coordinator_stored_envelopes 2' in text
            assert await app[STORE].cursor("rb-junk") == "2"


async def _has_error(base: str) -> bool:
    text = await _metrics(base)
    return 'rq_coordinator_catchup_errors_total{rebuilder="rb-junk"} 1' in text


async def _metrics(base: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
        return await r.text()


async def test_status_command(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from coordinator.cli import main

    alpha = Signer("rb-alpha")
    node = StandInNode(alpha, envelopes=[
        alpha.rebuild("a", "1", {"a_1_amd64.deb": sha("a")}),
        alpha.rebuild("a", "1", {"a_1_amd64.deb": sha("other")}, invocation="again"),
    ])
    async with serving(node.app()) as url:
        alpha.url = url
        port = free_port()
        config_path = coordinator_toml(tmp_path, [alpha], None, port)
        app = create_app(load_config(config_path))
        async with serving(app, port):
            await wait_for(lambda: _stored(f"http://127.0.0.1:{port}", 2), 10, "catch-up")
            assert await asyncio.to_thread(main, ["status", "--config", str(config_path),
                                                  "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["envelopes"] == 2 and status["disagreements"] == 1
    assert status["rebuilders"][0]["id"] == "rb-alpha"
    assert main(["status", "--config", str(config_path)]) == 0
    text = capsys.readouterr().out
    assert "envelopes stored: 2" in text and "rebuilders online: 1 of 1" in text
    assert main(["status", "--config", str(tmp_path / "missing.toml")]) == 2
