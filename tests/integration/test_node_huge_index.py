"""A hostile 500,000-entry Packages index (about 1 MB of xz, under every size cap) neither
stalls a running node nor changes its state: the index is read off the event loop, refused at
``max_index_entries`` with a message saying so, and the API answers throughout.

The node is a real ``rebuilder run`` process; the index is served by a real aiohttp server.
"""

from __future__ import annotations

import asyncio
import hashlib
import lzma
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from rebuilder.db import Store
from tests.support import free_port, wait_for
from tests.unit.rebuilder.node_helpers import amake_node, serve

pytestmark = pytest.mark.slow

ENTRIES = 500_000
# Every request answers within 100 ms while the index is read: the worker runs at SCHED_IDLE,
# and the node's loop only receives counts. The one thing the node cannot control is a machine
# so loaded that its scheduler alone delays requests past 100 ms with no index being read; the
# same node is measured first, in the same run, with the index held back (CONTROL_S). When every
# control request made 100 ms, every request during the read must too; otherwise (a saturated
# machine) 95% must, and none may take longer than 500 ms or twice the slowest control request
# (the index parsed on the loop stalled it for minutes; in a thread, for 0.1-0.9 s at a time).
# The test prints both sets of figures and which bound it applied.
STALL_LIMIT_S = 0.100
OUTLIER_LIMIT_S = 0.500
CONTROL_S = 5.0


def _figures(times: list[float]) -> str:
    t = sorted(times)
    return (f"{len(t)} requests: p95 {t[int(len(t) * 0.95)] * 1000:.1f} ms, "
            f"p99 {t[int(len(t) * 0.99)] * 1000:.1f} ms, max {t[-1] * 1000:.1f} ms")


def huge_packages(n: int = ENTRIES) -> bytes:
    sha = "5" * 64
    return "\n".join(
        f"Package: p{i}\nVersion: 1.{i}\nArchitecture: amd64\n"
        f"Filename: pool/main/p/p{i}/p{i}_1.{i}_amd64.deb\nSHA256: {sha}\n"
        for i in range(n)
    ).encode()


async def _timed_get(session: aiohttp.ClientSession, url: str) -> float:
    t0 = time.perf_counter()
    async with session.get(url) as r:
        assert r.status == 200, f"{url}: HTTP {r.status}"
        await r.read()
    return time.perf_counter() - t0


async def test_huge_index_is_refused_while_the_api_keeps_answering(tmp_path: Path) -> None:
    xz = await asyncio.to_thread(lambda: lzma.compress(huge_packages(), preset=1))
    release = (f"Suite: stable\nSHA256:\n {hashlib.sha256(xz).hexdigest()} {len(xz)} "
               "main/binary-amd64/Packages.xz\n").encode()
    served = asyncio.Event()
    hand_out = asyncio.Event()

    async def packages(_: web.Request) -> web.Response:
        served.set()
        await hand_out.wait()  # after the control measurement
        return web.Response(body=xz)

    async def release_file(_: web.Request) -> web.Response:
        return web.Response(body=release)

    app = web.Application()
    app.router.add_get("/debian/dists/stable/Release", release_file)
    app.router.add_get("/debian/dists/stable/main/binary-amd64/Packages.xz", packages)
    async with serve(app, free_port()) as base:
        cfg = await amake_node(tmp_path, "--no-mqtt", "--architectures", "amd64",
                               repo_url=f"{base}/debian")
        log_path = tmp_path / "node.log"
        with log_path.open("wb") as log:
            node = subprocess.Popen(
                [sys.executable, "-m", "rebuilder.cli", "run", "--config", str(cfg.path)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            api = cfg.node.public_url
            async with aiohttp.ClientSession() as session:
                async def up() -> bool:
                    try:
                        await _timed_get(session, f"{api}/healthz")
                    except aiohttp.ClientError:
                        return False
                    return True

                await wait_for(up, 60, "the node's API")
                await asyncio.wait_for(served.wait(), 60)

                async def both() -> list[float]:
                    return [await _timed_get(session, url) for url in
                            (f"{api}/healthz", f"{api}/v1/attestations?since=0&limit=10")]

                # control: the same node, the index not handed out yet
                control: list[float] = []
                end = time.monotonic() + CONTROL_S
                while time.monotonic() < end:
                    control += await both()
                    await asyncio.sleep(0.02)
                hand_out.set()
                # from the moment the index is handed out until the node refuses it
                times: list[float] = []
                deadline = time.monotonic() + 600

                def refused() -> bool:
                    return "round skipped" in log_path.read_text()

                while not refused():
                    assert time.monotonic() < deadline, "the node never refused the index"
                    times += await both()
                    await asyncio.sleep(0.02)
                assert node.poll() is None, "the node exited"
                assert await _timed_get(session, f"{api}/healthz") < 5
        finally:
            node.terminate()
            node.wait(30)
    text = log_path.read_text()
    assert "more than 200000 entries (max_index_entries)" in text, text[-3000:]
    assert "previous state kept" in text
    assert len(times) >= 10, f"only {len(times)} requests while the index was read"
    print(f"\nAPI, control: {_figures(control)}\nAPI during the read: {_figures(times)}")
    worst = max(times)
    if max(control) < STALL_LIMIT_S:
        assert worst < STALL_LIMIT_S, (
            f"an API request took {worst * 1000:.0f} ms during the read (every control request "
            f"made {STALL_LIMIT_S * 1000:.0f} ms): {_figures(times)}")
    else:
        outlier = max(OUTLIER_LIMIT_S, 2 * max(control))
        print(f"the machine delayed a control request by {max(control) * 1000:.0f} ms: "
              f"checking 95% < {STALL_LIMIT_S * 1000:.0f} ms, none over {outlier * 1000:.0f} ms")
        p95 = sorted(times)[int(len(times) * 0.95)]
        assert p95 < STALL_LIMIT_S, f"95% of API requests took up to {p95 * 1000:.0f} ms"
        assert worst < outlier, (
            f"an API request took {worst * 1000:.0f} ms during the read: {_figures(times)}")
    store = await Store.open(cfg.node.db_path, readonly=True)
    try:
        assert (await store.counts())["queued"] == 0
        assert await store.release_state("local") is None
    finally:
        await store.close()
