"""``kill -9`` of a running ``coordinator run``: its verification worker processes exit too
(they used to be re-parented to PID 1 and run on, deaf to SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from tests.support import Mosquitto, free_port, port_open, publish_as_node, wait_until
from tests.unit.coordinator.factory import Signer, coordinator_toml, sha


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing ")"
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.add(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.slow
async def test_workers_exit_when_the_coordinator_is_killed(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    alpha = Signer("rb-alpha")
    port = free_port()
    config = coordinator_toml(tmp_path, [alpha], mosquitto.port, port)
    config.write_text(config.read_text().replace(
        "[coordinator]\n", "[coordinator]\nverify_workers = 2\n", 1))
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    workers: set[int] = set()
    try:
        wait_until(lambda: port_open(port), 30, "the coordinator's HTTP port")
        # The pool starts its processes on first use: give it an attestation to check.
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            for i in range(20):
                env = alpha.rebuild(f"p{i}", "1", {f"p{i}_1_all.deb": sha(f"{i}")})
                await publish_as_node(pub, alpha.id, env.to_bytes())

        def two_workers() -> bool:
            workers.update(_children(proc.pid))
            return len(workers) >= 2

        wait_until(two_workers, 30, "verification worker processes")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: not any(_alive(w) for w in workers), 10,
                   f"worker processes {sorted(workers)} to exit after the coordinator died")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for w in workers:  # whatever the outcome, leave nothing running
            if _alive(w):
                os.kill(w, signal.SIGKILL)
