"""The dashboard in real headless Chromium: pages load cleanly, links lead from the overview to
a package to its mismatch report, and the (hostile) report shows, sandboxed; a tampered package
is the headline; every page fits a 390 px phone screen.

Screenshots of every page at desktop and phone width go to
test-artifacts/dashboard-<page>-{desktop,phone}.png.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from coordinator.app import CATCHUP, create_app
from coordinator.config import load_config
from coordinator.dashboard import REPORT_CSP
from tests.support import free_port, wait_for
from tests.unit.coordinator.cdp import Browser, Page
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


WIDTHS = {"desktop": 1280, "phone": 390}


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
                assert DEB in text and "✓ reached: 2 reproduced, 2 required" in text
                assert "dpkg-buildpackage" not in text  # zlib's failure is another package
                await page.screenshot(ARTIFACTS / "dashboard-package.png")
                assert browser.errors(page) == []
                logs = await page.evaluate(
                    "[...document.querySelectorAll('#builds a')].map(a => a.href)"
                )
                assert f"{ub}/v1/builds/b-7/log" in logs

                await page.goto(f"{base}/packages/hello/2.10-3?threshold=3")
                assert "not reached: 2 reproduced, 3 required" in await page.text()

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




def _csp_only(errors: list[str]) -> list[str]:
    """Errors other than the hostile report's own script and beacon, which CSP blocks."""
    return [e for e in errors if "script" not in e.lower() and "beacon" not in e
            and "(csp)" not in e and "Content Security" not in e]


async def _visit(browser: Browser, page: Page, url: str, name: str, width: str) -> str:
    await page.goto(url)
    await page.screenshot(ARTIFACTS / f"dashboard-{name}-{width}.png")
    assert await page.overflowing() == [], f"{name} at {width} width"
    errors = browser.errors(page)
    if name == "mismatch":
        errors = _csp_only(errors)
    if name == "error":
        errors = [e for e in errors if "404" not in e]  # the page itself answers 404
    assert errors == [], f"{name} at {width} width"
    return await page.text()


