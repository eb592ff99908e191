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
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from coordinator.catchup import CatchUp
from coordinator.checks import DROP_REASONS
from coordinator.config import CoordinatorConfig
from coordinator.mqtt import MqttLink
from coordinator.mqtt5 import PACKET_DROP_REASONS
from coordinator.service import STATUS_DROP_REASONS, Ingest
from coordinator.store import Store, rfc3339
from verifier import ecosystem as ecosystems
from verifier.verdicts import JOB_VERDICTS

__all__ = [
    "CATCHUP",
    "CONFIG",
    "INGEST",
    "MQTT",
    "STORE",
    "create_app",
    "rebuilder_views",
]

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", CoordinatorConfig)
STORE = web.AppKey("store", Store)
INGEST = web.AppKey("ingest", Ingest)
CATCHUP = web.AppKey("catchup", CatchUp)
MQTT = web.AppKey("mqtt", MqttLink)
SCHEDULER = web.AppKey("scheduler", AsyncIOScheduler)
HTTP = web.AppKey("http", aiohttp.ClientSession)
VIEWS = web.AppKey("views", list)  # [monotonic time, views] of the last rebuilder_views()

DIGEST_PARAM = re.compile(r"sha256:([0-9a-f]{64})")
PACKAGE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~:_-]{0,254}")
VERSION = "0.1.0"


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": message}), content_type="application/json"
    )


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 9 or not low <= int(raw) <= high:
        raise _bad_request(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def package_parts(request: web.Request) -> tuple[str, str]:
    source = request.match_info["source"]
    version = request.match_info["version"]
    for what, value in (("source", source), ("version", version)):
        if not PACKAGE_PART.fullmatch(value):
            raise _bad_request(f"{what} {value[:80]!r} is not a Debian package {what}")
    return source, version


_VIEWS_TTL = 1.0  # seconds: online flags and counts need not be fresher than this


async def rebuilder_views(app: web.Application, now: float | None = None) -> list[dict[str, Any]]:
    """Every registered rebuilder with its state, online flag and counts by verdict.

    Cached for a second, so a burst of lookups costs one database round trip, not one each.
    """
    cached = app[VIEWS]
    t = time.monotonic()
    if now is None and cached and t - cached[0] < _VIEWS_TTL:
        return [dict(v) for v in cached[1]]
    views = await _rebuilder_views(app, now)
    if now is None:
        app[VIEWS][:] = [t, views]
    return [dict(v) for v in views]


async def _rebuilder_views(app: web.Application, now: float | None) -> list[dict[str, Any]]:
    config = app[CONFIG]
    store = app[STORE]
    now = time.time() if now is None else now
    states = await store.rebuilder_states()
    counts = await store.counts()
    out = []
    for rb in config.rebuilders:
        st = states.get(rb.id)
        last_seen = st.last_seen if st else None
        online = bool(
            st
            and st.state == "online"
            and last_seen is not None
            and now - last_seen <= config.online_after
        )
        c = counts.get(rb.id, {})
        out.append(
            {
                "id": rb.id,
                "operator": rb.operator,
                "url": rb.url,
                "keyid": rb.keyid,
                "online": online,
                "last_seen": rfc3339(last_seen),
                "counts": {k: c.get(k, 0) for k in JOB_VERDICTS},
                "last_error": st.last_error if st else None,
                "status": st.status if st else None,
            }
        )
    return out


def _short(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v[k] for k in ("id", "operator", "last_seen", "online")} for v in views
    ]


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
    tail: dict[str, Any] = {"rebuilders": _short(views)}
    if request.query.get("proofs"):  # inclusion proofs from the log monitor (branch tlog)
        from coordinator.witness_setup import proofs_for

        tail["proofs"] = await proofs_for(app, bodies)
    body = _envelopes_response({"digest": digest}, bodies, tail)
    return web.Response(body=body, content_type="application/json")


