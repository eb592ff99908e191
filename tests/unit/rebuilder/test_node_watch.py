"""The watcher against a real HTTP server: indexes in, jobs out; hostile indexes change nothing."""

from __future__ import annotations

import hashlib
import lzma
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from rebuilder.db import Store
from rebuilder.debian.watch import Watcher
from tests.support import free_port
from tests.unit.rebuilder.node_helpers import serve
from tests.unit.rebuilder.test_node_indexes import PACKAGES


def write_repo(root: Path, packages: bytes, *, compress: bool = True,
               lie_about_digest: bool = False) -> None:
    dists = root / "debian" / "dists" / "stable"
    (dists / "main" / "binary-amd64").mkdir(parents=True, exist_ok=True)
    for old in (dists / "main" / "binary-amd64").iterdir():
        old.unlink()
    name = "main/binary-amd64/Packages" + (".xz" if compress else "")
    data = lzma.compress(packages) if compress else packages
    (dists / name).write_bytes(data)
    digest = hashlib.sha256(data if not lie_about_digest else b"x").hexdigest()
    (dists / "Release").write_text(
        f"Suite: stable\nComponents: main\nArchitectures: amd64\nSHA256:\n"
        f" {digest} {len(data)} {name}\n"
    )


@pytest.fixture
async def repo(tmp_path: Path) -> Any:
    root = tmp_path / "www"
    write_repo(root, PACKAGES)
    app = web.Application()
    app.router.add_static("/", root)
    async with serve(app, free_port()) as base:
        yield root, f"{base}/debian"


async def _watch(tmp_path: Path, base: str,
                 **extra: object) -> tuple[Watcher, Store, aiohttp.ClientSession]:
    from rebuilder.config import parse_config

    cfg = parse_config({"node": {"id": "a", "operator": "o"},
                        "repository": [{"name": "local", "base_url": base, "suite": "stable",
                                        "trusted": True, **extra}]},
                       tmp_path)
    store = await Store.open(tmp_path / "s.db")
    session = aiohttp.ClientSession()
    return Watcher(cfg.repositories, store, session), store, session


async def test_new_versions_are_queued_once(tmp_path: Path, repo: Any) -> None:
    root, base = repo
    watcher, store, session = await _watch(tmp_path, base)
    try:
        added = await watcher.poll(watcher.repositories[0])
        assert {(j.source, j.version, j.architecture) for j in added} == {
            ("hello", "1.0-1", "amd64"), ("hello", "1.0-1", "all"),
            ("foo", "2:3.1-2+b1", "amd64")}  # a binNMU: its own job
        assert await watcher.poll(watcher.repositories[0]) == []
        # A new version appears: only it is queued.
        write_repo(root, PACKAGES.replace(b"Version: 1.0-1\nArchitecture: amd64",
                                          b"Version: 1.1-1\nArchitecture: amd64"))
        added = await watcher.poll(watcher.repositories[0])
        assert [(j.source, j.version) for j in added] == [("hello", "1.1-1")]
        assert (await store.counts())["queued"] == 4
    finally:
        await session.close()
        await store.close()


@pytest.mark.parametrize(
    "attack",
    ["digest-mismatch", "garbage-index", "oversized-index", "missing-release", "plain-garbage"],
)
async def test_hostile_index_keeps_previous_state(tmp_path: Path, repo: Any, attack: str) -> None:
    root, base = repo
    watcher, store, session = await _watch(tmp_path, base, max_index_mb=1)
    try:
        await watcher.poll(watcher.repositories[0])
        before = await store.counts()
        if attack == "digest-mismatch":
            write_repo(root, PACKAGES + b"\nPackage: evil\nVersion: 1\nArchitecture: amd64\n"
                       b"Filename: p/e.deb\nSHA256: " + b"4" * 64 + b"\n", lie_about_digest=True)
        elif attack == "garbage-index":
            write_repo(root, b"\x00\xff" * 1000)
        elif attack == "oversized-index":  # valid, but 2 MiB decompressed: max_index_mb = 1
            write_repo(root, PACKAGES + b"\nPackage: pad\nVersion: 1\nArchitecture: amd64\n"
                       b"Filename: p/p.deb\nSHA256: " + b"4" * 64 + b"\nX-Pad: "
                       + b"y" * (2 << 20) + b"\n")
        elif attack == "missing-release":
            (root / "debian" / "dists" / "stable" / "Release").unlink()
        elif attack == "plain-garbage":
            write_repo(root, b"this is not\na packages file\n", compress=False)
        report = await watcher.round(watcher.repositories[0])
        assert report.new == [] and report.error is not None
        if attack == "oversized-index":
            assert "decompresses to more than 1048576 bytes (max_index_mb)" in report.error
        assert await store.counts() == before
        assert watcher.errors == 1
    finally:
        await session.close()
        await store.close()
