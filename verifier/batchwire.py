"""The ``POST /v1/attestations:batch`` request, read the same way by node and coordinator.

Both answer the same request (docs/api.md): at most ``MAX_QUERIES`` queries in at most
``MAX_BATCH_BYTES`` of JSON, each an artifact's digest and the package it says it was built
from. ``read_batch`` reads and checks it, giving the queries or the error answer (400, 413 or 415
naming what is wrong)::

    queries = await read_batch(request, ecosystems.get)
    if isinstance(queries, web.Response):
        return queries
    for q in queries: ...   # Query(digest hex, ecosystem, name, version)

aiohttp is imported on use only: ``import verifier`` stays free of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from verifier.ecosystem import Ecosystem, UnknownEcosystem

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["MAX_BATCH_BYTES", "MAX_QUERIES", "Query", "error_response", "parse_queries",
           "read_batch"]

MAX_QUERIES = 1000
MAX_BATCH_BYTES = 512 * 1024
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class Query(NamedTuple):
    digest: str  # hex
    ecosystem: str
    name: str
    version: str


def parse_queries(doc: Any, ecosystem_of: Callable[[object], Ecosystem]) -> list[Query] | str:
    """The queries of a decoded request, or what is wrong with it. ``ecosystem_of`` names the
    ecosystems this server answers for (``UnknownEcosystem`` for any other)."""
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
            ecosystem = ecosystem_of(pkg["ecosystem"])
        except UnknownEcosystem as e:
            return f"{where}: {e}"
        if (problem := ecosystem.lookup_problem(pkg["name"], pkg["version"])) is not None:
            return f"{where}: {problem}"
        out.append(Query(m.group(1), ecosystem.name, pkg["name"], pkg["version"]))
    return out


def error_response(status: int, message: str) -> web.Response:
    from aiohttp import web

    return web.Response(status=status, content_type="application/json",
                        text=json.dumps({"error": message}))


async def read_batch(request: web.Request,
                     ecosystem_of: Callable[[object], Ecosystem]) -> list[Query] | web.Response:
    """The request's queries, or the error answer to send instead."""
    if request.content_type != "application/json":
        return error_response(415, "send the queries as application/json")
    too_large = error_response(413, f"the batch is over {MAX_BATCH_BYTES} bytes")
    if (request.content_length or 0) > MAX_BATCH_BYTES:
        return too_large
    body = bytearray()
    while chunk := await request.content.read(64 * 1024):
        body += chunk
        if len(body) > MAX_BATCH_BYTES:
            return too_large
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        return error_response(400, f"the body is not JSON: {type(e).__name__}")
    queries = parse_queries(doc, ecosystem_of)
    if isinstance(queries, str):
        return error_response(400, queries)
    return queries
