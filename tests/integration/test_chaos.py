"""The chaos run: two rebuilder nodes, a coordinator and mosquitto rebuild a test repository
while 20 SIGKILLs hit, at random moments, the nodes, their build sandboxes, the coordinator and
the broker (each killed process is started again). Then the invariants of ARCHITECTURE §6:
every version final on every node, one attestation per finished attempt and none for an
interrupted one, no false failure, node and coordinator identical, outboxes empty,
``PRAGMA integrity_check`` ok, nothing left in a state directory that no row explains, and (the
autouse fixture) no process left behind.

The seed is printed and can be set with ``RQ_CHAOS_SEED`` to replay a run's choices.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rqdemo.testrepo import build_test_repository, default_packages, serve_repository
from tests.processes import catches, descendants
from tests.state_check import unexplained
from tests.support import Mosquitto, free_port, wait_until
from tests.unit.rebuilder.node_helpers import amake_node
from verifier.keys import load_private_key, public_key_pem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
BIN = Path(sys.executable).parent
KILLS = 20
# the job verdict of each kind of test package (verifier/verdicts.py)
EXPECTED = {"reproducible": "reproduced", "unreproducible": "unreproducible",
            "tampered": "tampered"}


def _query(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@dataclass
class Service:
    """One long-running process of the network, started again after each kill."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0
    starts: list[float] = field(default_factory=list)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.starts.append(time.monotonic())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.kills += 1

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        # a process restarted a moment ago may not have reached its entry point's first line,
        # where it starts catching SIGTERM (rebuilder/_stopsignals.py); before that no program
        # can
        proc = self.proc
        wait_until(lambda: catches(proc.pid, signal.SIGTERM) or proc.poll() is not None, 60,
                   f"{self.name} to catch SIGTERM")
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def _coordinator_config(d: Path, nodes: list[tuple[str, Path, str]], mqtt_port: int,
                        port: int) -> Path:
    (d / "keys").mkdir(parents=True, exist_ok=True)
    lines = ["[coordinator]", f'listen = "127.0.0.1:{port}"',
             f'public_url = "http://127.0.0.1:{port}"', 'database = "coordinator.db"',
             "catchup_interval = 2", "online_after = 60", "verify_workers = 0", "",
             "[mqtt]", 'host = "127.0.0.1"', f"port = {mqtt_port}"]
    for node_id, node_dir, url in nodes:
        key = load_private_key(node_dir / "keys" / "signing.pem")
        (d / "keys" / f"{node_id}.pub").write_text(public_key_pem(key.public_key()))
        lines += ["", "[[rebuilder]]", f'id = "{node_id}"', f'operator = "op-{node_id}"',
                  f'url = "{url}"', f'public_key_file = "keys/{node_id}.pub"']
    path = d / "coordinator.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _sandboxes(node: Service) -> list[int]:
    """The outer bwrap of every build the node is running now."""
    if node.proc is None or node.proc.poll() is not None:
        return []
    found = []
    for pid, name in descendants(node.proc.pid).items():
        if name == "bwrap":
            try:
                parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if parent == node.proc.pid:
                found.append(pid)
    return found


