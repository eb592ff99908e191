"""``POST /v1/attestations:batch`` on a node: many artifacts' attestations in one round trip.

Asking a node about one .deb takes two GETs (by digest, by package); an upgrade of 300 .debs
checked against five rebuilders directly took 3000. The batch takes the coordinator's request
(docs/api.md) and answers, per query and in order, what those two GETs would have together::

    POST /v1/attestations:batch
    {"queries": [{"digest": "sha256:<hex>",
                  "package": {"ecosystem": "debian", "name": "hello", "version": "2.10-3"}}]}
    -> {"results": [{"digest": "sha256:<hex>", "attestations": [<envelope>...]}]}

Bounded like the coordinator's: at most ``MAX_QUERIES`` queries in ``MAX_BATCH_BYTES``.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

__all__ = ["MAX_BATCH_BYTES", "MAX_QUERIES", "post_attestations_batch"]

MAX_QUERIES = 1000
MAX_BATCH_BYTES = 512 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        text=json.dumps({"error": message}))


def parse_queries(doc: Any) -> list[tuple[str, str, str]] | str:
    """(digest hex, source, version) per query, or what is wrong with the request."""
    from rebuilder import ecosystem as ecosystems
    from rebuilder.api import _DIGEST

    if not isinstance(doc, dict) or set(doc) != {"queries"} or not isinstance(doc["queries"],
                                                                             list):
        return 'the body must be {"queries": [...]}'
    queries = doc["queries"]
    if not 1 <= len(queries) <= MAX_QUERIES:
        return f"give 1 to {MAX_QUERIES} queries, not {len(queries)}"
    out = []
    for i, q in enumerate(queries):
        where = f"query {i}"
        if not isinstance(q, dict) or set(q) != {"digest", "package"}:
            return f'{where} must be {{"digest": ..., "package": {{...}}}}'
        digest, pkg = q["digest"], q["package"]
        m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
        if m is None:
            return f"{where}: digest must be sha256: followed by 64 lowercase hex digits"
        if not isinstance(pkg, dict) or set(pkg) != {"ecosystem", "name", "version"}:
            return f'{where}: package must be {{"ecosystem", "name", "version"}}'
        try:
            ecosystem = ecosystems.get(pkg["ecosystem"])
        except ecosystems.UnknownEcosystem as e:
            return f"{where}: {e}"
        if (problem := ecosystem.verifier.lookup_problem(pkg["name"], pkg["version"])):
            return f"{where}: {problem}"
        out.append((m.group(1), pkg["name"], pkg["version"]))
    return out


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    body = bytearray()
    while chunk := await request.content.read(64 * 1024):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def post_attestations_batch(request: web.Request) -> web.Response:
    from rebuilder.api import STORE_KEY

    if request.content_type != "application/json":
        return _error(415, "send the queries as application/json")
    if (request.content_length or 0) > MAX_BATCH_BYTES:
        return _error(413, f"the batch is over {MAX_BATCH_BYTES} bytes")
    raw = await _read_capped(request, MAX_BATCH_BYTES)
    if raw is None:
        return _error(413, f"the batch is over {MAX_BATCH_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        return _error(400, f"the body is not JSON: {type(e).__name__}")
    queries = parse_queries(doc)
    if isinstance(queries, str):
        return _error(400, queries)
    answers = await request.app[STORE_KEY].attestations_for_queries(queries)
    parts = [b'{"digest":"sha256:' + digest.encode() + b'","attestations":['
             + b",".join(envs) + b"]}"
             for (digest, _, _), envs in zip(queries, answers, strict=True)]
    return web.Response(body=b'{"results":[' + b",".join(parts) + b"]}",
                        content_type="application/json")
