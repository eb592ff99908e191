"""A full state filesystem (a real tmpfs of a few MiB): the node stops taking jobs instead of
draining its queue, says so in the log, ``rebuilder status`` and ``/metrics``, resumes by itself
when space returns, and leaves nothing ``running``; ``rebuilder run`` on a full disk exits with
one line instead of hanging."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from rqdemo.testrepo import build_test_repository, serve_repository
from tests.state_check import fill, small_filesystem, unexplained
from tests.support import metric, wait_until
from tests.unit.rebuilder.node_helpers import amake_node

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
EXE = Path(sys.executable).parent / "rebuilder"


def _query(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=60,
                          check=False)


async def _metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        assert r.status == 200
        return metric(await r.text(), name)


async def test_full_disk_pauses_the_workers_and_they_resume(tmp_path: Path) -> None:
    repo = await asyncio.to_thread(build_test_repository, tmp_path / "repo")
    n_jobs = len(repo.packages)
    log = tmp_path / "node.log"
    with small_filesystem(tmp_path / "node", 24):
        async with serve_repository(repo.path) as base:
            cfg = await amake_node(tmp_path, "--no-mqtt", "--architectures",
                                   ",".join(repo.architectures), repo_url=base)
            assert cfg.path is not None
            text = cfg.path.read_text()
            cfg.path.write_text(text.replace("[node]\n", "[node]\nmin_free_mb = 4\n", 1))
            state, db = cfg.node.state_dir, cfg.node.db_path
            low = fill(state, leave_bytes=3 * MiB)  # below the 4 MiB floor, writes still fit
            with log.open("ab") as out:
                proc = subprocess.Popen([str(EXE), "run", "--config", str(cfg.path),
                                         "--grace", "5"], stdout=out, stderr=subprocess.STDOUT)
            try:
                await asyncio.to_thread(
                    wait_until,
                    lambda: "not taking jobs" in log.read_text()
                    and _query(db, "SELECT COUNT(*) FROM jobs")[0][0] == n_jobs,
                    60, "the watcher to queue every job and the workers to pause",
                )
                # the queue is not drained: nothing claimed, nothing signed
                assert _query(db, "SELECT state, COUNT(*) FROM jobs GROUP BY state") == [
                    ("queued", n_jobs)]
                assert _query(db, "SELECT COUNT(*) FROM builds") == [(0,)]
                status = await asyncio.to_thread(_cli, "status", "--config", str(cfg.path))
                assert status.returncode == 0, status.stderr
                assert "NOT TAKING JOBS" in status.stdout and "floor 4 MiB" in status.stdout
                assert await _metric(cfg.node.public_url, "rq_intake_paused") == 1

                full = fill(state)  # now every write fails with ENOSPC
                assert await _metric(cfg.node.public_url, "rq_intake_paused") == 1
                status = await asyncio.to_thread(_cli, "status", "--config", str(cfg.path))
                assert "Traceback" not in status.stderr
                assert "schema version 0" not in status.stdout + status.stderr
                assert (status.returncode == 0 and "NOT TAKING JOBS" in status.stdout) or (
                    status.returncode == 3 and "is full" in status.stderr), status
                assert proc.poll() is None, "the daemon must keep running on a full disk"

                full.unlink()
                low.unlink()
                await asyncio.to_thread(
                    wait_until,
                    lambda: _query(db, "SELECT COUNT(*) FROM jobs WHERE state IN"
                                   " ('done', 'failed')")[0][0] == n_jobs,
                    240, "every job built once space returned",
                )
                assert "taking jobs again" in log.read_text()
                assert await _metric(cfg.node.public_url, "rq_intake_paused") == 0
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 60) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert _query(db, "SELECT COUNT(*) FROM jobs WHERE state = 'running'") == [(0,)]
            # no false failure: the full disk paused the builds instead of failing them
            assert _query(db, "SELECT COUNT(*) FROM builds WHERE verdict = 'failed'") == [(0,)]
            assert _query(db, "PRAGMA integrity_check") == [("ok",)]
            assert unexplained(state) == []

            # A node started on a full disk whose database still opens waits for space.
            full = fill(state)
            log2 = tmp_path / "node2.log"
            with log2.open("ab") as out:
                proc = subprocess.Popen([str(EXE), "run", "--config", str(cfg.path)],
                                        stdout=out, stderr=subprocess.STDOUT)
            try:
                await asyncio.to_thread(
                    wait_until, lambda: proc.poll() is not None
                    or "not taking jobs" in log2.read_text(), 60, "a pause or an exit")
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(proc.wait, 60) == 0
                else:  # or it cannot open it: one line, non-zero
                    assert proc.returncode == 3 and "Traceback" not in log2.read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            full.unlink()


async def test_run_on_a_full_disk_fails_in_one_line(tmp_path: Path) -> None:
    """Regression: the failed PRAGMA left aiosqlite's thread running, so ``rebuilder run``
    printed a traceback and hung, and systemd's Restart=on-failure never fired."""
    with small_filesystem(tmp_path / "node", 8):
        cfg = await amake_node(tmp_path, "--no-mqtt")
        assert cfg.path is not None
        full = fill(cfg.node.state_dir)
        for command in ("run", "status", "requeue"):
            extra = ["--all-failed"] if command == "requeue" else []
            done = await asyncio.to_thread(_cli, command, "--config", str(cfg.path), *extra)
            assert done.returncode == 3, (command, done)
            assert "Traceback" not in done.stderr
            # what the daemon logged before it failed (e.g. its build limits), then one line
            lines = [ln for ln in done.stderr.strip().splitlines()
                     if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ", ln)]
            assert len(lines) == 1 and lines[0].startswith(f"rebuilder {command}: "), lines
            assert done.stderr.strip().splitlines()[-1] == lines[0]
            assert "is full" in lines[0] and "schema version 0" not in lines[0], lines
        full.unlink()
