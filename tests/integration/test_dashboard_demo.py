"""The dashboard of the real demo network (real rebuilds, real diffoscope reports) in headless
Chromium; then Ctrl-C stops the demo and every process it started.

Screenshots: test-artifacts/demo-*.png.
"""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from tests.unit.coordinator.cdp import Browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


async def _dashboard_url(demo: subprocess.Popen[str], deadline: float) -> str:
    """The dashboard URL the demo prints, waiting on its output (read in a thread, so a demo
    that prints nothing cannot block past the deadline) until ``deadline``."""
    assert demo.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)  # the demo closed its output (exited)

    threading.Thread(target=pump, args=(demo.stdout,), daemon=True).start()
    output: list[str] = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no dashboard URL before the deadline:\n" + "".join(output)
        try:
            line = await asyncio.to_thread(lines.get, True, min(left, 5.0))
        except queue.Empty:
            continue
        assert line is not None, "the demo exited first:\n" + "".join(output)
        output.append(line)
        m = re.search(r"==> Dashboard: (http://127\.0\.0\.1:\d+)/", line)
        if m:
            return m.group(1)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_demo_dashboard_in_chromium(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-u", "-m", "rqdemo", "--state", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        dashboard = await _dashboard_url(demo, deadline=time.monotonic() + 600)

        async with Browser.launch(tmp_path / "chromium") as browser:
            page = await browser.new_page()
            await page.goto(f"{dashboard}/")
            text = await page.text()
            for node in ("rb-alpha", "rb-beta", "rb-gamma"):
                assert node in text
            assert "3 / 3" in text  # rebuilders online
            # The tampered package is the headline, above the unreproducible one.
            assert "Tampered: rq-tampered 1.0" in text
            assert text.index("Tampered: rq-tampered") < text.index("rq-unrepro")
            await page.screenshot(ARTIFACTS / "demo-overview.png")
            assert browser.errors(page) == []

            await page.click("table.disagreements a[href^='/packages/rq-unrepro/']")
            text = await page.text()
            assert "rq-unrepro_1.0_all.deb" in text and "not reached" in text
            await page.screenshot(ARTIFACTS / "demo-package-unreproducible.png")
            assert browser.errors(page) == []

            await page.click("a.mismatch-link")
            frames = await page.frame_html()
            assert len(frames) == 1 and "diffoscope" in frames[0].lower()
            await page.screenshot(ARTIFACTS / "demo-mismatch-unreproducible.png")

            await page.goto(f"{dashboard}/packages/rq-tampered/1.0")
            assert "that no rebuilder produced" in await page.text()
            await page.screenshot(ARTIFACTS / "demo-package-tampered.png")
            await page.click("a.mismatch-link")
            frames = await page.frame_html()
            assert len(frames) == 1 and "rq-tampered" in frames[0]
            await page.screenshot(ARTIFACTS / "demo-mismatch-tampered.png")

            await page.goto(f"{dashboard}/packages/rq-hello/1.0")
            assert "✓ reached: 3 reproduced, 2 required" in await page.text()
            await page.screenshot(ARTIFACTS / "demo-package-reproducible.png")
            assert browser.errors(page) == []

            # The same network on a phone: nothing sticks out sideways.
            await page.set_width(390, mobile=True)
            for name, path in (("overview", "/"), ("package-tampered", "/packages/rq-tampered/1.0"),
                               ("rebuilder", "/rebuilders/rb-alpha")):
                await page.goto(f"{dashboard}{path}")
                await page.screenshot(ARTIFACTS / f"demo-{name}-phone.png")
                assert await page.overflowing() == [], name
                assert browser.errors(page) == [], name

        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:  # the test failed: stop the demo as Ctrl-C would, then harder
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                demo.kill()  # its children get SIGTERM from the kernel (parent-death signal)
                demo.wait()
    leftovers = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
