"""The coordinator's typed application state and the request helpers its handlers share.

``app.py`` (the API and the resources), ``dashboard.py`` and ``batch.py`` read the same
``web.AppKey`` slots and validate request parameters the same way; keeping both here lets each
handler module import them without importing ``app``, which imports the handler modules::

    store = request.app[STORE]
    limit = int_param(request, "limit", 100, 1, 1000)
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from coordinator.catchup import CatchUp
from coordinator.config import CoordinatorConfig
from coordinator.mqtt import MqttLink
from coordinator.service import Ingest
from coordinator.store import Store, rfc3339
from verifier import ecosystem as ecosystems
from verifier.verdicts import JOB_VERDICTS

__all__ = [
    "CATCHUP",
    "CONFIG",
    "DIGEST_PARAM",
    "HTTP",
    "INGEST",
    "MQTT",
    "PACKAGE_PART",
    "SCHEDULER",
    "STORE",
    "VIEWS",
    "bad_request",
    "ecosystem_part",
    "int_param",
    "json_error",
    "package_parts",
    "rebuilder_views",
    "short_views",
]

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


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": message}), content_type="application/json"
    )


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 9 or not low <= int(raw) <= high:
        raise bad_request(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def ecosystem_part(request: web.Request) -> str:
    """The ``{ecosystem}`` of the route (Debian for routes without one), or 404 naming it."""
    ecosystem = request.match_info.get("ecosystem", "debian")
    try:
        return ecosystems.get(ecosystem).name
    except ecosystems.UnknownEcosystem:  # no such collection: 404, not 400
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"unknown ecosystem {ecosystem[:40]!r}: this coordinator"
                                      f" stores {', '.join(ecosystems.names())}"}),
            content_type="application/json",
        ) from None


def package_parts(request: web.Request) -> tuple[str, str]:
    source = request.match_info["source"]
    version = request.match_info["version"]
    for what, value in (("source", source), ("version", version)):
        if not PACKAGE_PART.fullmatch(value):
            raise bad_request(f"{what} {value[:80]!r} is not a Debian package {what}")
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


def short_views(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v[k] for k in ("id", "operator", "last_seen", "online")} for v in views
    ]
