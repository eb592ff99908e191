"""The coordinator as one aiohttp application: ingest, catch-up, query API and dashboard.

``create_app(config)`` opens everything in cleanup contexts (database, ingest writer, HTTP
client, MQTT link, scheduler), so each closes only if it opened::

    app = create_app(load_config(Path("coordinator.toml")))
    web.run_app(app, host=config.listen_host, port=config.listen_port)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from coordinator import dashboard
from coordinator.appstate import (
    CATCHUP,
    CONFIG,
    DIGEST_PARAM,
    HTTP,
    INGEST,
    MQTT,
    SCHEDULER,
    STORE,
    VIEWS,
    ecosystem_part,
    int_param,
    json_error,
    package_parts,
    rebuilder_views,
    short_views,
)
from coordinator.batch import post_attestations_batch
from coordinator.catchup import CatchUp
from coordinator.config import CoordinatorConfig
from coordinator.metrics import CoordinatorState
from coordinator.metrics import render as render_metrics
from coordinator.mqtt import MqttLink
from coordinator.service import Ingest
from coordinator.store import open_store
from coordinator.witness_setup import proofs_for, setup_witness

__all__ = [  # the app keys are re-exported from coordinator.appstate, where they live
    "CATCHUP",
    "CONFIG",
    "INGEST",
    "MQTT",
    "STORE",
    "VIEWS",
    "create_app",
    "rebuilder_views",
]

log = logging.getLogger(__name__)

VERSION = "0.1.0"


def _envelopes_response(head: dict[str, Any], bodies: list[bytes], tail: dict[str, Any]) -> bytes:
    """A JSON object embedding stored canonical envelopes as they are, without re-encoding."""
    h = json.dumps(head, separators=(",", ":"))[:-1]
    t = json.dumps(tail, separators=(",", ":"))[1:]
    return b"".join(
        [h.encode(), b',"attestations":[', b",".join(bodies), b"],", t.encode()]
    )


async def get_attestations(request: web.Request) -> web.Response:
    digest = request.query.get("digest")
    if digest is None:
        return json_error(400, "digest=sha256:<hex> is required")
    m = DIGEST_PARAM.fullmatch(digest)
    if not m:
        return json_error(400, "digest must be sha256: followed by 64 lowercase hex digits")
    app = request.app
    bodies = await app[STORE].envelopes_for_digest(m.group(1))
    views = await rebuilder_views(app)
    tail: dict[str, Any] = {"rebuilders": short_views(views)}
    if request.query.get("proofs"):  # inclusion proofs from the log monitor (branch tlog)
        tail["proofs"] = await proofs_for(app, bodies)
    body = _envelopes_response({"digest": digest}, bodies, tail)
    return web.Response(body=body, content_type="application/json")


async def get_package(request: web.Request) -> web.Response:
    ecosystem = ecosystem_part(request)
    source, version = package_parts(request)
    app = request.app
    bodies = await app[STORE].envelopes_for_package(source, version, ecosystem=ecosystem)
    views = await rebuilder_views(app)
    head = {"package": {"ecosystem": ecosystem, "name": source, "version": version}}
    tail: dict[str, Any] = {"rebuilders": short_views(views)}
    if request.query.get("proofs"):  # inclusion proofs from the log monitor (branch tlog)
        tail["proofs"] = await proofs_for(app, bodies)
    body = _envelopes_response(head, bodies, tail)
    return web.Response(body=body, content_type="application/json")


async def get_rebuilders(request: web.Request) -> web.Response:
    views = await rebuilder_views(request.app)
    for v in views:
        v.pop("status", None)
    return web.json_response({"rebuilders": views})


async def get_disagreements(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 100, 1, 1000)
    offset = int_param(request, "offset", 0, 0, 10**8)
    rows = await request.app[STORE].disagreements(limit, offset)
    return web.json_response({"disagreements": [d.to_dict() for d in rows]})


async def get_tampered(request: web.Request) -> web.Response:
    """Files rebuilders reported ``tampered``, newest first (docs/api.md)."""
    limit = int_param(request, "limit", 100, 1, 1000)
    rows = await request.app[STORE].tampered(limit=limit)
    return web.json_response({"tampered": [r.to_dict() for r in rows]})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    packets = app[MQTT].packets_dropped.counts if MQTT in app else None
    state = CoordinatorState(
        ingest=app[INGEST].metrics,
        totals=await app[STORE].totals(),
        queued=app[INGEST].queued(),
        mqtt_connected=MQTT in app and app[MQTT].connected.is_set(),
        packets_dropped=packets,
        rebuilders=[(v["id"], bool(v["online"])) for v in await rebuilder_views(app)],
    )
    return web.Response(text=render_metrics(state), content_type="text/plain")


# ---- resources ---------------------------------------------------------------------------


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = await open_store(config.database)
    await store.ensure_rebuilders(r.id for r in config.rebuilders)
    app[STORE] = store
    yield
    await store.close()


async def _ingest_ctx(app: web.Application) -> AsyncIterator[None]:
    ingest = Ingest(app[CONFIG], app[STORE])
    app[INGEST] = ingest
    ingest.start_workers(app[CONFIG].workers())
    task = asyncio.create_task(ingest.run(), name="ingest writer")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    ingest.stop_workers()


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    limits = app[CONFIG].limits
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=max(limits.catchup_timeout, limits.report_timeout)),
        headers={"User-Agent": f"repro-quorum-coordinator/{VERSION}"},
        trust_env=False,
    )
    app[HTTP] = session
    app[CATCHUP] = CatchUp(app[INGEST], session)
    yield
    await session.close()


async def _catchup_round(app: web.Application) -> None:
    try:
        await app[CATCHUP].round()
    except Exception:  # a scheduler job must never die; the next round tries again
        log.exception("catch-up round failed")


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    scheduler = AsyncIOScheduler()
    scheduler.add_job(
        _catchup_round,
        "interval",
        seconds=config.catchup_interval,
        args=[app],
        id="catch-up",
        max_instances=1,
        coalesce=True,
    )
    scheduler.start()
    app[SCHEDULER] = scheduler
    # The first round runs at once, in the background, so the API is up while it runs.
    first = asyncio.create_task(_catchup_round(app), name="first catch-up")
    yield
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    scheduler.shutdown(wait=False)


async def _mqtt_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.mqtt.enabled:
        yield
        return
    background: set[asyncio.Task[None]] = set()

    def reconnected() -> None:
        # Whatever was published while we were away arrives through catch-up.
        if app[MQTT].connections > 1:
            t = asyncio.create_task(_catchup_round(app), name="catch-up after reconnect")
            background.add(t)
            t.add_done_callback(background.discard)

    link = MqttLink(config.mqtt, app[INGEST], on_connect=reconnected)
    app[INGEST].on_disagreement = link.publish_disagreement
    app[MQTT] = link
    task = asyncio.create_task(link.run(), name="mqtt link")
    yield
    task.cancel()
    for t in list(background):
        t.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(config: CoordinatorConfig) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[CONFIG] = config
    app[VIEWS] = []
    app.cleanup_ctx.extend([_store_ctx, _ingest_ctx, _http_ctx, _mqtt_ctx, _scheduler_ctx])
    app.router.add_get("/v1/attestations", get_attestations)
    app.router.add_post("/v1/attestations:batch", post_attestations_batch)
    app.router.add_get("/v1/packages/{ecosystem}/{source}/{version}", get_package)
    app.router.add_get("/v1/rebuilders", get_rebuilders)
    app.router.add_get("/v1/disagreements", get_disagreements)
    app.router.add_get("/v1/tampered", get_tampered)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    dashboard.setup(app)
    setup_witness(app, config)  # the C2SP witness (ARCHITECTURE §4.9)
    return app
