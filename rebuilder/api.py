"""The node's public, read-only HTTP API (docs/api.md, "Rebuilder node").

``create_app(config)`` returns an aiohttp application; it opens its own read-only database
connection in a cleanup context unless the daemon hands it its store. Every query parameter is
validated (400 with ``{"error": ...}``); envelopes are spliced into responses as the exact
canonical bytes that were signed and stored.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from rebuilder import __version__
from rebuilder import ecosystem as ecosystems
from rebuilder.batch import post_attestations_batch
from rebuilder.config import Config
from rebuilder.db import Store
from rebuilder.intoto import link_for, link_signer, sign_link, sslib_key
from rebuilder.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from rebuilder.metrics import render_metrics
from rebuilder.recovery import DiskGuard, MiB
from rebuilder.tlog_http import add_log_routes, log_document, proofs_for
from verifier.dsse import Envelope
from verifier.errors import BadDataError
from verifier.keys import keyid, load_private_key, public_key_pem
from verifier.statement import RebuildStatement, parse_statement

__all__ = [
    "CONFIG_KEY",
    "REPORT_CSP",
    "STORE_KEY",
    "create_app",
]

CONFIG_KEY = web.AppKey("config", Config)
STORE_KEY = web.AppKey("store", Store)
NODE_KEY = web.AppKey("node", dict)
LINK_SIGNER_KEY = web.AppKey("link_signer", object)
GUARD_KEY = web.AppKey("disk_guard", DiskGuard)

REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_LOG_SERVE = 64 * 1024 * 1024
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_CURSOR = re.compile(r"0|[1-9][0-9]{0,17}")
_ID = re.compile(r"[1-9][0-9]{0,17}")
_REPORT = re.compile(r"([0-9]{1,18}-[0-9]{1,9}-[0-9]{1,6})\.(html|txt)")
_JSON = "application/json"


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, content_type=_JSON,
                        text=json.dumps({"error": message}))


def _json(body: Any) -> web.Response:
    return web.Response(content_type=_JSON, text=json.dumps(body, separators=(",", ":")))


def _raw_json(body: bytes) -> web.Response:
    return web.Response(content_type=_JSON, body=body)


def _envelopes(envs: list[bytes]) -> bytes:
    return b"[" + b",".join(envs) + b"]"


class BadRequest(BadDataError):
    """The client's request is malformed; answered 400 with the message."""

    def __init__(self, message: str) -> None:
        super().__init__("request", message, message=message)


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except BadRequest as e:
        response = _error(400, str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = _error(e.status, e.reason)
        if "Allow" in e.headers:
            response.headers["Allow"] = e.headers["Allow"]
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _package(ecosystem: str, source: str, version: str, arch: str | None = None
             ) -> dict[str, str]:
    d = {"ecosystem": ecosystem, "name": source, "version": version}
    if arch is not None:
        d["architecture"] = arch
    return d


def _one_param(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"query parameter {name!r} given {len(values)} times")
    return values[0] if values else None


async def attestations(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    unknown = set(request.query) - {"digest", "since", "limit", "proofs"}
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {sorted(unknown)}")
    digest = _one_param(request, "digest")
    since = _one_param(request, "since")
    limit_s = _one_param(request, "limit")
    if digest is not None:
        if since is not None or limit_s is not None:
            raise BadRequest("use either digest= or since=/limit=, not both")
        m = _DIGEST.fullmatch(digest)
        if not m:
            raise BadRequest("digest must be sha256:<64 lowercase hex characters>")
        envs = await store.attestations_by_digest(m.group(1))
        proofs = b""
        if _one_param(request, "proofs") is not None:
            proofs = b',"proofs":' + await proofs_for(request.app, envs)
        return _raw_json(b'{"digest":"' + digest.encode() + b'","attestations":'
                         + _envelopes(envs) + proofs + b"}")
    if since is None:
        raise BadRequest("give digest=sha256:<hex> or since=<cursor> (since=0 from the start)")
    if not _CURSOR.fullmatch(since):
        raise BadRequest("since must be a non-negative integer cursor")
    limit = DEFAULT_LIMIT
    if limit_s is not None:
        if not _CURSOR.fullmatch(limit_s) or not 1 <= int(limit_s) <= MAX_LIMIT:
            raise BadRequest(f"limit must be an integer in 1..{MAX_LIMIT}")
        limit = int(limit_s)
    rows = await store.attestations_since(int(since), limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(rows[-1].seq) if rows else since
    items = b",".join(b'{"cursor":"%d","envelope":%s}' % (r.seq, r.envelope) for r in rows)
    return _raw_json(b'{"attestations":[' + items + b'],"next":"' + next_cursor.encode()
                     + b'","more":' + (b"true" if more else b"false") + b"}")


async def _build_json(request: web.Request, job_id: int) -> dict[str, Any] | None:
    store = request.app[STORE_KEY]
    config = request.app[CONFIG_KEY]
    job = await store.job(job_id)
    if job is None:
        return None
    base = config.node.public_url
    build = await store.latest_build(job_id)
    outputs: list[dict[str, Any]] = []
    verdict = failure = finished_at = duration = envelope = statement = None
    log_url = None
    if build is not None and job.state in ("done", "failed"):
        verdict, failure = build["verdict"], build["failure"]
        finished_at, duration = build["finished_at"], build["duration_s"]
        envelope, statement = build["envelope_sha256"], build["payload_sha256"]
        if build["log_path"]:
            log_url = f"{base}/v1/builds/{job_id}/log"
        for o in await store.outputs(build["id"]):
            rid = o["report_id"]
            outputs.append({
                "name": o["name"], "rebuilt": o["rebuilt"], "buildinfo": o["buildinfo"],
                "repository": o["repository"], "verdict": o["verdict"],
                "report_html_url": f"{base}/v1/reports/{rid}.html" if o["report_html"] else None,
                "report_txt_url": f"{base}/v1/reports/{rid}.txt" if o["report_txt"] else None,
            })
    return {
        "id": job_id,
        "package": _package(ecosystems.repository_ecosystem(
            request.app[CONFIG_KEY].repository(job.repository)), job.source, job.version,
            job.arch),
        "repository": job.repository,
        "status": job.state,
        "attempts": job.attempts,
        "verdict": verdict,
        "failure": failure,
        "queued_at": job.queued_at,
        "started_at": job.started_at,
        "finished_at": finished_at,
        "duration_s": duration,
        "log_url": log_url,
        "outputs": outputs,
        "envelope_sha256": envelope,
        "statement_sha256": statement,
    }


def _build_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not _ID.fullmatch(raw):
        raise BadRequest("build id must be a positive integer")
    return int(raw)


async def build(request: web.Request) -> web.Response:
    body = await _build_json(request, _build_id(request))
    if body is None:
        return _error(404, "no such build")
    return _json(body)


def _read_capped(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        return f.read(limit)


async def build_log(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    job_id = _build_id(request)
    row = await store.latest_build(job_id)
    if row is None or not row["log_path"]:
        return _error(404, "no log for that build")
    try:
        # Stored relative to the state directory, so the directory can move.
        path = request.app[CONFIG_KEY].node.state_dir / row["log_path"]
        data = await asyncio.to_thread(_read_capped, path, MAX_LOG_SERVE)
    except OSError:
        return _error(404, "the log file is gone")
    return web.Response(body=data, content_type="text/plain", charset="utf-8")


async def report(request: web.Request) -> web.Response:
    m = _REPORT.fullmatch(request.match_info["name"])
    if not m:
        raise BadRequest("report name must be <id>.html or <id>.txt")
    row = await request.app[STORE_KEY].report(m.group(1))
    path = row and row["report_html" if m.group(2) == "html" else "report_txt"]
    if not path:
        return _error(404, "no such report")
    limit = request.app[CONFIG_KEY].diffoscope.max_report_mb * 1024 * 1024 + 4096
    try:
        data = await asyncio.to_thread(
            _read_capped, request.app[CONFIG_KEY].node.state_dir / path, limit
        )
    except OSError:
        return _error(404, "the report file is gone")
    if m.group(2) == "txt":
        return web.Response(body=data, content_type="text/plain", charset="utf-8")
    resp = web.Response(body=data, content_type="text/html", charset="utf-8")
    resp.headers["Content-Security-Policy"] = REPORT_CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


async def package(request: web.Request) -> web.Response:
    eco, name, version = (request.match_info[k] for k in ("ecosystem", "name", "version"))
    try:
        ecosystem = ecosystems.get(eco)
    except ecosystems.UnknownEcosystem as e:  # no such collection here: 404, not 400
        return _error(404, str(e))
    if (problem := ecosystem.verifier.lookup_problem(name, version)) is not None:
        raise BadRequest(problem)
    store = request.app[STORE_KEY]
    builds = []
    for job in await store.jobs_for_package(name, version):
        b = await _build_json(request, job.id)
        if b is not None:
            builds.append(b)
    envs = await store.attestations_for_package(name, version)
    head = json.dumps({"package": _package(ecosystem.name, name, version), "builds": builds},
                      separators=(",", ":")).encode()
    proofs = b""
    if request.query.get("proofs"):  # inclusion proofs (rebuilder/tlog_http.py)
        proofs = b',"proofs":' + await proofs_for(request.app, envs)
    return _raw_json(head[:-1] + b',"attestations":' + _envelopes(envs) + proofs + b"}")


async def intoto_link(request: web.Request) -> web.Response:
    """apt-transport-in-toto's ``/sources/<binary name>/<binary version>/metadata``."""
    name, version = request.match_info["name"], request.match_info["version"]
    # APT writes an epoch's ':' as %3a in the file name the transport builds this URL from;
    # aiohttp has already decoded it.
    # apt-transport-in-toto is Debian's client: binary name and version in Debian's grammar
    if (problem := ecosystems.get("debian").verifier.lookup_problem(name, version)) is not None:
        raise BadRequest(problem)
    envs = await request.app[STORE_KEY].unrevoked_rebuilds_for_deb(name, version)
    statements: list[RebuildStatement] = []
    for raw in envs:
        try:
            st = parse_statement(Envelope.from_bytes(raw).payload)
        except BadDataError:  # our own store: cannot happen unless the database was edited
            continue
        if isinstance(st, RebuildStatement):
            statements.append(st)
    link = link_for(statements, name, version)
    if link is None:
        return _error(404, f"this rebuilder has not reproduced {name} {version}")
    signer = request.app[LINK_SIGNER_KEY]
    body = await asyncio.to_thread(sign_link, link, signer)  # type: ignore[arg-type]
    return _raw_json(body)


async def node(request: web.Request) -> web.Response:
    return _json(request.app[NODE_KEY])


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[STORE_KEY].schema_version()
    except sqlite3.Error as e:
        return _error(503, f"database unavailable: {e}")
    return _json({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    disk = await asyncio.to_thread(request.app[GUARD_KEY].status)
    text = await render_metrics(request.app[STORE_KEY], request.app[CONFIG_KEY].node.id, disk)
    resp = web.Response(text=text)
    resp.headers["Content-Type"] = METRICS_CONTENT_TYPE
    return resp


def node_document(
    config: Config, public_key: str, kid: str, intoto_key: dict[str, Any] | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": config.node.id,
        "operator": config.node.operator,
        "url": config.node.public_url,
        "public_key": public_key,
        "keyid": kid,
        "version": __version__,
    }
    if intoto_key is not None:
        # apt-transport-in-toto's layouts name keys by securesystemslib's keyid, not ours.
        doc["intoto"] = {"keyid": intoto_key["keyid"], "key": intoto_key}
    return doc


def create_app(config: Config, *, store: Store | None = None,
               guard: DiskGuard | None = None) -> web.Application:
    """The API application; it opens its own read-only store unless ``store`` is given.

    ``guard`` is the workers' ``DiskGuard`` (so /metrics shows a pause a full disk caused);
    without it /metrics looks at the free space alone."""
    app = web.Application(middlewares=[_errors], client_max_size=4096)
    app[CONFIG_KEY] = config
    app[GUARD_KEY] = guard or DiskGuard(config.node.state_dir, config.node.min_free_mb * MiB)
    key = load_private_key(config.node.signing_key)
    sslib = sslib_key(key.public_key())
    app[NODE_KEY] = node_document(config, public_key_pem(key.public_key()),
                                  keyid(key.public_key()),
                                  {"keyid": sslib.keyid, **sslib.to_dict()})
    app[NODE_KEY]["log"] = log_document(config, key.public_key())
    # The link signer holds the key: links are derived on request from what this node signed.
    app[LINK_SIGNER_KEY] = link_signer(key)
    del key

    async def open_store(app: web.Application) -> AsyncIterator[None]:
        if store is not None:
            app[STORE_KEY] = store
            yield
            return
        own = await Store.open(config.node.db_path, readonly=True)
        app[STORE_KEY] = own
        yield
        await own.close()

    app.cleanup_ctx.append(open_store)
    app.router.add_get("/v1/attestations", attestations)
    app.router.add_post("/v1/attestations:batch", post_attestations_batch)
    app.router.add_get("/v1/packages/{ecosystem}/{name}/{version}", package)
    app.router.add_get("/v1/builds/{id}", build)
    app.router.add_get("/v1/builds/{id}/log", build_log)
    app.router.add_get("/v1/reports/{name}", report)
    app.router.add_get("/v1/node", node)
    app.router.add_get("/sources/{name}/{version}/metadata", intoto_link)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    add_log_routes(app, config, STORE_KEY)
    return app