async def get_package(request: web.Request) -> web.Response:
    try:
        eco = ecosystems.get(request.match_info["ecosystem"])
    except ecosystems.UnknownEcosystem as e:  # no such collection: 404, not 400
        return json_error(404, str(e))
    source, version = package_parts(request)
    app = request.app
    bodies = await app[STORE].envelopes_for_package(source, version)
    views = await rebuilder_views(app)
    head = {"package": {"ecosystem": eco.name, "name": source, "version": version}}
    tail: dict[str, Any] = {"rebuilders": _short(views)}
    if request.query.get("proofs"):  # inclusion proofs from the log monitor (branch tlog)
        from coordinator.witness_setup import proofs_for

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
    return web.json_response({"tampered": await request.app[STORE].tampered(limit=limit)})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    m = app[INGEST].metrics
    totals = await app[STORE].totals()
    views = await rebuilder_views(app)
    lines = [
        "# HELP rq_coordinator_received_total Attestation messages received, by source.",
        "# TYPE rq_coordinator_received_total counter",
    ]
    for source in ("mqtt", "http"):
        lines.append(f'rq_coordinator_received_total{{source="{source}"}} {m.received[source]}')
    lines += [
        "# HELP rq_coordinator_ingested_total Verified envelopes newly stored, by source.",
        "# TYPE rq_coordinator_ingested_total counter",
    ]
    for source in ("mqtt", "http"):
        lines.append(f'rq_coordinator_ingested_total{{source="{source}"}} {m.ingested[source]}')
    lines += [
        "# HELP rq_coordinator_duplicates_total Verified envelopes already stored.",
        "# TYPE rq_coordinator_duplicates_total counter",
        f"rq_coordinator_duplicates_total {m.duplicates}",
        "# HELP rq_coordinator_dropped_total Messages dropped before storing, by reason.",
        "# TYPE rq_coordinator_dropped_total counter",
    ]
    for reason in DROP_REASONS:
        lines.append(f'rq_coordinator_dropped_total{{reason="{reason}"}} {m.dropped[reason]}')
    lines += [
        "# HELP rq_coordinator_status_invalid_total Status messages that failed validation.",
        "# TYPE rq_coordinator_status_invalid_total counter",
        f"rq_coordinator_status_invalid_total {m.status_invalid}",
        "# HELP rq_coordinator_status_dropped_total Status messages dropped, by reason.",
        "# TYPE rq_coordinator_status_dropped_total counter",
    ]
    for why in STATUS_DROP_REASONS:
        lines.append(
            f'rq_coordinator_status_dropped_total{{reason="{why}"}} {m.status_dropped[why]}'
        )
    packets = app[MQTT].packets_dropped.counts if MQTT in app else None
    lines += [
        "# HELP rq_coordinator_mqtt_packets_dropped_total Malformed MQTT packets, by reason.",
        "# TYPE rq_coordinator_mqtt_packets_dropped_total counter",
    ]
    for why in PACKET_DROP_REASONS:
        n = packets[why] if packets is not None else 0
        lines.append(f'rq_coordinator_mqtt_packets_dropped_total{{reason="{why}"}} {n}')
    lines += [
        "# HELP rq_coordinator_stored_envelopes Envelopes in the database.",
        "# TYPE rq_coordinator_stored_envelopes gauge",
        f"rq_coordinator_stored_envelopes {totals['envelopes']}",
        "# HELP rq_coordinator_disagreements Disagreements recorded.",
        "# TYPE rq_coordinator_disagreements gauge",
        f"rq_coordinator_disagreements {totals['disagreements']}",
        "# HELP rq_coordinator_tampered_total Stored attestations reporting tampering.",
        "# TYPE rq_coordinator_tampered_total counter",
        f"rq_coordinator_tampered_total {m.tampered}",
        "# HELP rq_coordinator_ingest_queue Messages received and not yet checked.",
        "# TYPE rq_coordinator_ingest_queue gauge",
        f"rq_coordinator_ingest_queue {app[INGEST].queued()}",
        "# HELP rq_coordinator_mqtt_connected 1 while connected to the broker.",
        "# TYPE rq_coordinator_mqtt_connected gauge",
        f"rq_coordinator_mqtt_connected {int(MQTT in app and app[MQTT].connected.is_set())}",
        "# HELP rq_coordinator_rebuilder_online 1 when the rebuilder was heard from recently.",
        "# TYPE rq_coordinator_rebuilder_online gauge",
    ]
    for v in views:
        lines.append(f'rq_coordinator_rebuilder_online{{rebuilder="{_label(v["id"])}"}} '
                     f'{int(v["online"])}')
    lines += [
        "# HELP rq_coordinator_catchup_errors_total Failed HTTP catch-ups, by rebuilder.",
        "# TYPE rq_coordinator_catchup_errors_total counter",
    ]
    for v in views:
        lines.append(f'rq_coordinator_catchup_errors_total{{rebuilder="{_label(v["id"])}"}} '
                     f'{m.catchup_errors[v["id"]]}')
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


# ---- resources ---------------------------------------------------------------------------


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = await Store.open(config.database)
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
    from coordinator import dashboard  # the dashboard imports from this module
    from coordinator.batch import post_attestations_batch  # and so does the batch endpoint

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
    from coordinator.witness_setup import setup_witness  # the C2SP witness (ARCHITECTURE §4.9)

    setup_witness(app, config)
    return app
