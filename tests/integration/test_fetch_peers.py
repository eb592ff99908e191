"""Every network reader behind the verifier's fetcher seam, against one real aiohttp peer that
lies (oversized body, wrong digest, a status other than 200), stalls (timeout) or is absent
(connection refused). Each reader must answer with one of the two error families, keep an HTTP
status as a number, and never leave unchecked bytes on disk (issue 12)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from coordinator.catchup import CatchUp
from coordinator.config import Limits, RebuilderConfig
from coordinator.monitor import Monitor
from rebuilder.debian.watch import fetch_bounded
from rebuilder.fetch import fetch_bytes, fetch_file
from tests.support import free_port
from verifier.errors import BadDataError, HTTPStatusError, UnreachableError
from verifier.keys import generate_private_key
from verifier.sources import AiohttpFetcher
from verifier.statement import Digest

BODY = b'{"attestations": [], "next": "0", "more": false}'
DIGEST = Digest(hashlib.sha256(BODY).hexdigest())
LIMIT = 4096
SLOW = 0.5  # seconds every reader is given in these tests


async def _ok(request: web.Request) -> web.Response:
    return web.Response(body=BODY)


async def _oversized(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()  # no Content-Length: the cap must hold while streaming
    await resp.prepare(request)
    for _ in range(20):
        await resp.write(b"x" * 1024)
    await resp.write_eof()
    return resp


async def _announced(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * 20 * 1024)  # Content-Length over the cap: refused unread


async def _status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]), body=BODY)


async def _slow(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"{")  # starts answering, then never finishes
    await asyncio.Event().wait()
    return resp


@pytest.fixture
async def peer() -> AsyncIterator[str]:
    app = web.Application()
    for path in ("/ok", "/ok/v1/attestations", "/ok/log/checkpoint"):
        app.router.add_get(path, _ok)
    for path in ("/big", "/big/v1/attestations", "/big/log/checkpoint"):
        app.router.add_get(path, _oversized)
    for path in ("/huge", "/huge/v1/attestations", "/huge/log/checkpoint"):
        app.router.add_get(path, _announced)
    for path in ("/status/{code}", "/status/{code}/v1/attestations",
                 "/status/{code}/log/checkpoint"):
        app.router.add_get(path, _status)
    for path in ("/slow", "/slow/v1/attestations", "/slow/log/checkpoint"):
        app.router.add_get(path, _slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


Read = Callable[[aiohttp.ClientSession, str, Path], Awaitable[Any]]


def _rebuilder(url: str) -> RebuilderConfig:
    return RebuilderConfig(id="rb-peer", operator="peer", url=url,
                           public_key=generate_private_key().public_key())


async def _verifier_fetch(s: aiohttp.ClientSession, base: str, tmp: Path) -> Any:
    return await AiohttpFetcher(s).fetch(base, max_bytes=LIMIT, timeout=SLOW)


async def _verifier_download(s: aiohttp.ClientSession, base: str, tmp: Path) -> Any:
    return await AiohttpFetcher(s).download_file(base, tmp / "f", max_bytes=LIMIT, timeout=SLOW,
                                                 sha256=DIGEST, size=len(BODY))


async def _node_fetch_bytes(s: aiohttp.ClientSession, base: str, tmp: Path) -> Any:
    return await fetch_bytes(s, base, LIMIT, time_limit=SLOW)


async def _node_fetch_file(s: aiohttp.ClientSession, base: str, tmp: Path) -> Any:
    return await fetch_file(s, base, tmp / "f", LIMIT, DIGEST, len(BODY), time_limit=SLOW)


async def _watcher(s: aiohttp.ClientSession, base: str, tmp: Path) -> Any:
    import rebuilder.debian.watch

    old = rebuilder.debian.watch.FETCH_TIMEOUT_S
    rebuilder.debian.watch.FETCH_TIMEOUT_S = SLOW
    try:
        return await fetch_bounded(s, base, LIMIT)
    finally:
        rebuilder.debian.watch.FETCH_TIMEOUT_S = old


async def _catch_up(s: aiohttp.ClientSession, base: str, tmp: Path) -> Any:
    limits = Limits(catchup_timeout=SLOW, max_catchup_response_bytes=LIMIT)
    ingest = SimpleNamespace(config=SimpleNamespace(limits=limits))  # only its limits are read
    return await CatchUp(cast(Any, ingest), s)._fetch(_rebuilder(base), "0")


async def _monitor(s: aiohttp.ClientSession, base: str, tmp: Path) -> Any:
    import coordinator.monitor

    old = coordinator.monitor.FETCH_TIMEOUT_S
    coordinator.monitor.FETCH_TIMEOUT_S = SLOW
    try:
        monitor = Monitor(cast(Any, None), cast(Any, None), cast(Any, None), s)
        return await monitor._get(f"{base}/log/checkpoint", LIMIT)  # as Monitor.check asks
    finally:
        coordinator.monitor.FETCH_TIMEOUT_S = old


@dataclass(frozen=True)
class Reader:
    name: str
    read: Read
    oversized: type[Exception] = BadDataError  # what a body over the cap raises


READERS = [
    Reader("verifier fetch", _verifier_fetch),
    Reader("verifier download_file", _verifier_download),
    Reader("node fetch_bytes", _node_fetch_bytes),
    Reader("node fetch_file", _node_fetch_file),
    Reader("watcher", _watcher),
    Reader("coordinator catch-up", _catch_up),  # asks <url>/v1/attestations?since=...
    # the monitor: an unreadable log is unavailable this round, not a finding
    Reader("log monitor", _monitor, oversized=UnreachableError),
]
IDS = [r.name for r in READERS]


@pytest.mark.parametrize("reader", READERS, ids=IDS)
async def test_honest_peer(reader: Reader, peer: str, session: aiohttp.ClientSession,
                           tmp_path: Path) -> None:
    got = await reader.read(session, f"{peer}/ok", tmp_path)
    if isinstance(got, tuple):  # a download: digest and size, and the file in place
        assert got == (DIGEST, len(BODY))
        assert (tmp_path / "f").read_bytes() == BODY
    elif isinstance(got, dict):
        assert got["next"] == "0"
    else:
        assert got == BODY


@pytest.mark.parametrize("route", ["big", "huge"], ids=["streamed", "announced"])
@pytest.mark.parametrize("reader", READERS, ids=IDS)
async def test_oversized_body(reader: Reader, route: str, peer: str,
                              session: aiohttp.ClientSession, tmp_path: Path) -> None:
    with pytest.raises(reader.oversized, match=str(LIMIT)):
        await reader.read(session, f"{peer}/{route}", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [404, 500, 302])
@pytest.mark.parametrize("reader", READERS, ids=IDS)
async def test_bad_status_stays_a_number(reader: Reader, code: int, peer: str,
                                         session: aiohttp.ClientSession, tmp_path: Path) -> None:
    with pytest.raises(HTTPStatusError) as e:
        await reader.read(session, f"{peer}/status/{code}", tmp_path)
    assert e.value.status == code
    assert str(code) in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("reader", READERS, ids=IDS)
async def test_slow_peer_times_out(reader: Reader, peer: str, session: aiohttp.ClientSession,
                                   tmp_path: Path) -> None:
    with pytest.raises(UnreachableError, match="no complete answer within"):
        await reader.read(session, f"{peer}/slow", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("reader", READERS, ids=IDS)
async def test_absent_peer(reader: Reader, session: aiohttp.ClientSession,
                           tmp_path: Path) -> None:
    with pytest.raises(UnreachableError, match="Connection refused") as e:
        await reader.read(session, f"http://127.0.0.1:{free_port()}", tmp_path)
    assert not isinstance(e.value, HTTPStatusError)
    assert list(tmp_path.iterdir()) == []


async def test_wrong_digest_keeps_nothing(peer: str, tmp_path: Path,
                                          session: aiohttp.ClientSession) -> None:
    """The peer serves other bytes than the digest names: nothing is kept under any name."""
    wrong = Digest("0" * 64)
    with pytest.raises(BadDataError, match="expected " + "0" * 64):
        await AiohttpFetcher(session).download_file(
            f"{peer}/ok", tmp_path / "f", max_bytes=LIMIT, timeout=SLOW, sha256=wrong)
    with pytest.raises(BadDataError, match="expected " + "0" * 64):
        await fetch_file(session, f"{peer}/ok", tmp_path / "f", LIMIT, wrong, time_limit=SLOW)
    assert list(tmp_path.iterdir()) == []


async def test_download_announced_size_over_the_cap_is_refused_before_asking(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(BadDataError, match="limit 10"):
        await AiohttpFetcher(session).download_file(
            f"http://127.0.0.1:{free_port()}/", tmp_path / "f", max_bytes=10, timeout=SLOW,
            size=11)
    assert list(tmp_path.iterdir()) == []


async def test_download_never_replaces_a_file_with_unchecked_bytes(
    peer: str, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    (tmp_path / "f").write_bytes(b"previous")
    with pytest.raises(BadDataError):
        await AiohttpFetcher(session).download_file(
            f"{peer}/ok", tmp_path / "f", max_bytes=LIMIT, timeout=SLOW, sha256=Digest("0" * 64))
    assert (tmp_path / "f").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
