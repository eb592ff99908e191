"""``POST /v1/attestations:batch``: the answers to many artifacts in one round trip.

An upgrade checks hundreds of .debs; asking the coordinator once per .deb (twice: by digest and
by package) costs a round trip each. The batch takes up to ``MAX_QUERIES`` artifacts, each named
by its digest and the source package it says it was built from, and answers, in the same order,
what the two GET queries would have: every envelope with a subject of that digest, every envelope
of that source version, and their revocations (docs/api.md)::

    POST /v1/attestations:batch
    {"queries": [{"digest": "sha256:<hex>",
                  "package": {"ecosystem": "debian", "name": "hello", "version": "2.10-3"}}]}
    -> {"results": [{"digest": "sha256:<hex>", "attestations": [<envelope>...]}],
        "rebuilders": [...]}

The verifier checks every envelope as it does for the GET queries: a batch answer is no more
trusted than any other.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from coordinator.appstate import DIGEST_PARAM, STORE, rebuilder_views, short_views
from verifier import ecosystem as ecosystems

__all__ = ["MAX_BATCH_BYTES", "MAX_QUERIES", "post_attestations_batch"]

MAX_QUERIES = 1000
MAX_BATCH_BYTES = 512 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        text=json.dumps({"error": message}))


def _queries(doc: Any) -> list[tuple[str, str, str, str]] | str:
    """(digest hex, ecosystem, source, version) per query, or what is wrong with the request."""
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
        m = DIGEST_PARAM.fullmatch(digest) if isinstance(digest, str) else None
        if m is None:
            return f"{where}: digest must be sha256: followed by 64 lowercase hex digits"
        if not isinstance(pkg, dict) or set(pkg) != {"ecosystem", "name", "version"}:
            return f'{where}: package must be {{"ecosystem", "name", "version"}}'
        try:
            ecosystem = ecosystems.get(pkg["ecosystem"])
        except ecosystems.UnknownEcosystem as e:
            return f"{where}: {e}"
        if (problem := ecosystem.lookup_problem(pkg["name"], pkg["version"])) is not None:
            return f"{where}: {problem}"
        out.append((m.group(1), ecosystem.name, pkg["name"], pkg["version"]))
    return out


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    body = bytearray()
    while chunk := await request.content.read(64 * 1024):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def post_attestations_batch(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        return _error(415, "send the queries as application/json")
    raw = await _read_capped(request, MAX_BATCH_BYTES)
    if raw is None:
        return _error(413, f"the batch is over {MAX_BATCH_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        return _error(400, f"the body is not JSON: {type(e).__name__}")
    queries = _queries(doc)
    if isinstance(queries, str):
        return _error(400, queries)
    store = request.app[STORE]
    parts: list[bytes] = []
    # a few statements for the whole batch, not two or three per query
    by_digest = await store.envelopes_for_digests([q[0] for q in queries])
    by_package = await store.envelopes_for_packages([q[1:] for q in queries])
    for digest, eco, source, version in queries:
        bodies = list(by_digest[digest])
        seen = set(bodies)
        bodies += [b for b in by_package[(eco, source, version)] if b not in seen]
        parts.append(b'{"digest":"sha256:' + digest.encode() + b'","attestations":['
                     + b",".join(bodies) + b"]}")
    views = await rebuilder_views(request.app)
    tail = json.dumps({"rebuilders": short_views(views)}, separators=(",", ":"))[1:]
    body = b'{"results":[' + b",".join(parts) + b"]," + tail.encode()
    return web.Response(body=body, content_type="application/json")
