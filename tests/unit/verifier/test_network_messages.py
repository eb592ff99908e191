"""Connection errors say what happened, without aiohttp's ``ssl:default`` for plain HTTP
(a real refused port on this machine)."""

from __future__ import annotations

import pytest

from tests.support import free_port
from verifier.errors import UnreachableError
from verifier.sources import open_fetcher


@pytest.mark.parametrize(("scheme", "tls"), [("http", ""), ("https", " over TLS")])
async def test_refused_connection_message(scheme: str, tls: str) -> None:
    port = free_port()  # nothing listens there
    url = f"{scheme}://127.0.0.1:{port}/v1/node"
    async with open_fetcher() as fetcher:
        with pytest.raises(UnreachableError) as info:
            await fetcher.fetch(url, max_bytes=100, timeout=10)
    assert str(info.value) == f"{url}: cannot connect to 127.0.0.1:{port}{tls}: Connection refused"
    assert "ssl:" not in str(info.value)