async def test_chaos_run_keeps_every_invariant(tmp_path: Path, mosquitto: Mosquitto) -> None:
    seed = int(os.environ.get("RQ_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed} (RQ_CHAOS_SEED={seed} replays the choices)")
    rnd = random.Random(seed)
    repo = await asyncio.to_thread(build_test_repository, tmp_path / "repo",
                                   default_packages(extra=4))
    kinds = {p.source: p.kind for p in repo.packages}
    n_jobs = len(repo.packages)
    async with serve_repository(repo.path) as base:
        nodes: list[Service] = []
        configs = []
        for node_id in ("rb-chaos-a", "rb-chaos-b"):
            cfg = await amake_node(tmp_path / node_id, "--architectures",
                                   ",".join(repo.architectures), node_id=node_id,
                                   mqtt_port=mosquitto.port, repo_url=base)
            assert cfg.path is not None
            configs.append(cfg)
            nodes.append(Service(node_id, [str(BIN / "rebuilder"), "run", "--config",
                                           str(cfg.path), "--grace", "5"],
                                 tmp_path / f"{node_id}.log"))
        coord_port = free_port()
        coord_dir = tmp_path / "coordinator"
        coord_cfg = _coordinator_config(
            coord_dir, [(c.node.id, c.node.state_dir, c.node.public_url) for c in configs],
            mosquitto.port, coord_port)
        coordinator = Service("coordinator", [str(BIN / "coordinator"), "run", "--config",
                                              str(coord_cfg)], tmp_path / "coordinator.log")
        services = [*nodes, coordinator]
        kills: list[str] = []
        try:
            for s in services:
                s.start()
            # 20 kills at random moments while the nodes build
            for _ in range(KILLS):
                await asyncio.sleep(rnd.uniform(0.3, 3.0))
                target = rnd.choice(["node", "node", "sandbox", "sandbox", "coordinator",
                                     "broker"])
                if target == "sandbox":
                    running = [(n, pid) for n in nodes for pid in _sandboxes(n)]
                    if running:
                        node, pid = rnd.choice(running)
                        os.kill(pid, signal.SIGKILL)
                        kills.append(f"sandbox of {node.name}")
                        continue
                    target = "node"
                if target == "node":
                    node = rnd.choice(nodes)
                    node.kill()
                    kills.append(node.name)
                    await asyncio.sleep(rnd.uniform(0.0, 1.5))
                    node.start()
                elif target == "coordinator":
                    coordinator.kill()
                    kills.append("coordinator")
                    await asyncio.sleep(rnd.uniform(0.0, 1.5))
                    coordinator.start()
                else:
                    assert mosquitto.process is not None
                    mosquitto.process.send_signal(signal.SIGKILL)
                    mosquitto.process.wait(30)
                    kills.append("broker")
                    await asyncio.sleep(rnd.uniform(0.0, 1.5))
                    await asyncio.to_thread(mosquitto.start)  # same port
            print("kills:", ", ".join(kills))

            def settled() -> bool:
                for s in services:
                    assert s.proc is not None and s.proc.poll() is None, f"{s.name} died"
                for c in configs:
                    db = c.node.db_path
                    if _query(db, "SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'failed')"
                              )[0][0] != n_jobs:
                        return False
                    if _query(db, "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL"
                              )[0][0]:
                        return False
                coord_db = coord_dir / "coordinator.db"
                if not coord_db.exists():
                    return False
                stored = _query(coord_db, "SELECT COUNT(*) FROM envelopes")[0][0]
                return stored == sum(
                    _query(c.node.db_path, "SELECT COUNT(*) FROM attestations")[0][0]
                    for c in configs)

            await asyncio.to_thread(wait_until, settled, 240,
                                    "every job final, every outbox empty, the coordinator"
                                    " caught up")
            for s in services:
                assert s.stop() == 0, f"{s.name} did not stop cleanly; see {s.log}"
        finally:
            for s in services:
                s.stop()

    coord_db = coord_dir / "coordinator.db"
    assert _query(coord_db, "PRAGMA integrity_check") == [("ok",)]
    for c in configs:
        db = c.node.db_path
        # every version final
        assert _query(db, "SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'failed')") == [
            (n_jobs,)]
        # one attestation per finished attempt, none for an interrupted one, none signed twice
        builds = _query(db, "SELECT b.job_id, b.attempt, b.invocation_id, b.verdict, b.failure,"
                            " j.source, a.envelope_sha256 FROM builds b JOIN jobs j"
                            " ON j.id = b.job_id LEFT JOIN attestations a ON a.build_id = b.id")
        assert len(builds) == n_jobs  # one finished attempt per job: nothing was requeued
        assert len({b[2] for b in builds}) == n_jobs and all(b[6] for b in builds)
        assert _query(db, "SELECT COUNT(*) FROM attestations") == [(n_jobs,)]
        for _job, attempt, invocation, verdict, failure, source, _sha in builds:
            assert str(invocation).endswith(f"/{attempt}")
            if verdict == "failed":  # only a job interrupted too often may fail, and says so
                assert "the build was interrupted" in str(failure), (source, failure)
            else:
                assert verdict == EXPECTED[kinds[str(source)]], (source, verdict)
        # outbox empty, database intact, nothing unexplained on disk
        assert _query(db, "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL") == [(0,)]
        assert _query(db, "PRAGMA integrity_check") == [("ok",)]
        assert unexplained(c.node.state_dir) == []
        # the coordinator holds exactly this node's envelopes, byte for byte
        node_envs = {str(r[0]): bytes(r[1]) for r in _query(
            db, "SELECT envelope_sha256, envelope FROM attestations")}  # type: ignore[arg-type]
        coord_envs = {bytes(r[0]).hex(): bytes(r[1]) for r in _query(  # type: ignore[arg-type]
            coord_db, f"SELECT digest, body FROM envelopes WHERE rebuilder = '{c.node.id}'")}  # noqa: S608
        assert coord_envs == node_envs
    # the log tells what happened
    text = "".join(n.log.read_text() for n in nodes)
    if any(k.startswith("rb-") for k in kills):
        assert "re-queued" in text or "interrupted" in text or "stopped" in text
    print(json.dumps({"seed": seed, "kills": kills}))
