"""The watcher's round summary counts an ``Architecture: all`` binary once, although every
binary-<arch> index lists it."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from rebuilder.config import parse_config
from rebuilder.db import Store
from rebuilder.debian.watch import Watcher
from tests.support import free_port
from tests.unit.rebuilder.node_helpers import serve

H = hashlib.sha256(b"x").hexdigest()


def _index(arch: str) -> bytes:
    return (
        f"Package: hello\nVersion: 1.0-1\nArchitecture: {arch}\n"
        f"Filename: pool/main/h/hello/hello_1.0-1_{arch}.deb\nSHA256: {H}\n\n"
        "Package: hello-doc\nSource: hello\nVersion: 1.0-1\nArchitecture: all\n"
        f"Filename: pool/main/h/hello/hello-doc_1.0-1_all.deb\nSHA256: {H}\n"
    ).encode()


async def test_architecture_all_counted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dists = tmp_path / "www" / "debian" / "dists" / "stable"
    lines = []
    for arch in ("amd64", "arm64"):
        (dists / "main" / f"binary-{arch}").mkdir(parents=True)
        data = _index(arch)
        (dists / "main" / f"binary-{arch}" / "Packages").write_bytes(data)
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} main/binary-{arch}/Packages")
    (dists / "Release").write_text("Suite: stable\nComponents: main\nSHA256:\n"
                                   + "\n".join(lines) + "\n")
    app = web.Application()
    app.router.add_static("/", tmp_path / "www")
    async with serve(app, free_port()) as base:
        cfg = parse_config({"node": {"id": "a", "operator": "o"},
                            "repository": [{"name": "local", "base_url": f"{base}/debian",
                                            "suite": "stable", "trusted": True,
                                            "architectures": ["amd64", "arm64", "all"]}]},
                           tmp_path)
        store = await Store.open(tmp_path / "s.db")
        async with aiohttp.ClientSession() as session:
            watcher = Watcher(cfg.repositories, store, session)
            with caplog.at_level(logging.INFO, logger="rebuilder.watch"):
                added = await watcher.poll(watcher.repositories[0])
        await store.close()
    assert len(added) == 3  # hello amd64, hello arm64, hello all
    [done] = [r.getMessage() for r in caplog.records if "round done" in r.getMessage()]
    assert done.startswith("repository local: round done, Release ")
    assert done.endswith(", 3 binaries, 3 source versions, 3 new")
