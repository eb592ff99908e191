"""A minimal Chrome DevTools Protocol client for dashboard tests in real headless Chromium.

Starts ``chromium --headless`` with a fresh profile and a debugging port, talks CDP over an
aiohttp websocket, and records console messages and exceptions of each page::

    async with Browser.launch(tmp_path) as browser:
        page = await browser.open("http://127.0.0.1:8500/")
        await page.screenshot(Path("test-artifacts/overview.png"))
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import wait_until

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
    # Keep sandboxed report frames in the page's process so DevTools can read their DOM.
    "--disable-features=IsolateSandboxedIframes,site-per-process",
]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium"


@dataclass
class Page:
    browser: Browser
    session: str
    console: list[dict[str, Any]] = field(default_factory=list)
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    failed_requests: list[dict[str, Any]] = field(default_factory=list)
    loaded: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, session=self.session, **params)

    def _reset(self) -> None:
        self.loaded.clear()
        self.console.clear()
        self.exceptions.clear()
        self.failed_requests.clear()

    async def goto(self, url: str, timeout: float = 20) -> None:
        """Navigate and wait for the load event; errors recorded are this page's only."""
        self._reset()
        await self.send("Page.navigate", url=url)
        async with asyncio.timeout(timeout):
            await self.loaded.wait()

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"evaluating {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def url(self) -> str:
        return str(await self.evaluate("location.href"))

    async def click(self, selector: str, timeout: float = 20) -> None:
        """Follow the link matching ``selector`` as a user would, and wait for the page."""
        self._reset()
        found = await self.evaluate(
            f"(() => {{ const a = document.querySelector({json.dumps(selector)});"
            " if (!a) return false; a.click(); return true; })()"
        )
        assert found, f"no element matches {selector}"
        async with asyncio.timeout(timeout):
            await self.loaded.wait()

    async def text(self) -> str:
        return str(await self.evaluate("document.body.innerText"))

    async def frame_html(self) -> list[str]:
        """The outer HTML of every iframe's document, read through the DOM domain.

        Sandboxed frames run no script and have an opaque origin, so the page cannot read
        them; DevTools can.
        """
        doc = await self.send("DOM.getDocument", depth=-1, pierce=True)
        out: list[str] = []

        def walk(node: dict[str, Any]) -> None:
            if node.get("nodeName") == "IFRAME" and "contentDocument" in node:
                out.append(node["contentDocument"]["backendNodeId"])
            for child in node.get("children", []):
                walk(child)
            if "contentDocument" in node and node.get("nodeName") != "IFRAME":
                walk(node["contentDocument"])

        walk(doc["root"])
        html = []
        for backend_id in out:
            r = await self.send("DOM.getOuterHTML", backendNodeId=backend_id)
            html.append(r["outerHTML"])
        return html

    async def set_width(self, width: int, height: int = 900, mobile: bool = False) -> None:
        """Emulate a screen ``width`` CSS pixels wide (390 for a phone); takes effect at once."""
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=mobile,
        )

    async def overflowing(self) -> list[str]:
        """What sticks out sideways: the page wider than the viewport, or any element wider
        than the card or table cell that holds it. Empty when nothing does."""
        found = await self.evaluate(
            """(() => {
              const out = [];
              const vw = document.documentElement.clientWidth;
              if (document.documentElement.scrollWidth > vw + 1)
                out.push(`page is ${document.documentElement.scrollWidth}px wide, `
                         + `viewport ${vw}px`);
              for (const el of document.querySelectorAll('body *')) {
                const r = el.getBoundingClientRect();
                if (r.width && r.right > vw + 1) {
                  const inScroller = el.closest('iframe, svg');
                  if (!inScroller || el.tagName === 'IFRAME' || el.tagName === 'svg')
                    out.push(`${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}`
                             + `.${[...el.classList].join('.')} ends at ${Math.round(r.right)}px`);
                }
              }
              for (const c of document.querySelectorAll('.card'))
                if (c.scrollWidth > c.clientWidth + 1)
                  out.push(`card holding ${c.firstElementChild?.tagName} overflows by `
                           + `${c.scrollWidth - c.clientWidth}px`);
              return out.slice(0, 20);
            })()"""
        )
        return list(found)

    async def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        r = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(r["data"]))


class Browser:
    def __init__(self, process: subprocess.Popen[bytes], ws: aiohttp.ClientWebSocketResponse,
                 http: aiohttp.ClientSession) -> None:
        self.process = process
        self.ws = ws
        self.http = http
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read(), name="cdp reader")

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, profile: Path) -> AsyncIterator[Browser]:
        profile.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        http = aiohttp.ClientSession()
        browser: Browser | None = None
        try:
            port_file = profile / "DevToolsActivePort"
            wait_until(port_file.exists, 30, "chromium's DevToolsActivePort")
            wait_until(lambda: len(port_file.read_text().splitlines()) >= 2, 10, "the port")
            port, path = port_file.read_text().splitlines()[:2]
            ws = await http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
            browser = cls(process, ws, http)
            yield browser
        finally:
            if browser is not None:
                browser._reader.cancel()
                await browser.ws.close()
            await http.close()
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(AssertionError(f"CDP error: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
                continue
            page = self._pages.get(data.get("sessionId", ""))
            if page is None:
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.consoleAPICalled":
                page.console.append(params)
            elif method == "Runtime.exceptionThrown":
                page.exceptions.append(params)
            elif method == "Log.entryAdded":
                page.console.append(params["entry"])
            elif method == "Network.loadingFailed":
                page.failed_requests.append(params)
            elif method == "Page.loadEventFired":
                page.loaded.set()

    async def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = fut
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        async with asyncio.timeout(30):
            return await fut

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Page(self, attached["sessionId"])
        self._pages[page.session] = page
        for domain in ("Page", "Runtime", "Log", "Network", "DOM"):
            await page.send(f"{domain}.enable")
        return page

    def errors(self, page: Page) -> list[str]:
        """Console errors, uncaught exceptions and failed loads of ``page``, as text."""
        out = [f"exception: {e}" for e in page.exceptions]
        for c in page.console:
            level = c.get("level") or c.get("type")
            if level in ("error", "assert"):
                out.append(f"console {level}: {c.get('text') or c.get('args')}")
        for f in page.failed_requests:
            if f.get("canceled"):
                continue
            out.append(f"failed request: {f.get('errorText')} ({f.get('blockedReason', '')})")
        return out
