"""`make demo DEMO_ONCE=1`: the whole network from nothing gives the expected verdicts."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import wait_until


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_once(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "rqdemo", "--once", "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    out = r.stdout
    for deb in ("rq-hello_1.0_all.deb", "rq-unrepro_1.0_all.deb", "rq-tampered_1.0_all.deb"):
        assert deb in out
    table = {line.split()[0]: line.split() for line in out.splitlines() if ".deb " in line
             and line.split()[0].endswith(".deb")}
    assert table["rq-hello_1.0_all.deb"][2] == "ACCEPTED"
    assert table["rq-unrepro_1.0_all.deb"][2] == "REJECTED"
    assert table["rq-tampered_1.0_all.deb"][2] == "REJECTED"
    assert "/v1/reports/" in out  # the rejected ones name their diffoscope report
    assert "all as expected" in out
    assert "package cache: " in out  # where the built packages are kept
    # --once stops everything: it does not end on a dashboard URL that is already gone.
    assert "==> Dashboard:" not in out
    assert out.rstrip().splitlines()[-1].startswith("==> Stopping the network")
    # Every child is gone: nothing listens on the demo's ports any more.
    logs = state / "logs"
    assert (logs / "coordinator.log").exists()
    leftovers = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout


def _demo_processes(state: Path) -> str:
    return subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True).stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_demo_leaves_no_process(tmp_path: Path, sig: signal.Signals) -> None:
    """Regression: a demo killed (or a test failing around it) left mosquitto, the nodes and
    the coordinator running, re-parented to PID 1."""
    state = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-u", "-m", "rqdemo", "--state", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        # every rebuilder node is running (their configs are named by the state path)
        wait_until(lambda: _demo_processes(state).count("\n") >= 4, 300,
                   "mosquitto and three rebuilder nodes")
        demo.send_signal(sig)
        demo.wait(60)
        wait_until(lambda: _demo_processes(state) == "", 60, "every child of the demo to exit")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
