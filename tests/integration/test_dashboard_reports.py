"""The dashboard's report proxy and pages against hostile input: one test per attack."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import aiohttp
from aiohttp import web

from coordinator.app import CATCHUP, create_app
from coordinator.config import Limits, load_config
from coordinator.dashboard import PAGE_CSP, REPORT_CSP
from tests.support import free_port
from tests.unit.coordinator.factory import Signer, StandInNode, coordinator_toml, serving, sha

DEB = "a_1_all.deb"


async def _setup(tmp_path: Path, report_urls: dict[str, str], node: StandInNode, port: int,
                 **limits: float) -> web.Application:
    signer = node.signer
    node.envelopes = [
        signer.rebuild(f"p-{name}", "1", {f"p-{name}_1_all.deb": sha(name)},
                       upstream={f"p-{name}_1_all.deb": sha("published")}, report_url=url)
        for name, url in report_urls.items()
    ]
    config = load_config(coordinator_toml(tmp_path, [signer], None, port))
    return create_app(dataclasses.replace(config, limits=Limits(**limits)))


async def _report_path(s: aiohttp.ClientSession, base: str, name: str) -> str:
    async with s.get(f"{base}/packages/p-{name}/1") as r:
        html = await r.text()
    href = html.split('class="mismatch-link" href="')[1].split('"')[0]
    return href.replace("/mismatch/", "/reports/")


async def test_report_proxy_attacks(tmp_path: Path) -> None:
    signer = Signer("rb-alpha")
    node = StandInNode(signer)
    node.reports["ok"] = "<p>fine report</p>"
    node.reports["big"] = "x" * 50_000
    other = web.Application()

    async def internal(request: web.Request) -> web.Response:
        return web.Response(text="internal secret")
    other.router.add_get("/{tail:.*}", internal)
    async with serving(node.app()) as url, serving(other) as elsewhere:
        signer.url = url
        port = free_port()
        app = await _setup(tmp_path, {
            "ok": f"{url}/v1/reports/ok.html",
            "big": f"{url}/v1/reports/big.html",
            "missing": f"{url}/v1/reports/missing.html",
            # SSRF: a signed statement naming a URL that is not the rebuilder's own API
            "ssrf": f"{elsewhere}/v1/reports/x.html",
            "traversal": f"{url}/v1/reports/../../admin.html",
            "not-a-report": f"{url}/v1/node",
        }, node, port, max_report_bytes=10_000)
        async with serving(app, port) as base, aiohttp.ClientSession() as s:
            await app[CATCHUP].round()
            async with s.get(f"{base}{await _report_path(s, base, 'ok')}") as r:
                assert r.status == 200
                assert r.headers["Content-Security-Policy"] == REPORT_CSP
                assert "fine report" in await r.text()
            async with s.get(f"{base}{await _report_path(s, base, 'big')}") as r:
                assert r.status == 502  # over the size cap
            async with s.get(f"{base}{await _report_path(s, base, 'missing')}") as r:
                assert r.status == 502
            for name in ("ssrf", "traversal", "not-a-report"):
                path = await _report_path(s, base, name)
                async with s.get(f"{base}{path}") as r:
                    assert r.status == 404, name
                    assert "internal secret" not in await r.text()
                async with s.get(f"{base}{path.replace('/reports/', '/mismatch/')}") as r:
                    assert r.status == 200
                    assert "does not fetch it" in await r.text()
                    assert "<iframe" not in await r.text()
            for bad in (f"/reports/{'0' * 63}/{DEB}", f"/reports/{'g' * 64}/{DEB}",
                        f"/reports/{'0' * 64}/..%2f..%2fetc",
                        f"/mismatch/{'0' * 64}/%3Cscript%3E"):
                async with s.get(f"{base}{bad}") as r:
                    assert r.status in (400, 404), bad
            async with s.get(f"{base}/packages/p-ok/1?threshold=0") as r:
                assert r.status == 400
            async with s.get(f"{base}/packages/p-ok/1?threshold=abc") as r:
                assert r.status == 400
            async with s.get(f"{base}/packages/nothing/1") as r:
                assert r.status == 404
            async with s.get(f"{base}/") as r:
                assert r.headers["Content-Security-Policy"] == PAGE_CSP
                assert "script-src" not in PAGE_CSP  # default-src 'none': no script at all


async def test_rebuilder_page_survives_a_hostile_node_document(tmp_path: Path) -> None:
    """The rebuilder page reads the node's /v1/node for its log checkpoint: an oversized,
    non-JSON or script-laden answer is refused or shown as text, and the page still renders."""
    signer = Signer("rb-alpha")
    node = StandInNode(signer)
    answers: list[web.Response] = []

    async def node_doc(request: web.Request) -> web.Response:
        return answers[0]

    app = web.Application()
    app.router.add_get("/v1/attestations", node._attestations)
    app.router.add_get("/v1/node", node_doc)
    async with serving(app) as url:
        signer.url = url
        port = free_port()
        coordinator = await _setup(tmp_path, {}, node, port)
        async with serving(coordinator, port) as base, aiohttp.ClientSession() as s:
            await coordinator[CATCHUP].round()  # heard from: online
            for answer, shown in (
                (web.Response(body=b"x" * 200_000), "is not a node document"),
                (web.Response(text="not json"), "is not a node document"),
                (web.Response(status=404), "answered HTTP 404"),
                (web.json_response({"log": {"checkpoint": "<script>alert(1)</script>"}}),
                 "&lt;script&gt;alert(1)&lt;/script&gt;"),
            ):
                answers[:] = [answer]
                async with s.get(f"{base}/rebuilders/rb-alpha") as r:
                    assert r.status == 200
                    html = await r.text()
                    assert shown in html, html.split("Log checkpoint")[1][:300]
                    assert "<script>alert" not in html


async def test_report_proxy_slow_and_absent_rebuilder(tmp_path: Path) -> None:
    """A rebuilder that stalls on a report, then one that is gone: 502 naming why, never a
    hang or a 500 (the proxy reads through the verifier's fetcher seam)."""
    signer = Signer("rb-alpha")
    node = StandInNode(signer)

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"<p>")
        await asyncio.Event().wait()
        return resp

    app = web.Application()
    app.router.add_get("/v1/reports/{id}.html", stall)
    app.router.add_get("/v1/attestations", node._attestations)
    runner = web.AppRunner(app, shutdown_timeout=0.1)  # the stalled handler must not hold it
    await runner.setup()
    node_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", node_port).start()
    try:
        signer.url = url = f"http://127.0.0.1:{node_port}"
        port = free_port()
        coordinator = await _setup(tmp_path, {"slow": f"{url}/v1/reports/slow.html",
                                              "gone": f"{url}/v1/reports/gone.html"},
                                   node, port, report_timeout=0.5)
        async with serving(coordinator, port) as base, aiohttp.ClientSession() as s:
            await coordinator[CATCHUP].round()
            slow = await _report_path(s, base, "slow")
            gone = await _report_path(s, base, "gone")
            async with s.get(f"{base}{slow}") as r:
                assert r.status == 502
                assert "unreachable for the report: no complete answer within" in await r.text()
            await runner.cleanup()  # the rebuilder is gone: connection refused
            async with s.get(f"{base}{gone}") as r:
                assert r.status == 502
                assert "unreachable for the report: cannot connect to" in await r.text()
    finally:
        await runner.cleanup()
