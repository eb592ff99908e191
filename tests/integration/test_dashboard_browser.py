"""The dashboard in real headless Chromium: pages load cleanly, links lead from the overview to
a package to its mismatch report, and the (hostile) report shows, sandboxed.

Screenshots of every page go to test-artifacts/dashboard-*.png.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from coordinator.app import create_app
from coordinator.config import load_config
from coordinator.dashboard import REPORT_CSP
from tests.support import free_port, wait_for
from tests.unit.coordinator.cdp import Browser
from tests.unit.coordinator.factory import Signer, StandInNode, coordinator_toml, serving, sha

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DEB = "hello_2.10-3_amd64.deb"
HOSTILE_REPORT = """<!doctype html><html><head><title>diffoscope</title>
<style>.diffheader{background:#eee} del{background:#fdd} ins{background:#dfd}</style></head>
<body><h1>diffoscope report</h1><div class="diffheader">--- hello_2.10-3_amd64.deb (published)
+++ hello_2.10-3_amd64.deb (rebuilt)</div>
<p>DIFFOSCOPE-MARKER: ./usr/bin/hello differs</p>
<pre><del>BuildDate: 2026-01-01</del>
<ins>BuildDate: 2026-11-21</ins></pre>
<script>document.title = 'pwned'; parent.document.body.innerHTML = 'pwned';</script>
<img src="http://127.0.0.1:9/beacon.png" alt="">
</body></html>"""


async def _count(base: str, n: int) -> bool:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/v1/rebuilders") as r:
        doc = await r.json()
    return sum(sum(x["counts"].values()) for x in doc["rebuilders"]) >= n


@pytest.mark.slow
async def test_overview_package_mismatch_report(tmp_path: Path) -> None:
    alpha = Signer("rb-alpha", "Alpha University")
    beta = Signer("rb-beta", "Beta Foundation")
    gamma = Signer("rb-gamma", "Gamma Corp <script>alert(1)</script>")
    nodes = {s.id: StandInNode(s) for s in (alpha, beta, gamma)}
    good, evil = sha("published hello"), sha("rebuilt differently")
    async with serving(nodes["rb-alpha"].app()) as ua, serving(nodes["rb-beta"].app()) as ub, \
            serving(nodes["rb-gamma"].app()) as uc:
        alpha.url, beta.url, gamma.url = ua, ub, uc
        nodes["rb-beta"].reports["r-hello"] = HOSTILE_REPORT
        nodes["rb-alpha"].envelopes = [
            alpha.rebuild("hello", "2.10-3", {DEB: good}, invocation="b-1"),
            alpha.rebuild("zlib", "1.3", {"zlib1g_1.3_amd64.deb": sha("z")}),
        ]
        nodes["rb-beta"].envelopes = [
            beta.rebuild("hello", "2.10-3", {DEB: evil}, upstream={DEB: good},
                         report_url=f"{ub}/v1/reports/r-hello.html", invocation="b-7"),
            beta.failure("zlib", "1.3", "dpkg-buildpackage exited 2"),
        ]
        nodes["rb-gamma"].envelopes = [gamma.rebuild("hello", "2.10-3", {DEB: good})]
        port = free_port()
        cfg = load_config(coordinator_toml(tmp_path, [alpha, beta, gamma], None, port))
        async with serving(create_app(cfg), port) as base:
            await wait_for(lambda: _count(base, 5), 20, "catch-up of the stand-in nodes")

            async with aiohttp.ClientSession() as s:
                async with s.get(f"{base}/reports/{'0' * 64}/{DEB}") as r:
                    assert r.status == 404
                async with s.get(f"{base}/") as r:
                    assert "<script>alert(1)</script>" not in await r.text()
                    assert "&lt;script&gt;" in await r.text()

            async with Browser.launch(tmp_path / "chromium") as browser:
                page = await browser.new_page()
                await page.goto(f"{base}/")
                text = await page.text()
                assert "rb-alpha" in text and "Alpha University" in text
                assert "online" in text
                assert "Gamma Corp <script>alert(1)</script>" in text  # shown as text
                await page.screenshot(ARTIFACTS / "dashboard-overview.png")
                assert browser.errors(page) == []

                await page.click("table.disagreements a[href^='/packages/hello/']")
                assert (await page.url()).endswith("/packages/hello/2.10-3")
                text = await page.text()
                assert DEB in text and "2 of 2 ✓ reached" in text
                assert "dpkg-buildpackage" not in text  # zlib's failure is another package
                await page.screenshot(ARTIFACTS / "dashboard-package.png")
                assert browser.errors(page) == []
                logs = await page.evaluate(
                    "[...document.querySelectorAll('#builds a')].map(a => a.href)"
                )
                assert f"{ub}/v1/builds/b-7/log" in logs

                await page.goto(f"{base}/packages/hello/2.10-3?threshold=3")
                assert "2 of 3 — not reached" in await page.text()

                await page.click("a.mismatch-link")
                assert "/mismatch/" in await page.url()
                text = await page.text()
                assert evil in text and good in text
                frames = await page.frame_html()
                assert len(frames) == 1 and "DIFFOSCOPE-MARKER" in frames[0]
                assert await page.evaluate("document.title") != "pwned"
                assert "pwned" not in await page.text()
                sandbox = await page.evaluate(
                    "document.querySelector('iframe').getAttribute('sandbox')"
                )
                assert sandbox == ""
                await page.screenshot(ARTIFACTS / "dashboard-mismatch.png")
                # The report's own script and beacon are blocked by the sandbox and CSP;
                # the page itself logs nothing else.
                unexpected = [e for e in browser.errors(page)
                              if "script" not in e.lower() and "beacon" not in e
                              and "(csp)" not in e and "Content Security" not in e]
                assert unexpected == []

                await page.goto(f"{base}/packages?q=zl")
                text = await page.text()
                assert "zlib" in text and "hello" not in text.split("Source")[-1]
                await page.screenshot(ARTIFACTS / "dashboard-packages.png")
                assert browser.errors(page) == []

                await page.goto(f"{base}/disagreements")
                await page.screenshot(ARTIFACTS / "dashboard-disagreements.png")
                assert browser.errors(page) == []

            async with aiohttp.ClientSession() as s:
                mismatch_html = await (await s.get(f"{base}/packages/hello/2.10-3")).text()
                href = mismatch_html.split('class="mismatch-link" href="')[1].split('"')[0]
                report_path = href.replace("/mismatch/", "/reports/")
                async with s.get(f"{base}{report_path}") as r:
                    assert r.status == 200
                    assert r.headers["Content-Security-Policy"] == REPORT_CSP
                    assert r.headers["X-Content-Type-Options"] == "nosniff"
                    assert "DIFFOSCOPE-MARKER" in await r.text()
                async with s.get(f"{base}/packages?q=%3Cscript%3E") as r:
                    assert r.status == 400


