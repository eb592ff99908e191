"""Fetching a rebuild's inputs over HTTP with size limits and hash checks (ARCHITECTURE §2.6).

Every download goes through ``fetch_bytes`` or ``fetch_file``, thin wrappers over the
verifier's fetcher seam (``verifier.sources.FetcherInterface``): the body is read in chunks and
abandoned as soon as it passes its limit, and a file is only kept once its sha256 matches the
expected one (``download_file``). Failures are ``UnreachableError`` (could not get it; an HTTP
status other than 200 is an ``HTTPStatusError`` with the status as a number) or
``BadDataError`` (got it, but it is too large or not what was expected). Either function takes
an ``aiohttp.ClientSession`` (production) or any ``FetcherInterface`` (a lying or slow peer in
tests).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from verifier.errors import BadDataError, HTTPStatusError
from verifier.sources import FetcherInterface, TooLargeError
from verifier.sources import fetcher_for as _fetcher_for
from verifier.statement import Digest

__all__ = ["Fetcher", "fetch_bytes", "fetch_file", "fetcher_for"]

_DEFAULT_TIMEOUT = 300.0
Fetcher = aiohttp.ClientSession | FetcherInterface


def fetcher_for(source: Fetcher, *, follow_redirects: bool = False) -> FetcherInterface:
    """The seam over ``source``: a session is wrapped (any content type, as a mirror serves)."""
    return _fetcher_for(source, accept="*/*", follow_redirects=follow_redirects)


def _check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise BadDataError("url", f"{url[:200]!r} is not an http(s) URL")


def _node_status(e: HTTPStatusError) -> HTTPStatusError:
    # the node's logs and signed failure statements have always said "HTTP 404"
    return HTTPStatusError(e.url, e.status, f"HTTP {e.status}")


def _too_large(e: TooLargeError) -> BadDataError:
    # "<url>: <n> bytes, limit <cap>" or "<url>: more than <cap> bytes", as they always said
    if e.announced is not None:
        return BadDataError("download", f"{e.url}: {e.announced} bytes, limit {e.limit}")
    return BadDataError("download", f"{e.url}: more than {e.limit} bytes")


async def fetch_bytes(
    session: Fetcher, url: str, limit: int, time_limit: float = _DEFAULT_TIMEOUT
) -> bytes:
    """GET ``url`` into memory; at most ``limit`` bytes."""
    _check_url(url)
    try:
        return await fetcher_for(session).fetch(url, max_bytes=limit, timeout=time_limit)
    except HTTPStatusError as e:
        raise _node_status(e) from e
    except TooLargeError as e:
        raise _too_large(e) from e


async def fetch_file(
    session: Fetcher,
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
    try:
        return await fetcher_for(session).download_file(
            url, dest, max_bytes=limit, timeout=time_limit, sha256=sha256, size=size)
    except HTTPStatusError as e:
        raise _node_status(e) from e
    except TooLargeError as e:
        raise _too_large(e) from e
