"""``import verifier`` loads the pure core only: aiohttp comes with the first online query
(issue 12: it was ~400 ms of every installer run's 550 ms import)."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    return set(out.split())


def test_import_verifier_does_not_import_aiohttp() -> None:
    loaded = _modules_after("import verifier, verifier.cli, verifier.decision")
    assert "verifier.sources" in loaded  # the test would pass vacuously otherwise
    assert not {m for m in loaded if m.split(".")[0] in ("aiohttp", "yarl", "multidict")}


def test_aiohttp_loads_when_an_online_fetcher_opens() -> None:
    code = (
        "import asyncio, verifier\n"
        "async def main():\n"
        "    async with verifier.open_fetcher():\n"
        "        pass\n"
        "asyncio.run(main())"
    )
    assert "aiohttp" in _modules_after(code)
