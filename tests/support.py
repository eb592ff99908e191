"""Helpers shared by the test suite: free ports, a real mosquitto broker, waiting on conditions.

Tests never sleep and hope: they wait for a condition with a deadline (``wait_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true or ``timeout`` seconds pass (then fail naming ``what``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


async def wait_for(
    condition: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Async ``wait_until``: await ``condition()`` until true, failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class Mosquitto:
    """A real mosquitto broker on a free loopback port, started and stopped by the test."""

    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    extra_config: str = ""

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not self.port:
            self.port = free_port()
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # Run as root, mosquitto drops to its own user and could not open a file in our
            # private temp dir; it logs to stderr, which we open for it (see below).
            "log_dest stderr\n"
            "max_inflight_messages 1000\n"
            "max_queued_messages 100000\n" + self.extra_config
        )
        with (self.directory / "mosquitto.log").open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(lambda: port_open(self.port), 10, f"mosquitto on port {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port (clients must reconnect)."""
        self.stop()
        self.start()


@contextlib.contextmanager
def running_mosquitto(directory: Path, extra_config: str = "") -> Iterator[Mosquitto]:
    broker = Mosquitto(directory=directory, extra_config=extra_config)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def publish_as_node(client: Any, node_id: str, envelope: bytes) -> None:
    """Publish one attestation on an aiomqtt client exactly as a node's ``Publisher`` does
    (topic, QoS, the ContentType property: ``rebuilder.publish.attestation_message``)."""
    from rebuilder.publish import attestation_message

    m = attestation_message(node_id, envelope)
    await client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain, properties=m.properties)


def signed_status(key: Any, state: str = "online", session: str = "0123456789abcdef",
                  **fields: Any) -> bytes:
    """A status message as a node signs it (``rebuilder.publish.status_body``)."""
    from rebuilder.publish import status_body
    from verifier.status import sign_status

    return sign_status(status_body(state, session, **fields), key)


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, parsed by prometheus_client's own parser (so a page it
    cannot read fails here): ``{(name, frozenset(labels.items())): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a /metrics page; AssertionError naming it when absent."""
    samples = metric_samples(text)
    key = (name, frozenset(labels.items()))
    if key not in samples:
        raise AssertionError(f"{name}{labels or ''} not in /metrics")
    return samples[key]


async def watcher_jobs(rcfg: Any, session: Any, tmp_path: Path) -> list[Any]:
    """The jobs one authenticated watcher round over repository ``rcfg`` would queue (nothing
    is written but a scratch database under ``tmp_path``)."""
    from rebuilder.db import Store
    from rebuilder.debian.watch import Watcher

    store = await Store.open(tmp_path / "watch.db")
    try:
        report = await Watcher((rcfg,), store, session).round(rcfg, queue=False)
    finally:
        await store.close()
    assert report.error is None, report.error
    return list(report.new)
