"""Crash safety: SIGKILL a real ``rebuilder run`` process mid-build, restart it, and check that
every job finishes, no invocation is signed twice and every attestation reaches MQTT.

Guarantee tested: the outbox delivers **at least once**; a subscriber deduplicating by envelope
sha256 sees exactly the stored set. A kill between the broker's PUBACK and the outbox mark may
resend one envelope after restart; every other envelope arrives exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from rebuilder.publish import attestation_topic, status_topic
from rqdemo.testrepo import build_test_repository, default_packages, serve_repository
from tests.state_check import unexplained
from tests.support import Mosquitto, wait_until
from tests.unit.rebuilder.node_helpers import Subscriber, amake_node
from verifier.dsse import Envelope
from verifier.statement import RebuildStatement, parse_statement

pytestmark = pytest.mark.slow


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "rebuilder"
    with log.open("ab") as out:
        return subprocess.Popen([str(exe), "run", "--config", str(config), "--grace", "10"],
                                stdout=out, stderr=subprocess.STDOUT)


def _states(sub: Subscriber) -> list[str]:
    """The ``state`` of every (signed: docs/formats.md) status message, in arrival order."""
    return [json.loads(base64.b64decode(json.loads(sub.payloads[d])["payload"]))["state"]
            for d in sub.received]


def _query(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_sigkill_mid_build_then_restart(tmp_path: Path, mosquitto: Mosquitto) -> None:
    packages = default_packages(extra=2)
    repo = await asyncio.to_thread(build_test_repository, tmp_path / "repo", packages)
    n_jobs = len(repo.packages)
    async with serve_repository(repo.path) as base:
        cfg = await amake_node(tmp_path, "--architectures", ",".join(repo.architectures),
                               mqtt_port=mosquitto.port, repo_url=base)
        config_path = cfg.path
        assert config_path is not None
        db = cfg.node.db_path
        log = tmp_path / "node.log"
        async with Subscriber(mosquitto.host, mosquitto.port,
                              attestation_topic(cfg.node.id)) as sub, \
                Subscriber(mosquitto.host, mosquitto.port, status_topic(cfg.node.id)) as status:
            proc = _start(config_path, log)
            try:
                # Let at least one job finish, then kill while the next is running.
                await asyncio.to_thread(
                    wait_until,
                    lambda: bool(_query(db, "SELECT 1 FROM jobs WHERE state IN ('done','failed')"))
                    and bool(_query(db, "SELECT 1 FROM jobs WHERE state = 'running'")),
                    120, "a finished job and a running one",
                )
                killed = _query(db, "SELECT id, attempts FROM jobs WHERE state = 'running'")
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(30) == -signal.SIGKILL
                still = _query(db, "SELECT id, attempts FROM jobs WHERE state = 'running'")
                assert still, "the kill should leave a job marked running"
                # The broker sees the connection drop and publishes the last will.
                await asyncio.to_thread(
                    wait_until, lambda: _states(status)[-1:] == ["offline"], 30,
                    "the retained offline last will",
                )
                proc = _start(config_path, log)
                await asyncio.to_thread(
                    wait_until,
                    lambda: _query(db, "SELECT COUNT(*) FROM jobs WHERE state IN ('done','failed')"
                                   )[0][0] == n_jobs
                    and _query(db, "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL"
                               )[0][0] == 0,
                    240, "every job finished and published after the restart",
                )
                stored = [str(r[0]) for r in _query(db, "SELECT envelope_sha256 FROM attestations"
                                                        " ORDER BY seq")]
                await asyncio.to_thread(
                    wait_until, lambda: set(stored) <= set(sub.received), 30,
                    "every stored attestation received",
                )
                assert "online" in _states(status)[_states(status).index("offline"):]
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 60) == 0
            finally:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()

        # Every job finished once: one build row (one signed attempt) per job.
        builds = _query(db, "SELECT job_id, attempt, invocation_id FROM builds")
        assert len(builds) == n_jobs
        assert len({b[2] for b in builds}) == n_jobs
        assert sorted(b[0] for b in builds) == sorted(
            r[0] for r in _query(db, "SELECT id FROM jobs"))
        # The interrupted job was retried as a new attempt, signed under that attempt's id.
        for job_id, attempts in killed:
            attempt = _query(db, f"SELECT attempt FROM builds WHERE job_id = {job_id}")  # noqa: S608
            assert attempt == [(int(str(attempts)) + 1,)], (job_id, attempts, attempt)
        # Every attestation verifies its own invocation id and is unique.
        invocations = []
        for (blob,) in _query(db, "SELECT envelope FROM attestations"):
            st = parse_statement(Envelope.from_bytes(bytes(blob)).payload)  # type: ignore[arg-type]
            assert isinstance(st, RebuildStatement)
            invocations.append(st.invocation_id)
        assert len(invocations) == len(set(invocations)) == n_jobs
        # At least once, deduplicated exactly once; at most the one in flight is resent.
        counts = collections.Counter(sub.received)
        assert set(counts) == set(stored)
        assert sum(n - 1 for n in counts.values()) <= 1, counts
        text = log.read_text()
        assert "re-queued 1 job(s) interrupted by a previous crash" in text
        # The killed attempt's build directory (half-made outputs) is gone with the restart.
        assert unexplained(cfg.node.state_dir) == []


async def test_sigterm_mid_build_requeues_after_grace(tmp_path: Path) -> None:
    repo = await asyncio.to_thread(build_test_repository, tmp_path / "repo")
    async with serve_repository(repo.path) as base:
        cfg = await amake_node(tmp_path, "--no-mqtt", "--architectures",
                               ",".join(repo.architectures), repo_url=base)
        assert cfg.path is not None
        db = cfg.node.db_path
        exe = Path(sys.executable).parent / "rebuilder"
        log = tmp_path / "node.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([str(exe), "run", "--config", str(cfg.path), "--grace",
                                     "0.2"], stdout=out, stderr=subprocess.STDOUT)
        try:
            await asyncio.to_thread(
                wait_until, lambda: bool(_query(db, "SELECT 1 FROM jobs WHERE state = 'running'")),
                60, "a running build")
            running = _query(db, "SELECT id, attempts FROM jobs WHERE state = 'running'")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        (job_id, attempts), = running
        state = _query(db, f"SELECT state, attempts FROM jobs WHERE id = {job_id}")  # noqa: S608
        builds = _query(db, f"SELECT COUNT(*) FROM builds WHERE job_id = {job_id}")  # noqa: S608
        # Either the build beat the grace period (stored, done) or it was re-queued unsigned.
        if state[0][0] == "queued":
            assert builds == [(0,)] and state[0][1] == attempts
            assert "re-queued 1 interrupted job(s)" in log.read_text()
        else:
            assert state[0][0] in ("done", "failed") and builds == [(1,)]
        assert _query(db, "SELECT COUNT(*) FROM jobs WHERE state = 'running'") == [(0,)]
        assert "stopped" in log.read_text()
        assert unexplained(cfg.node.state_dir) == []  # the cancelled attempt left nothing
