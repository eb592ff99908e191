"""HTTP side of the node's log: ``<public url>/log/checkpoint`` and ``/log/tile/...`` served
from the files ``rebuilder.tlog`` writes, the ``log`` member of ``GET /v1/node``, and inclusion
proofs for ``/v1/attestations?digest=...&proofs=1`` (docs/api.md)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from rebuilder.config import Config
from rebuilder.tlog import LogSettings, NodeLog
from verifier.errors import BadDataError
from verifier.keys import Ed25519PublicKey
from verifier.tlog.note import NoteVerifier
from verifier.tlog.tiles import TILE_WIDTH, parse_tile_path

__all__ = ["add_log_routes", "log_document", "log_settings", "proofs_for"]

LOG_VIEW_KEY = web.AppKey("log_view", NodeLog)
_CONFIG_KEY = web.AppKey("log_config", Config)
MAX_TILE_BYTES = TILE_WIDTH * 32
MAX_BUNDLE_BYTES = TILE_WIDTH * (2 + 0xFFFF)


def log_settings(config: Config) -> LogSettings:
    return LogSettings(origin=config.log_origin, url=config.log_url, directory=config.log_dir,
                       checkpoint_interval=float(config.log.checkpoint_interval))


def log_document(config: Config, key: Ed25519PublicKey) -> dict[str, str]:
    """``{"origin", "url", "vkey"}``: the log's checkpoint origin, URL prefix and the
    signed-note verifier key of its checkpoints (the node's own Ed25519 key, named origin)."""
    return {"origin": config.log_origin, "url": config.log_url,
            "vkey": NoteVerifier.ed25519(config.log_origin, key).vkey}


def _read(path: Path, limit: int) -> bytes | None:
    try:
        with path.open("rb") as f:
            return f.read(limit + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None


async def _checkpoint(request: web.Request) -> web.Response:
    data = await asyncio.to_thread(_read, request.app[_CONFIG_KEY].log_dir / "checkpoint",
                                   64 * 1024)
    if data is None:
        raise web.HTTPNotFound(reason="the log has no checkpoint yet")
    resp = web.Response(body=data, content_type="text/plain", charset="utf-8")
    resp.headers["Cache-Control"] = "max-age=2"
    return resp


async def _tile(request: web.Request) -> web.Response:
    tail = "tile/" + request.match_info["tail"]
    try:
        level, _, _ = parse_tile_path(tail)
    except BadDataError as e:
        raise web.HTTPNotFound(reason=e.reason) from e
    limit = MAX_BUNDLE_BYTES if level is None else MAX_TILE_BYTES
    # parse_tile_path admits only digits, 'x', '.p' and '/', so the path stays in the log dir.
    data = await asyncio.to_thread(_read, request.app[_CONFIG_KEY].log_dir / tail, limit)
    if data is None:
        raise web.HTTPNotFound(reason="no such tile")
    resp = web.Response(body=data, content_type="application/octet-stream")
    resp.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return resp


def add_log_routes(app: web.Application, config: Config, store_key: Any) -> None:
    app[_CONFIG_KEY] = config

    async def view(app: web.Application) -> Any:
        app[LOG_VIEW_KEY] = NodeLog(app[store_key], log_settings(config), None)
        yield

    app.cleanup_ctx.append(view)
    app.router.add_get("/log/checkpoint", _checkpoint)
    app.router.add_get("/log/tile/{tail:.+}", _tile)


async def proofs_for(app: web.Application, envelopes: list[bytes]) -> bytes:
    """JSON object: envelope sha256 -> inclusion proof in the latest checkpoint (or null when
    the envelope is not in a checkpoint yet)."""
    view = app[LOG_VIEW_KEY]
    out: dict[str, Any] = {}
    for env in envelopes:
        digest = hashlib.sha256(env).hexdigest()
        out[digest] = await view.proof_for(digest)
    return json.dumps(out, separators=(",", ":")).encode()
