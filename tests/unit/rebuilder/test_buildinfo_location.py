"""Finding a job's buildinfo: Debian's naming, the candidates' order, re-resolution, pinning."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rebuilder.config import ConfigError, parse_config
from rebuilder.db import Store
from rebuilder.debian.locate import resolve_buildinfo
from tests.unit.rebuilder.node_helpers import job


def _config(tmp_path: Path, **repo: object) -> object:
    return parse_config(
        {"node": {"id": "rb-t", "operator": "op"},
         "repository": [{"name": "local", "base_url": "http://deb.example/debian",
                         "suite": "bookworm", **repo}]},
        tmp_path,
    )


def test_default_names_drop_the_epoch(tmp_path: Path) -> None:
    repo = _config(tmp_path).repositories[0]  # type: ignore[attr-defined]
    assert repo.buildinfo_candidates("attr", "1:2.5.1-4", "amd64") == (
        "http://deb.example/debian/buildinfo/attr_2.5.1-4_amd64.buildinfo",)


def test_an_all_job_also_tries_each_build_architecture(tmp_path: Path) -> None:
    repo = _config(tmp_path, architectures=["all", "amd64", "arm64"]).repositories[0]  # type: ignore[attr-defined]
    assert repo.buildinfo_candidates("cowsay", "3.03+dfsg2-8", "all") == tuple(
        f"http://deb.example/debian/buildinfo/cowsay_3.03+dfsg2-8_{a}.buildinfo"
        for a in ("all", "amd64", "arm64"))


def test_every_placeholder(tmp_path: Path) -> None:
    repo = _config(
        tmp_path,
        buildinfo_url="{base}/{pool_prefix}/{source}/{version}/{version_noepoch}_{arch}",
    ).repositories[0]  # type: ignore[attr-defined]
    assert repo.buildinfo_for("libsigsegv", "1:2.14-1", "amd64") == (
        "http://deb.example/debian/libs/libsigsegv/1:2.14-1/2.14-1_amd64")
    # a template without {arch}: one URL, whatever the job
    one = _config(tmp_path, buildinfo_url="{base}/{source}.buildinfo").repositories[0]  # type: ignore[attr-defined]
    assert one.buildinfo_candidates("a", "1", "all") == ("http://deb.example/debian/a.buildinfo",)


def test_unknown_placeholder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown placeholder"):
        _config(tmp_path, buildinfo_url="{base}/{suite}/x")


def test_resolution_follows_the_current_config(tmp_path: Path) -> None:
    stale = replace(job("hello", "1:1.0-1", "all"), buildinfo_url="http://old.example/x")
    cfg = _config(tmp_path)
    got = resolve_buildinfo(cfg, stale)  # type: ignore[arg-type]
    assert got.buildinfo_url == "http://deb.example/debian/buildinfo/hello_1.0-1_all.buildinfo"
    assert got.buildinfo_candidates == (
        "http://deb.example/debian/buildinfo/hello_1.0-1_amd64.buildinfo",)
    pinned = replace(stale, buildinfo_pinned=True)
    assert resolve_buildinfo(cfg, pinned).buildinfo_url == "http://old.example/x"  # type: ignore[arg-type]
    assert resolve_buildinfo(cfg, pinned).buildinfo_candidates == ()  # type: ignore[arg-type]


async def test_pinned_url_is_kept_until_requeued(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        row = await store.ensure_job(job())
        await store.set_buildinfo_url(row.id, "http://given.example/b.buildinfo", pinned=True)
        claimed = await store.claim_job(row.id)
        assert claimed is not None and claimed.buildinfo_pinned
        assert claimed.to_build_job().buildinfo_url == "http://given.example/b.buildinfo"
        assert claimed.to_build_job().buildinfo_pinned
        async with store.transaction() as db:
            await db.execute("UPDATE jobs SET state = 'done' WHERE id = ?", (row.id,))
        assert await store.requeue_finished([row.id]) == [row.id]
        again = await store.job(row.id)
        assert again is not None and not again.buildinfo_pinned
    finally:
        await store.close()
