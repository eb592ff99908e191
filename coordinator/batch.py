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

from aiohttp import web

from coordinator.appstate import STORE, rebuilder_views, short_views
from verifier import ecosystem as ecosystems
from verifier.batchwire import MAX_BATCH_BYTES, MAX_QUERIES, read_batch

__all__ = ["MAX_BATCH_BYTES", "MAX_QUERIES", "post_attestations_batch"]


async def post_attestations_batch(request: web.Request) -> web.Response:
    queries = await read_batch(request, ecosystems.get)
    if isinstance(queries, web.Response):
        return queries
    store = request.app[STORE]
    parts: list[bytes] = []
    # a few statements for the whole batch, not two or three per query
    by_digest = await store.envelopes_for_digests([q.digest for q in queries])
    by_package = await store.envelopes_for_packages(
        [(q.ecosystem, q.name, q.version) for q in queries])
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
