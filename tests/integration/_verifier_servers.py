"""Real aiohttp servers on loopback that play rebuilders (honest, lying, slow, oversized) and a
coordinator, for the verifier's online tests and benchmarks. They speak docs/api.md."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support import free_port
from verifier.dsse import Envelope
from verifier.statement import RebuildStatement, RevocationStatement, parse_statement


@dataclass
class Behaviour:
    """How a fake node answers. ``stall`` never answers; ``oversize`` streams forever-ish."""

    envelopes: Sequence[bytes] = ()
    status: int = 200
    package_status: int = 200  # status of the package query alone (when status is 200)
    stall: bool = False
    delay: float = 0.0  # seconds before answering
    oversize: int = 0  # bytes of padding streamed before the JSON ends
    body: bytes | None = None  # answer exactly this instead
    batch: bool = False  # serve POST /v1/attestations:batch too (as current nodes do)
    batch_body: bytes | None = None  # answer the batch exactly this instead
    requests: list[str] = field(default_factory=list)


def _select(envelopes: Sequence[bytes], digest: str) -> list[dict[str, Any]]:
    """What a node returns for ?digest=: envelopes with that subject, and their revocations."""
    chosen: list[bytes] = []
    names: set[str] = set()
    parsed = [(raw, Envelope.from_bytes(raw)) for raw in envelopes]
    for raw, env in parsed:
        stmt = parse_statement(env.payload)
        if isinstance(stmt, RebuildStatement) and any(s.sha256 == digest for s in stmt.subjects):
            chosen.append(raw)
            names.update((env.digest(), env.payload_digest()))  # a v1 or a v2 revocation
    for raw, env in parsed:
        stmt = parse_statement(env.payload)
        if isinstance(stmt, RevocationStatement) and stmt.revoked in names:
            chosen.append(raw)
    return [json.loads(raw) for raw in chosen]


def create_app(b: Behaviour) -> web.Application:
    # A real node answers from an index; the fake memoizes so that benchmarks measure the client.
    memo: dict[tuple[str, tuple[bytes, ...]], list[dict[str, Any]]] = {}

    def select(digest: str) -> list[dict[str, Any]]:
        key = (digest, tuple(b.envelopes))
        if key not in memo:
            if len(memo) > 64:
                memo.clear()
            memo[key] = (
                _select(b.envelopes, digest) if digest else [json.loads(raw) for raw in b.envelopes]
            )
        return memo[key]

    async def answer(request: web.Request, doc: dict[str, Any]) -> web.StreamResponse:
        b.requests.append(request.path_qs)
        if b.stall:
            await asyncio.Event().wait()  # the client's timeout has to end this
        if b.delay:
            await asyncio.sleep(b.delay)
        if b.body is not None:
            return web.Response(body=b.body, status=b.status, content_type="application/json")
        if b.status != 200:
            return web.json_response({"error": "test"}, status=b.status)
        if b.oversize:
            resp = web.StreamResponse()
            await resp.prepare(request)
            await resp.write(b'{"attestations": [], "pad": "')
            chunk = b"x" * 65536
            for _ in range(b.oversize // len(chunk) + 1):
                await resp.write(chunk)
            await resp.write(b'"}')
            return resp
        return web.json_response(doc)

    async def attestations(request: web.Request) -> web.StreamResponse:
        digest = request.query.get("digest", "").removeprefix("sha256:")
        return await answer(request, {"digest": f"sha256:{digest}", "attestations": select(digest)})

    async def packages(request: web.Request) -> web.StreamResponse:
        if b.package_status != 200:
            b.requests.append(request.path_qs)
            return web.json_response({"error": "test"}, status=b.package_status)
        m = request.match_info
        doc = {
            "package": {"ecosystem": "debian", "name": m["name"], "version": m["version"]},
            "builds": [],
            "attestations": select(""),
        }
        return await answer(request, doc)

    async def batch(request: web.Request) -> web.StreamResponse:
        if b.batch_body is not None:
            b.requests.append(request.path_qs)
            return web.Response(body=b.batch_body, content_type="application/json")
        queries = (await request.json())["queries"]
        results = []
        for q in queries:
            digest = q["digest"].removeprefix("sha256:")
            chosen = select(digest) + [e for e in select("") if e not in select(digest)]
            results.append({"digest": q["digest"], "attestations": chosen})
        return await answer(request, {"results": results})

    app = web.Application()
    if b.batch:
        app.router.add_post("/v1/attestations:batch", batch)
    app.router.add_get("/v1/attestations", attestations)
    app.router.add_get("/v1/packages/debian/{name}/{version}", packages)
    return app


@asynccontextmanager
async def serving(behaviours: Sequence[Behaviour]) -> AsyncIterator[list[str]]:
    """Start one real server per behaviour on 127.0.0.1; yield their base URLs."""
    runners = []
    urls = []
    try:
        for b in behaviours:
            runner = web.AppRunner(create_app(b), shutdown_timeout=0.1)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
    finally:
        for runner in runners:
            await runner.cleanup()


@contextmanager
def serving_in_thread(behaviours: Sequence[Behaviour]) -> Iterator[list[str]]:
    """The same servers on their own event loop in a background thread."""
    loop = asyncio.new_event_loop()
    ready: Future[list[str]] = Future()
    stop = asyncio.Event()

    async def run() -> None:
        try:
            async with serving(behaviours) as urls:
                ready.set_result(urls)
                await stop.wait()
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e)
            raise
        finally:  # handlers of stalled requests outlive the runner: end them here
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=10)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
