"""Fetching a rebuild's inputs over HTTP with size limits and hash checks (ARCHITECTURE §2.6).

Every download goes through ``fetch_bytes`` or ``fetch_file``: the body is read in chunks and
abandoned as soon as it passes its limit, and a file is only kept once its sha256 matches the
expected one. Failures are ``UnreachableError`` (could not get it) or ``BadDataError`` (got it,
but it is too large or not what was expected).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp

from verifier.errors import BadDataError, UnreachableError
from verifier.statement import Digest

__all__ = ["fetch_bytes", "fetch_file"]

_CHUNK = 64 * 1024
_DEFAULT_TIMEOUT = 300.0


def _check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise BadDataError("url", f"{url[:200]!r} is not an http(s) URL")


async def fetch_bytes(
    session: aiohttp.ClientSession, url: str, limit: int, time_limit: float = _DEFAULT_TIMEOUT
) -> bytes:
    """GET ``url`` into memory; at most ``limit`` bytes."""
    _check_url(url)
    buf = bytearray()
    try:
        async with asyncio.timeout(time_limit), session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise UnreachableError(url, f"HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > limit:
                raise BadDataError("download", f"{url}: {resp.content_length} bytes, limit {limit}")
            async for chunk in resp.content.iter_chunked(_CHUNK):
                buf += chunk
                if len(buf) > limit:
                    raise BadDataError("download", f"{url}: more than {limit} bytes")
    except TimeoutError as e:
        raise UnreachableError(url, f"no complete answer within {time_limit:.0f}s") from e
    except aiohttp.ClientError as e:
        raise UnreachableError(url, f"{type(e).__name__}: {e}") from e
    return bytes(buf)


async def fetch_file(
    session: aiohttp.ClientSession,
    url: str,
    dest: Path,
    limit: int,
    sha256: Digest | None = None,
    size: int | None = None,
    time_limit: float = _DEFAULT_TIMEOUT,
) -> tuple[Digest, int]:
    """GET ``url`` into ``dest`` (at most ``limit`` bytes), checking ``size`` and ``sha256``.

    The body is written to a temporary name next to ``dest`` and renamed only after the checks
    pass, so ``dest`` never holds unchecked bytes. Returns the digest and size.
    """
    _check_url(url)
    if size is not None and size > limit:
        raise BadDataError("download", f"{dest.name} is {size} bytes, limit {limit}")
    tmp = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    n = 0
    try:
        async with asyncio.timeout(time_limit), session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise UnreachableError(url, f"HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > limit:
                raise BadDataError("download", f"{url}: {resp.content_length} bytes, limit {limit}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as out:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    n += len(chunk)
                    if n > limit:
                        raise BadDataError("download", f"{url}: more than {limit} bytes")
                    h.update(chunk)
                    out.write(chunk)
    except TimeoutError as e:
        tmp.unlink(missing_ok=True)
        raise UnreachableError(url, f"no complete answer within {time_limit:.0f}s") from e
    except aiohttp.ClientError as e:
        tmp.unlink(missing_ok=True)
        raise UnreachableError(url, f"{type(e).__name__}: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    digest = Digest(h.hexdigest())
    if size is not None and n != size:
        tmp.unlink(missing_ok=True)
        raise BadDataError("download", f"{dest.name}: {n} bytes, expected {size}")
    if sha256 is not None and digest != sha256:
        tmp.unlink(missing_ok=True)
        raise BadDataError(
            "download", f"{dest.name}: sha256 {digest}, expected {sha256} (file was altered)"
        )
    tmp.rename(dest)
    return digest, n