@pytest.mark.slow
async def test_tampered_rebuilder_history_filters_at_both_widths(tmp_path: Path) -> None:
    alpha = Signer("rb-alpha", "Alpha University")
    beta = Signer("rb-beta", "Beta Foundation")
    gamma = Signer("rb-gamma", "Gamma Corp")
    nodes = {s.id: StandInNode(s) for s in (alpha, beta, gamma)}
    nodes["rb-alpha"].log = {"origin": "rb-alpha.example/log",
                             "checkpoint": "rb-alpha.example/log\n42\nq2v…="}
    good, evil = sha("published hello"), sha("rebuilt differently")
    ssl_deb, ssl_good, ssl_served = "libssl3_3.0.1-1_amd64.deb", sha("ssl"), sha("backdoor")
    curl_deb = "curl_8.0-1_amd64.deb"
    async with serving(nodes["rb-alpha"].app()) as ua, serving(nodes["rb-beta"].app()) as ub, \
            serving(nodes["rb-gamma"].app()) as uc:
        alpha.url, beta.url, gamma.url = ua, ub, uc
        nodes["rb-beta"].reports["r-hello"] = HOSTILE_REPORT
        bad_curl = beta.rebuild("curl", "8.0-1", {curl_deb: sha("bad curl")},
                                upstream={curl_deb: sha("curl")}, invocation="b-9")
        nodes["rb-alpha"].envelopes = [
            alpha.rebuild("hello", "2.10-2", {DEB.replace("3", "2"): sha("old")}),
            alpha.rebuild("hello", "2.10-3", {DEB: good}, invocation="b-1"),
            alpha.rebuild("zlib", "1.3", {"zlib1g_1.3_amd64.deb": sha("z")}, suite="testing"),
            # rebuilt = buildinfo, but the repository serves other bytes
            alpha.rebuild("openssl", "3.0.1-1", {ssl_deb: ssl_good},
                          upstream={ssl_deb: ssl_served}, buildinfo={ssl_deb: ssl_good}),
            alpha.rebuild("curl", "8.0-1", {curl_deb: sha("curl")}),
        ]
        nodes["rb-beta"].envelopes = [
            beta.rebuild("hello", "2.10-3", {DEB: evil}, upstream={DEB: good},
                         report_url=f"{ub}/v1/reports/r-hello.html", invocation="b-7"),
            beta.failure("zlib", "1.3", "build: dpkg-buildpackage exited 2"),
            bad_curl,  # revoked only after the disagreement was recorded (below)
        ]
        nodes["rb-gamma"].envelopes = [
            gamma.rebuild("hello", "2.10-3", {DEB: good}),
            gamma.rebuild("openssl", "3.0.1-1", {ssl_deb: ssl_good},
                          upstream={ssl_deb: ssl_served}, buildinfo={ssl_deb: ssl_good}),
            gamma.failure("gone", "1", "fetch: buildinfo answered HTTP 404"),
        ]
        port = free_port()
        cfg = load_config(coordinator_toml(tmp_path, [alpha, beta, gamma], None, port))
        app = create_app(cfg)
        async with serving(app, port) as base:
            await wait_for(lambda: _count(base, 11), 20, "catch-up of the stand-in nodes")
            # the disagreement on curl is recorded, then resolved by rb-beta's revocation
            nodes["rb-beta"].envelopes.append(
                beta.revoke(bad_curl, "the build host's disk was corrupt"))
            await app[CATCHUP].round()
            async with aiohttp.ClientSession() as s:
                html = await (await s.get(f"{base}/packages/hello/2.10-3")).text()
            mismatch = html.split('class="mismatch-link" href="')[1].split('"')[0]
            pages = {
                "overview": "/",
                "tampered": "/packages/openssl/3.0.1-1",
                "package": "/packages/hello/2.10-3",
                "mismatch": mismatch,
                "history": "/packages/hello",
                "filters": "/packages?verdict=tampered",
                "packages": "/packages",
                "disagreements": "/disagreements",
                "resolved": "/packages/curl/8.0-1",
                "rebuilder": "/rebuilders/rb-beta",
                "rebuilder-log": "/rebuilders/rb-alpha",
                "queue": "/queue",
                "error": "/packages/nothing-here/1",
            }
            async with Browser.launch(tmp_path / "chromium") as browser:
                page = await browser.new_page()
                texts: dict[str, str] = {}
                for width, px in WIDTHS.items():
                    await page.set_width(px, mobile=width == "phone")
                    for name, path in pages.items():
                        texts[name] = await _visit(browser, page, f"{base}{path}", name, width)

                # Tampering is the headline: above unreproducible packages, on three pages.
                for name in ("overview", "tampered", "disagreements"):
                    text = texts[name]
                    assert "Tampered: openssl 3.0.1-1" in text, name
                    assert "serves bytes for libssl3_3.0.1-1_amd64.deb that no rebuilder" \
                        " produced" in text, name
                    assert "Do not install it" in text
                overview = texts["overview"]
                assert overview.index("Tampered") < overview.index("Recent disagreements")
                assert "Tampered: openssl" not in texts["package"]  # hello is not tampered

                # Reproducibility counts build outcomes only: gamma's 404 is not one.
                rows = await _rows(page, f"{base}/", "#rebuilders tbody tr")
                gamma_row = next(r for r in rows if r.startswith("rb-gamma"))
                assert "100%" in gamma_row and "+1 not built" in gamma_row
                beta_row = next(r for r in rows if r.startswith("rb-beta"))
                assert "0%" in beta_row

                text = texts["package"]
                assert "✓ reached: 2 reproduced, 2 required" in text
                assert " of 2 ✓" not in text
                assert "Rebuilders disagree on hello_2.10-3_amd64.deb" in text

                # Resolved by revocation: no "disagree" banner, the reason shown.
                text = texts["resolved"]
                assert "Rebuilders disagree" not in text
                assert "was resolved" in text
                assert "reason: the build host's disk was corrupt" in text
                assert "resolved by revocation" in texts["disagreements"]

                text = texts["mismatch"]
                assert "unreproducible" in text and f"{ub}/v1/builds/b-7/log" in text

                text = texts["history"]
                assert "2.10-3" in text and "2.10-2" in text
                assert text.index("2.10-3") < text.index("2.10-2")

                text = texts["filters"]
                assert "openssl" in text and "zlib" not in text and "curl" not in text
                await page.goto(f"{base}/packages?suite=testing")
                assert "zlib" in await page.text() and "openssl" not in await page.text()

                text = texts["rebuilder"]
                assert "Beta Foundation" in text and beta.id in text
                assert "unreproducible" in text and "build failed" in text
                assert "reason: the build host's disk was corrupt" in text
                assert "online" in text  # catch-up counts as being heard from
                await page.goto(f"{base}/rebuilders/rb-beta")
                bars = await page.evaluate("document.querySelectorAll('#chart rect').length")
                assert bars == 30
                assert "q2v…=" in texts["rebuilder-log"] and "rb-alpha.example/log" in \
                    texts["rebuilder-log"]
                assert "publishes no transparency log" in texts["rebuilder"]

                assert "rb-alpha" in texts["queue"]
                assert "No attestation for nothing-here 1 yet." in texts["error"]

            async with aiohttp.ClientSession() as s:
                for bad in ("/packages/bad%20name/1", "/packages?verdict=nope",
                            "/rebuilders/rb-nobody", "/no/such/page"):
                    async with s.get(f"{base}{bad}") as r:
                        assert r.status in (400, 404), bad
                        assert r.content_type == "text/html", bad
                        body = await r.text()
                        assert '{"error"' not in body and "<h1>" in body, bad
                async with s.get(f"{base}/packages/bad%20name/1") as r:
                    body = await r.text()
                    assert "source &#39;bad name&#39; is not a Debian package source" in body
                async with s.get(f"{base}/v1/packages/debian/bad%20name/1") as r:
                    assert r.content_type == "application/json"  # the API stays JSON


async def _rows(page: Page, url: str, selector: str) -> list[str]:
    await page.goto(url)
    rows = await page.evaluate(
        f"[...document.querySelectorAll({selector!r})].map(r => r.innerText.replace(/\\s+/g, ' '))"
    )
    return list(rows)
