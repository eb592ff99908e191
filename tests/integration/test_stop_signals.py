"""SIGTERM stops a real ``rebuilder run`` (and ``coordinator run``) with exit 0 and a clean log
whenever it comes: while the command imports its modules, at random moments of the start-up,
and a second one at random moments of the shutdown (issue 18: the chaos run's node ended with
status -15 on a SIGTERM that came before the event loop's handlers existed).

The one moment left out is the interpreter's own start, before the entry point's first line
(``catches`` SIGTERM): no program can handle a signal there. The seed is printed;
``RQ_STOP_SEED`` replays the moments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.processes import catches
from tests.support import free_port
from tests.unit.rebuilder.node_helpers import make_node

BIN = Path(sys.executable).parent
STARTUP_S = 120.0  # a deadline only: a loaded machine takes seconds


def _poll(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait (polling every few milliseconds: the moments are short) for ``condition``."""
    deadline = time.monotonic() + STARTUP_S
    while not condition():
        assert proc.poll() is None, f"the process exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def _maps(pid: int, needle: str) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _finish(proc: subprocess.Popen[bytes], log: Path, moment: str) -> str:
    try:
        rc = proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{moment}: still running 90 s after SIGTERM; log:\n"
                             f"{log.read_text()}") from None
    text = log.read_text()
    assert rc == 0, f"{moment}: exit status {rc}, expected 0; log:\n{text}"
    assert "Traceback" not in text, f"{moment}: a traceback in the log:\n{text}"
    return text


@pytest.fixture
def seed() -> random.Random:
    value = int(os.environ.get("RQ_STOP_SEED", random.randrange(1 << 30)))
    print(f"stop-signal seed {value} (RQ_STOP_SEED={value} replays the moments)")
    return random.Random(value)


def _moments(rnd: random.Random, startups: int, shutdowns: int) -> list[tuple[str, str,
                                                                          list[float]]]:
    """(what, the moment to wait for, then the delays before each SIGTERM)."""
    return [
        ("while importing the command's modules", "importing", [0.0]),
        *[(f"{d:.2f}s into the start-up", "caught", [d])
          for d in sorted(rnd.uniform(0.0, 2.5) for _ in range(startups))],
        *[(f"serving, a second SIGTERM {d:.2f}s into the shutdown", "serving", [0.0, d])
          for d in sorted(rnd.uniform(0.0, 1.0) for _ in range(shutdowns))],
    ]


def _stop_at(argv: list[str], serving: str, moment: str, start: str, delays: list[float],
             log: Path) -> str:
    """Start ``argv``, wait for ``start``, send the SIGTERM(s); the log of a clean exit 0."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        if start == "importing":  # aiohttp's parser: loaded by the command's imports
            _poll(lambda: _maps(proc.pid, "aiohttp/_http_parser"),
                  "aiohttp's extension to load", proc)
        elif start == "caught":
            _poll(lambda: catches(proc.pid, signal.SIGTERM),
                  "the entry point to catch SIGTERM", proc)
        else:
            _poll(lambda: serving in log.read_text(), "the service to serve", proc)
        for delay in delays:
            time.sleep(delay)  # the random moment itself is what is tested, not a wait
            proc.send_signal(signal.SIGTERM)
        return _finish(proc, log, moment)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_at_any_moment_of_a_nodes_life_exits_0(tmp_path: Path,
                                                        seed: random.Random) -> None:
    cfg = make_node(tmp_path, "--no-mqtt")
    assert cfg.path is not None
    argv = [str(BIN / "rebuilder"), "run", "--config", str(cfg.path), "--grace", "5"]
    for i, (moment, start, delays) in enumerate(_moments(seed, 4, 2)):
        text = _stop_at(argv, " serving ", moment, start, delays, tmp_path / f"run-{i}.log")
        # the stop said once, in one line each, and the last word
        assert text.count("rebuilder.daemon: stopping: ") == 1, (moment, text)
        assert text.count("rebuilder.daemon: stopped") == 1, (moment, text)
        assert text.rstrip().endswith("rebuilder.daemon: stopped"), (moment, text)


def test_sigterm_at_any_moment_of_a_coordinators_life_exits_0(tmp_path: Path,
                                                               seed: random.Random) -> None:
    port = free_port()
    config = tmp_path / "coordinator.toml"
    config.write_text("\n".join([
        "[coordinator]", f'listen = "127.0.0.1:{port}"', f'public_url = "http://127.0.0.1:{port}"',
        'database = "coordinator.db"', "verify_workers = 0", "",
        # no broker: the coordinator retries, which is one more thing running at the stop
        "[mqtt]", 'host = "127.0.0.1"', f"port = {free_port()}", ""]))
    argv = [str(BIN / "coordinator"), "run", "--config", str(config)]
    for i, (moment, start, delays) in enumerate(_moments(seed, 2, 1)):
        _stop_at(argv, "coordinator listening on", moment, start, delays,
                 tmp_path / f"run-{i}.log")
