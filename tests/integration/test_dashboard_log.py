"""The dashboard shows what the log monitor found, in real headless Chromium: a real monitor
(``coordinator.monitor``) reads a real node log (tiles written by ``rebuilder.tlog``, served by
aiohttp) that forks and then rolls back, into the running coordinator's store; the overview
carries a log-inconsistency alert of its own (not the tampering one), naming the rebuilder and
the checkpoints' sizes and roots, and the rebuilder's page lists each finding. Both at desktop
and phone width; screenshots go to test-artifacts/dashboard-log-*.png."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp
import pytest

from coordinator.app import STORE, create_app
from coordinator.config import CoordinatorConfig, RebuilderConfig, load_config
from coordinator.monitor import Monitor
from tests.integration.test_tlog_monitor import LogServer, build_log, envs
from tests.integration.test_tlog_monitor import serving as serving_log
from tests.support import free_port
from tests.unit.coordinator.cdp import Browser
from tests.unit.coordinator.factory import Signer, StandInNode, coordinator_toml, serving
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.note import Note

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WIDTHS = {"desktop": 1280, "phone": 390}


def _root(directory: Path) -> str:
    cp = Checkpoint.from_text(Note.from_bytes((directory / "log" / "checkpoint").read_bytes()).text)
    return base64.b64encode(cp.root).decode()


@pytest.mark.slow
async def test_log_inconsistencies_on_overview_and_rebuilder_page(tmp_path: Path) -> None:
    alpha, beta = Signer("rb-alpha", "Alpha University"), Signer("rb-beta", "Beta Foundation")
    log_server = LogServer(tmp_path / "a")
    async with serving(StandInNode(alpha).app()) as ua, serving(StandInNode(beta).app()) as ub, \
            serving_log(log_server) as log_url, aiohttp.ClientSession() as session:
        alpha.url, beta.url = ua, ub
        origin = log_url.split("://")[1] + "/log"
        a = envs(alpha, ["e0", "e1", "e2", "e3"])
        await build_log(tmp_path / "a", alpha, origin, a)
        await build_log(tmp_path / "b", alpha, origin, [*a[:3], *envs(alpha, ["other"])])
        await build_log(tmp_path / "c", alpha, origin, a[:2])
        port = free_port()
        app = create_app(load_config(coordinator_toml(tmp_path, [alpha, beta], None, port)))
        async with serving(app, port) as base:
            # rb-alpha's log as the monitor reads it (served at log_url), into the same store.
            watched = CoordinatorConfig(database=tmp_path / "unused.db", rebuilders=(
                RebuilderConfig(id="rb-alpha", operator="Alpha University", url=log_url,
                                public_key=alpha.key.public_key()),))
            monitor = await Monitor.open(tmp_path / "monitor.db", watched, app[STORE], session,
                                         grace=1e9)
            try:
                assert await monitor.round() == []
                log_server.root = tmp_path / "b"  # another tree of size 4: a fork
                assert [f.kind for f in await monitor.round()] == ["split-view"]
                log_server.root = tmp_path / "c"  # back to size 2
                assert [f.kind for f in await monitor.round()] == ["rollback"]
            finally:
                await monitor.close()

            async with Browser.launch(tmp_path / "chromium") as browser:
                page = await browser.new_page()
                for width, px in WIDTHS.items():
                    await page.set_width(px, mobile=width == "phone")
                    await page.goto(f"{base}/")
                    await page.screenshot(ARTIFACTS / f"dashboard-log-overview-{width}.png")
                    assert await page.overflowing() == [], f"overview at {width}"
                    assert browser.errors(page) == [], f"overview at {width}"
                    text = await page.text()
                    alert = await page.evaluate(
                        "document.querySelector('.alert.log-alert')?.innerText ?? ''")
                    assert "Transparency log inconsistency: rb-alpha" in alert
                    assert "Split view in rb-alpha's log: rb-alpha shows two roots for size 4" \
                        in alert
                    assert f"size 4, root {_root(tmp_path / 'a')}" in alert  # seen before
                    assert f"size 4, root {_root(tmp_path / 'b')}" in alert  # shown now
                    assert "Rollback in rb-alpha's log: rb-alpha's log went from size 4 back " \
                        "to 2" in alert
                    assert "rb-beta" not in alert
                    # Its own alert, not the tampering one, above the rebuilders.
                    assert await page.evaluate(
                        "document.querySelectorAll('[id^=tampered-]').length") == 0
                    assert text.index("Transparency log inconsistency") < text.index(
                        "Rebuilder network")
                    rows = await page.evaluate(
                        "[...document.querySelectorAll('#rebuilders tbody tr')]"
                        ".map(r => r.innerText.replace(/\\s+/g, ' '))")
                    assert "⚠ log" in next(r for r in rows if "rb-alpha" in r)
                    assert "⚠ log" not in next(r for r in rows if "rb-beta" in r)

                    await page.click("#log-inconsistencies a[href^='/rebuilders/rb-alpha']")
                    assert (await page.url()).endswith("/rebuilders/rb-alpha#log")
                    await page.screenshot(ARTIFACTS / f"dashboard-log-rebuilder-{width}.png")
                    assert await page.overflowing() == [], f"rebuilder at {width}"
                    assert browser.errors(page) == [], f"rebuilder at {width}"
                    table = await page.evaluate(
                        "[...document.querySelectorAll('#log-inconsistencies-table tbody tr')]"
                        ".map(r => r.innerText.replace(/\\s+/g, ' '))")
                    assert len(table) == 2
                    assert table[0].count("Rollback") == 1 and "back to 2" in table[0]
                    assert "size 2, root" in table[0]
                    assert "Split view" in table[1] and _root(tmp_path / "b") in table[1]

                    await page.goto(f"{base}/rebuilders/rb-beta")
                    text = await page.text()
                    assert "found nothing inconsistent in rb-beta's log" in text
                    assert "Transparency log inconsistency" not in text
