"""Size-capped, hash-checked downloads against a real aiohttp server on a free loopback port."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from rebuilder.fetch import fetch_bytes, fetch_file
from verifier.errors import BadDataError, UnreachableError
from verifier.statement import Digest

BODY = b"x" * 10_000
DIGEST = Digest(hashlib.sha256(BODY).hexdigest())


async def _chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(100):
        await resp.write(b"y" * 10_000)
    await resp.write_eof()
    return resp


async def _hang(request: web.Request) -> web.Response:
    await asyncio.Event().wait()
    return web.Response()


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/body", _body)
    app.router.add_get("/chunked", _chunked)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/hang", _hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    # the hanging handler must not hold the shutdown for the default 60 s
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _body(request: web.Request) -> web.Response:
    return web.Response(body=BODY)


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/body")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_fetch_bytes(server: str, session: aiohttp.ClientSession) -> None:
    assert await fetch_bytes(session, f"{server}/body", 10_000) == BODY


async def test_declared_length_over_limit(server: str, session: aiohttp.ClientSession) -> None:
    with pytest.raises(BadDataError, match="10000 bytes, limit 9999"):
        await fetch_bytes(session, f"{server}/body", 9_999)


async def test_chunked_body_over_limit(server: str, session: aiohttp.ClientSession) -> None:
    with pytest.raises(BadDataError, match="more than 50000 bytes"):
        await fetch_bytes(session, f"{server}/chunked", 50_000)


async def test_not_found(server: str, session: aiohttp.ClientSession) -> None:
    with pytest.raises(UnreachableError, match="HTTP 404"):
        await fetch_bytes(session, f"{server}/nothing", 100)


async def test_redirect_not_followed(server: str, session: aiohttp.ClientSession) -> None:
    with pytest.raises(UnreachableError, match="HTTP 302"):
        await fetch_bytes(session, f"{server}/redirect", 100_000)


async def test_hanging_server_times_out(server: str, session: aiohttp.ClientSession) -> None:
    with pytest.raises(UnreachableError, match="no complete answer within"):
        await fetch_bytes(session, f"{server}/hang", 100, time_limit=0.3)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y", "/relative", "gopher://a"])
async def test_only_http(session: aiohttp.ClientSession, url: str) -> None:
    with pytest.raises(BadDataError, match="not an http"):
        await fetch_bytes(session, url, 100)


async def test_refused(session: aiohttp.ClientSession) -> None:
    from tests.support import free_port

    with pytest.raises(UnreachableError):
        await fetch_bytes(session, f"http://127.0.0.1:{free_port()}/", 100)


async def test_fetch_file_checks_hash_and_size(
    server: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    dest = tmp_path / "f"
    assert await fetch_file(session, f"{server}/body", dest, 20_000, DIGEST, 10_000) == (
        DIGEST,
        10_000,
    )
    assert dest.read_bytes() == BODY


async def test_fetch_file_hash_mismatch_keeps_nothing(
    server: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    dest = tmp_path / "f"
    with pytest.raises(BadDataError, match="expected " + "0" * 64):
        await fetch_file(session, f"{server}/body", dest, 20_000, Digest("0" * 64))
    assert list(tmp_path.iterdir()) == []


async def test_fetch_file_size_mismatch(
    server: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with pytest.raises(BadDataError, match="10000 bytes, expected 9000"):
        await fetch_file(session, f"{server}/body", tmp_path / "f", 20_000, DIGEST, 9_000)
    assert list(tmp_path.iterdir()) == []


async def test_fetch_file_declared_size_over_limit(
    server: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with pytest.raises(BadDataError, match="limit"):
        await fetch_file(session, f"{server}/body", tmp_path / "f", 100, DIGEST, 10_000)


async def test_fetch_file_stream_over_limit(
    server: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with pytest.raises(BadDataError, match="more than"):
        await fetch_file(session, f"{server}/chunked", tmp_path / "f", 50_000)
    assert list(tmp_path.iterdir()) == []
