"""Reliability with real rebuilder nodes (real builds in bwrap), real mosquitto, real SQLite:

1. the broker restarts in the middle of the work: every attestation still reaches the
   coordinator (counted against the nodes' own APIs);
2. the coordinator stops while the nodes keep working and starts again: it catches up
   completely.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from coordinator.app import INGEST, MQTT, STORE, create_app
from coordinator.config import load_config
from rqdemo.demo import Children, Node, run_checked, wait_http, write_coordinator_config
from rqdemo.testrepo import build_test_repository, default_packages, serve_repository
from rqdemo.testrepo._repo import host_arch
from tests.support import Mosquitto, free_port, wait_for
from tests.unit.coordinator.factory import serving
from verifier.dsse import Envelope


async def node_envelopes(session: aiohttp.ClientSession, node: Node) -> set[str]:
    """Digests of every envelope the node itself has, read through its catch-up API."""
    digests: set[str] = set()
    since = "0"
    while True:
        async with session.get(f"{node.url}/v1/attestations",
                               params={"since": since, "limit": "1000"}) as r:
            doc = await r.json()
        digests.update(Envelope.from_dict(e["envelope"]).digest() for e in doc["attestations"])
        if not doc["more"]:
            return digests
        since = doc["next"]


async def coordinator_envelopes(app: web.Application) -> set[str]:
    store = app[STORE]
    rows = await store._all("SELECT digest FROM envelopes")  # test-only peek
    return {r[0].hex() for r in rows}


async def builds_done(session: aiohttp.ClientSession, node: Node, packages: list[Any]) -> int:
    done = 0
    for p in packages:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(
                f"{node.url}/v1/packages/debian/{p.source}/{p.version}"
            ) as r:
                doc = await r.json()
            done += any(b["status"] in ("done", "failed") for b in doc["builds"])
    return done


Network = tuple[list[Node], Path, list[Any]]


@contextlib.asynccontextmanager
async def network(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Network]:
    # Eight packages, so the outages surely fall in the middle of the work.
    repo = await asyncio.to_thread(
        build_test_repository, tmp_path / "repo", default_packages(extra=4)
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    children = Children(logs)
    try:
        async with serve_repository(repo.path) as repo_url, aiohttp.ClientSession() as s:
            nodes = []
            for node_id, operator in (("rb-one", "One"), ("rb-two", "Two")):
                port = free_port()
                node = Node(node_id, operator, port, tmp_path / node_id)
                await asyncio.to_thread(
                    run_checked,
                    [sys.executable, "-m", "rebuilder.cli", "init", "--dir", str(node.dir),
                     "--id", node_id, "--operator", operator, "--public-url", node.url,
                     "--listen", f"127.0.0.1:{port}", "--mqtt-port", str(mosquitto.port),
                     "--repository-url", repo_url, "--signed-by", str(repo.keyring),
                     "--architectures", f"{host_arch()},all",
                     "--poll-interval", "1"],
                    "rebuilder init", logs / "init.log",
                )
                nodes.append(node)
            config = write_coordinator_config(tmp_path, nodes, mosquitto.port, free_port())
            for node in nodes:
                children.start(node.id, [sys.executable, "-m", "rebuilder.cli", "run",
                                         "--config", str(node.dir / "config.toml")])
            for node in nodes:
                await wait_http(s, f"{node.url}/healthz", children)
            yield nodes, config, list(repo.packages)
    finally:
        children.stop_all()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_broker_restart_and_coordinator_outage(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with network(tmp_path, mosquitto) as (nodes, config_path, packages), \
            aiohttp.ClientSession() as s:
        # Catch-up only at start and after a reconnection: no periodic round hides a loss.
        config_path.write_text(config_path.read_text().replace(
            "catchup_interval = 10", "catchup_interval = 3600"))
        config = load_config(config_path)
        total = len(nodes) * len(packages)

        app = create_app(config)
        async with serving(app, config.listen_port):
            await asyncio.wait_for(app[MQTT].connected.wait(), 10)
            await wait_for(lambda: _count_at_least(app, 1), 120, "a first attestation")
            # (1) the broker goes away in the middle of the work and comes back.
            mosquitto.stop()
            await wait_for(lambda: _not_connected(app), 20, "the coordinator to notice")
            await asyncio.sleep(2)  # nodes keep building (and fail to publish) meanwhile
            mosquitto.start()
            await wait_for(lambda: _connected(app), 60, "reconnection")
            reached = await _count(app)
            assert reached < total, "the work should not be over yet"
            await wait_for(lambda: _count_at_least(app, min(reached + 1, total - 1)), 120,
                           "more attestations after the restart")
            # Everything the nodes signed so far, published before, during or after the
            # outage, reaches the running coordinator.
            snapshot: set[str] = set()
            for n in nodes:
                snapshot |= await node_envelopes(s, n)

            async def has_snapshot() -> bool:
                return await coordinator_envelopes(app) >= snapshot
            await wait_for(has_snapshot, 60, "every attestation signed so far")
            assert app[INGEST].metrics.ingested["mqtt"] > 0  # MQTT works, not only catch-up
            # (2) stop the coordinator half-way; the nodes keep working.
        stopped_with = await _db_count(config)
        assert stopped_with < total

        async def all_built() -> bool:
            done = [await builds_done(s, n, packages) for n in nodes]
            return sum(done) == total
        await wait_for(all_built, 300, "every node to build every package", interval=1)
        expected: set[str] = set()
        for n in nodes:
            expected |= await node_envelopes(s, n)
        assert len(expected) >= total

        app = create_app(config)
        async with serving(app, config.listen_port):
            async def caught_up() -> bool:
                return await coordinator_envelopes(app) >= expected
            await wait_for(caught_up, 60, "catch-up after the outage")
            assert await coordinator_envelopes(app) == expected


async def _count(app: web.Application) -> int:
    return (await app[STORE].totals()).envelopes


async def _count_at_least(app: web.Application, n: int) -> bool:
    return await _count(app) >= n


async def _not_connected(app: web.Application) -> bool:
    return not app[MQTT].connected.is_set()


async def _connected(app: web.Application) -> bool:
    return app[MQTT].connected.is_set()


async def _db_count(config) -> int:  # type: ignore[no-untyped-def]
    import sqlite3

    with contextlib.closing(sqlite3.connect(config.database)) as db:
        return int(db.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0])
