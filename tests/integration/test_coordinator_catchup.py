"""HTTP catch-up against hostile or broken rebuilders: one named test per attack. Each bad
rebuilder is logged and skipped; the well-behaved one is caught up with all the same."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from coordinator.app import CATCHUP, INGEST, STORE, create_app
from coordinator.config import Limits, load_config
from tests.support import free_port
from tests.unit.coordinator.factory import Signer, StandInNode, coordinator_toml, serving, sha

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response({"attestations": [], "next": "0", "more": False})


async def _huge(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    for _ in range(300):  # 300 KiB, no Content-Length, over the test's 64 KiB cap
        await resp.write(b" " * 1024)
    return resp


def _fixed(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, status=status, headers=headers,
                            content_type="application/json")
    return handler


ATTACKS: dict[str, Handler] = {
    "times out": _slow,
    "oversized page": _huge,
    "announces oversized page": _fixed(b"{}", headers={"Content-Length": "999999999"}),
    "not json": _fixed(b"<html>hello</html>"),
    "duplicate keys": _fixed(b'{"attestations": [], "attestations": [], "next": "1", '
                             b'"more": false}'),
    "cursor with a path": _fixed(b'{"attestations": [], "next": "../../etc", "more": false}'),
    "more is not a boolean": _fixed(b'{"attestations": [], "next": "1", "more": "yes"}'),
    "entries not objects": _fixed(b'{"attestations": [1, 2], "next": "2", "more": false}'),
    "server error": _fixed(b'{"error": "down"}', status=500),
    "redirect elsewhere": _fixed(b"", status=302, headers={"Location": "http://127.0.0.1:9/"}),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_hostile_rebuilder_is_skipped(tmp_path: Path, attack: str) -> None:
    good, bad = Signer("rb-good"), Signer("rb-bad")
    node_good = StandInNode(good, envelopes=[
        good.rebuild(f"p{i}", "1", {f"p{i}_1_all.deb": sha(str(i))}) for i in range(3)])
    bad_app = web.Application()
    bad_app.router.add_get("/v1/attestations", ATTACKS[attack])
    async with serving(node_good.app()) as ug, serving(bad_app) as ub:
        good.url, bad.url = ug, ub
        port = free_port()
        config = load_config(coordinator_toml(tmp_path, [good, bad], None, port))
        config = dataclasses.replace(config, limits=Limits(
            max_catchup_response_bytes=64 * 1024, catchup_timeout=1.0))
        app = create_app(config)
        async with serving(app, port):
            result = await app[CATCHUP].round()
            assert result == {"rb-good": 0, "rb-bad": 0} or result["rb-bad"] == 0
            assert await app[STORE].count_for_rebuilder("rb-good") == 3
            assert await app[STORE].count_for_rebuilder("rb-bad") == 0
            assert app[INGEST].metrics.catchup_errors["rb-bad"] >= 1
            assert await app[STORE].cursor("rb-bad") == "0"
            states = await app[STORE].rebuilder_states()
            assert states["rb-bad"].last_error


async def test_paging_follows_next_until_more_is_false(tmp_path: Path) -> None:
    alpha = Signer("rb-alpha")
    node = StandInNode(alpha, envelopes=[
        alpha.rebuild(f"p{i}", "1", {f"p{i}_1_all.deb": sha(str(i))}) for i in range(25)])
    async with serving(node.app()) as url:
        alpha.url = url
        port = free_port()
        config = load_config(coordinator_toml(tmp_path, [alpha], None, port))
        config = dataclasses.replace(config, limits=Limits(catchup_page_limit=10))
        app = create_app(config)
        async with serving(app, port):
            await app[CATCHUP].round()
            assert await app[STORE].count_for_rebuilder("rb-alpha") == 25
            assert await app[STORE].cursor("rb-alpha") == "25"
            before = node.requests
            node.envelopes.append(alpha.rebuild("late", "1", {"late_1_all.deb": sha("l")}))
            assert await app[CATCHUP].round() == {"rb-alpha": 1}
            assert node.requests - before == 1  # resumed from the cursor, not from 0
            # Replayed pages change nothing: the same envelopes are one row each.
            await app[STORE].store_batch([], cursor=("rb-alpha", "0"))
            assert await app[CATCHUP].round() == {"rb-alpha": 0}
            assert app[INGEST].metrics.duplicates == 26
            doc = json.loads((await app[STORE].envelopes_for_package("late", "1"))[0])
            assert doc["payloadType"] == "application/vnd.in-toto+json"


async def test_periodic_rounds_run_by_themselves(tmp_path: Path) -> None:
    from tests.support import wait_for

    alpha = Signer("rb-alpha")
    node = StandInNode(alpha)
    async with serving(node.app()) as url:
        alpha.url = url
        port = free_port()
        config = load_config(coordinator_toml(tmp_path, [alpha], None, port, catchup_interval=1))
        app = create_app(config)
        async with serving(app, port):
            await wait_for(lambda: _asked(node, 1), 10, "the first round at start")
            node.envelopes.append(alpha.rebuild("late", "1", {"late_1_all.deb": sha("l")}))

            async def stored() -> bool:
                return await app[STORE].count_for_rebuilder("rb-alpha") == 1
            await wait_for(stored, 10, "a scheduled round to fetch the new envelope")
            await wait_for(lambda: _asked(node, 3), 10, "rounds to keep coming")


async def _asked(node: StandInNode, n: int) -> bool:
    return node.requests >= n
