"""``POST /v1/attestations:batch`` on a node: many artifacts' attestations in one round trip.

Asking a node about one .deb takes two GETs (by digest, by package); an upgrade of 300 .debs
checked against five rebuilders directly took 3000. The batch takes the coordinator's request
(docs/api.md) and answers, per query and in order, what those two GETs would have together::

    POST /v1/attestations:batch
    {"queries": [{"digest": "sha256:<hex>",
                  "package": {"ecosystem": "debian", "name": "hello", "version": "2.10-3"}}]}
    -> {"results": [{"digest": "sha256:<hex>", "attestations": [<envelope>...]}]}

Bounded like the coordinator's, and read by the same code (``verifier.batchwire``).
"""

from __future__ import annotations

from aiohttp import web

from verifier.batchwire import MAX_BATCH_BYTES, MAX_QUERIES, read_batch
from verifier.ecosystem import Ecosystem

__all__ = ["MAX_BATCH_BYTES", "MAX_QUERIES", "post_attestations_batch"]


def _node_ecosystem(name: object) -> Ecosystem:
    """The grammar of an ecosystem this node builds (``UnknownEcosystem`` naming them)."""
    from rebuilder import ecosystem as ecosystems

    return ecosystems.get(name).verifier


async def post_attestations_batch(request: web.Request) -> web.Response:
    from rebuilder.api import STORE_KEY

    queries = await read_batch(request, _node_ecosystem)
    if isinstance(queries, web.Response):
        return queries
    answers = await request.app[STORE_KEY].attestations_for_queries(
        [(q.digest, q.name, q.version) for q in queries])
    parts = [b'{"digest":"sha256:' + q.digest.encode() + b'","attestations":['
             + b",".join(envs) + b"]}"
             for q, envs in zip(queries, answers, strict=True)]
    return web.Response(body=b'{"results":[' + b",".join(parts) + b"]}",
                        content_type="application/json")
