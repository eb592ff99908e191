"""The demo stops its processes newest first and the broker last, once the nodes have exited,
so they can still publish their offline status (real processes, real signals)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rqdemo.demo import Children
from tests.support import wait_until

# Records when it got SIGTERM, takes a moment to shut down (as a node publishing its offline
# status does), records when it exits.
CHILD = """
import signal, sys, time
log = sys.argv[1]
def stop(*_):
    open(log, "a").write(f"term {time.monotonic()}\\n")
    time.sleep(0.3)
    open(log, "a").write(f"exit {time.monotonic()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(log, "a").write("ready\\n")
while True:
    time.sleep(0.05)
"""


def _times(log: Path) -> dict[str, float]:
    return {w: float(t) for w, t in (ln.split() for ln in log.read_text().splitlines()
                                      if ln != "ready")}


def test_broker_stops_after_the_nodes(tmp_path: Path) -> None:
    children = Children(tmp_path)
    logs = {name: tmp_path / f"{name}.events" for name in ("mosquitto", "rb-a", "coordinator")}
    for name, log in logs.items():
        children.start(name, [sys.executable, "-c", CHILD, str(log)])
    for name, log in logs.items():
        wait_until(lambda log=log: log.exists() and "ready" in log.read_text(), 20, name)
    t0 = time.monotonic()
    children.stop_all()
    assert children.procs == []
    broker, node, coordinator = (_times(logs[n]) for n in ("mosquitto", "rb-a", "coordinator"))
    assert node["term"] >= t0 and coordinator["term"] >= t0
    assert broker["term"] >= node["exit"], "the broker was stopped before the node had exited"
    assert broker["term"] >= coordinator["exit"]
