"""`make demo DEMO_ONCE=1`: the whole network from nothing gives the expected verdicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_once(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "coordinator.demo", "--once", "--state", str(state)],
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
