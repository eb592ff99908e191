"""``rebuilder rebuild`` in the foreground: the daemon's code path; the exit code is the verdict."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rebuilder.db import Store
from rqdemo.testrepo import build_test_repository, serve_repository
from tests.unit.rebuilder.node_helpers import amake_node

pytestmark = pytest.mark.slow


def _rebuild(config: Path, buildinfo: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "rebuilder"
    return subprocess.run([str(exe), "rebuild", "--config", str(config), "--buildinfo",
                           buildinfo], capture_output=True, text=True, timeout=300, check=False)


async def test_rebuild_exit_codes(tmp_path: Path) -> None:
    repo = await asyncio.to_thread(build_test_repository, tmp_path / "repo")
    async with serve_repository(repo.path) as base:
        cfg = await amake_node(tmp_path, "--no-mqtt", repo_url=base)
        assert cfg.path is not None
        hello = repo.package("rq-hello")
        r = await asyncio.to_thread(_rebuild, cfg.path, f"{base}/{hello.buildinfo_path}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "reproduced" in r.stdout
        unrepro = repo.package("rq-unrepro")
        r = await asyncio.to_thread(_rebuild, cfg.path, f"{base}/{unrepro.buildinfo_path}")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "unreproducible" in r.stdout
        tampered = repo.package("rq-tampered")
        r = await asyncio.to_thread(_rebuild, cfg.path, f"{base}/{tampered.buildinfo_path}")
        assert r.returncode == 4, r.stdout + r.stderr
        assert "tampered" in r.stdout and "TAMPERED" in r.stdout
        # A local buildinfo whose package the repository does not serve: a signed failure.
        local = tmp_path / "ghost.buildinfo"
        text = (repo.path / hello.buildinfo_path).read_text()
        local.write_text(text.replace("rq-hello", "rq-ghost"))
        r = await asyncio.to_thread(_rebuild, cfg.path, str(local))
        assert r.returncode == 2, r.stdout + r.stderr
        assert "failed" in r.stdout
        garbage = tmp_path / "garbage.buildinfo"
        garbage.write_bytes(b"\x00\xff" * 100)
        r = await asyncio.to_thread(_rebuild, cfg.path, str(garbage))
        assert r.returncode == 3 and "buildinfo" in r.stderr
        store = await Store.open(cfg.node.db_path, readonly=True)
        counts = await store.counts()
        await store.close()
        assert counts["last_seq"] == 4 and counts["backlog"] == 4
        assert shutil.which("true")


async def test_rebuild_with_a_buildinfo_url_on_a_known_job_uses_that_url(tmp_path: Path) -> None:
    """The job row keeps the URL it was first queued with; `--buildinfo URL` must not reuse it."""
    from verifier.dsse import Envelope
    from verifier.statement import RebuildStatement, parse_statement

    repo = await asyncio.to_thread(build_test_repository, tmp_path / "repo")
    hello = repo.package("rq-hello")
    alt = repo.path / "elsewhere" / Path(hello.buildinfo_path).name
    alt.parent.mkdir()
    shutil.copyfile(repo.path / hello.buildinfo_path, alt)
    async with serve_repository(repo.path) as base:
        cfg = await amake_node(tmp_path, "--no-mqtt", repo_url=base)
        assert cfg.path is not None
        first = f"{base}/{hello.buildinfo_path}"
        given = f"{base}/elsewhere/{alt.name}"
        for url in (first, given):
            r = await asyncio.to_thread(_rebuild, cfg.path, url)
            assert r.returncode == 0, r.stdout + r.stderr
        store = await Store.open(cfg.node.db_path, readonly=True)
        try:
            rows = await store.attestations_since(0, 10)
            job = await store.find_job("rq-hello", hello.version, "all")
        finally:
            await store.close()
    uris = []
    for row in rows:
        st = parse_statement(Envelope.from_bytes(row.envelope).payload)
        assert isinstance(st, RebuildStatement)
        uris.append(st.buildinfo_uri)
    assert uris == [first, given]  # one job, the second attempt fetched the URL given
    assert job is not None and job.attempts == 2 and job.buildinfo_url == given
    assert job.buildinfo_pinned
