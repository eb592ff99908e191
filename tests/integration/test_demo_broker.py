"""The demo's broker has the production posture (rqdemo/broker.py), checked against a
real mosquitto: anonymous clients and wrong passwords are refused, a rebuilder may publish on
its own topics only, the coordinator on none of theirs, and a 200 MB message is refused by the
broker (max_packet_size) instead of being buffered. The ACL is the Ansible role's."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jinja2
import pytest

from coordinator.mqtt5 import Connection, ConnectSettings, MqttError, Publish
from rqdemo.broker import COORDINATOR_USER, MAX_PACKET_SIZE, acl, write_broker_files
from tests.support import free_port, port_open, wait_until

ROOT = Path(__file__).resolve().parents[2]
NODES = ["rb-alpha", "rb-beta"]


def _rules(text: str) -> set[tuple[str, str]]:
    """(user, rule) for every rule of a mosquitto ACL."""
    rules, user = set(), ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("user "):
            user = line.split(None, 1)[1]
        elif line and not line.startswith("#"):
            rules.add((user, line))
    return rules


def test_demo_acl_is_the_ansible_roles() -> None:
    template = (ROOT / "ansible/roles/mqtt_broker/templates/repro-quorum.acl.j2").read_text()
    rendered = jinja2.Template(template).render(
        mqtt_broker_rebuilder_ids=NODES, mqtt_broker_coordinator_users=[COORDINATOR_USER]
    )
    assert _rules(acl(NODES, [COORDINATOR_USER])) == _rules(rendered)
    defaults = (ROOT / "ansible/roles/mqtt_broker/defaults/main.yml").read_text()
    assert f"mqtt_broker_max_packet_size: {MAX_PACKET_SIZE}\n" in defaults


@contextmanager
def demo_broker(directory: Path) -> Iterator[tuple[int, dict[str, str], subprocess.Popen[bytes]]]:
    port = free_port()
    files = write_broker_files(directory, NODES, port)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with (directory / "mosquitto.log").open("ab") as log:
        proc = subprocess.Popen([binary, "-c", str(files.conf)], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: port_open(port), 10, "the demo's mosquitto")
        yield port, {u: p.read_text().strip() for u, p in files.passwords.items()}, proc
    finally:
        proc.terminate()
        proc.wait(10)


def _settings(port: int, user: str | None, password: str | None) -> ConnectSettings:
    return ConnectSettings("127.0.0.1", port, f"t-{user}-{free_port()}", user, password)


async def _connect(port: int, user: str | None, password: str | None,
                   got: list[Publish] | None = None) -> Connection:
    def on_message(m: Publish) -> bool:
        if got is not None:
            got.append(m)
        return True

    return await Connection.open(_settings(port, user, password), on_message)


async def test_demo_broker_refuses_anonymous_and_foreign_topics(tmp_path: Path) -> None:
    with demo_broker(tmp_path / "broker") as (port, passwords, _):
        with pytest.raises(MqttError, match="refused the connection"):
            await _connect(port, None, None)  # anonymous
        with pytest.raises(MqttError, match="refused the connection"):
            await _connect(port, "rb-alpha", passwords["rb-beta"])
        got: list[Publish] = []
        overheard: list[Publish] = []
        async with await _connect(port, COORDINATOR_USER, passwords[COORDINATOR_USER],
                                  got) as coordinator, \
                await _connect(port, "rb-alpha", passwords["rb-alpha"], overheard) as alpha, \
                await _connect(port, "rb-beta", passwords["rb-beta"]) as beta:
            await coordinator.subscribe(["rq/v1/attestations/+", "rq/v1/status/+"])
            # A node reads nothing (mosquitto grants the subscription, delivers nothing).
            await alpha.subscribe(["rq/v1/#"])
            await beta.publish("rq/v1/attestations/rb-beta", b"beta's")
            await alpha.publish("rq/v1/attestations/rb-alpha", b"mine")
            await alpha.publish("rq/v1/status/rb-alpha", b"my status")
            for topic in ("rq/v1/attestations/rb-beta", "rq/v1/status/rb-beta",
                          "rq/v1/events/disagreement"):
                with pytest.raises(MqttError, match="0x87"):  # not authorized
                    await alpha.publish(topic, b"forged")
            for topic in ("rq/v1/attestations/rb-alpha", "rq/v1/status/rb-beta"):
                with pytest.raises(MqttError, match="0x87"):
                    await coordinator.publish(topic, b"forged")
            await coordinator.publish("rq/v1/events/disagreement", b"{}")

            async def three() -> bool:
                return len(got) >= 3

            await asyncio.wait_for(_until(three), 10)
        assert sorted((m.topic, m.payload) for m in got) == [
            ("rq/v1/attestations/rb-alpha", b"mine"), ("rq/v1/attestations/rb-beta", b"beta's"),
            ("rq/v1/status/rb-alpha", b"my status")]
        assert overheard == []


async def _until(check):  # type: ignore[no-untyped-def]
    while not await check():
        await asyncio.sleep(0.02)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _connect_packet(user: str, password: str) -> bytes:
    def s(b: bytes) -> bytes:
        return struct.pack("!H", len(b)) + b

    body = (s(b"MQTT") + bytes([5, 0xC2]) + struct.pack("!H", 30) + b"\x00"
            + s(b"big-publisher") + s(user.encode()) + s(password.encode()))
    return bytes([0x10, len(body)]) + body


@pytest.mark.slow
async def test_broker_refuses_a_200_mb_message(tmp_path: Path) -> None:
    with demo_broker(tmp_path / "broker") as (port, passwords, proc):
        got: list[Publish] = []
        async with await _connect(port, COORDINATOR_USER, passwords[COORDINATOR_USER],
                                  got) as coordinator:
            await coordinator.subscribe(["rq/v1/attestations/+"])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_connect_packet("rb-alpha", passwords["rb-alpha"]))
            connack = await reader.readexactly(5)
            assert connack[0] == 0x20 and connack[3] == 0  # accepted
            size = 200 * 1024 * 1024
            topic = b"rq/v1/attestations/rb-alpha"
            header = struct.pack("!H", len(topic)) + topic + b"\x00\x01\x00"
            length, rem = size + len(header), bytearray()
            n = length
            while True:
                n, b = divmod(n, 128)
                rem.append(b | (0x80 if n else 0))
                if not n:
                    break
            writer.write(b"\x32" + bytes(rem) + header)
            sent, chunk = 0, b"A" * (1024 * 1024)
            with pytest.raises((ConnectionError, OSError)):
                while sent < size:
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
                # Everything was written: the broker must at least close the connection.
                await asyncio.wait_for(reader.read(), 10)
                raise ConnectionResetError("closed after the whole message")
            writer.close()
            assert sent < size, "the broker took the whole 200 MB message"
            assert _rss_kib(proc.pid) < 100 * 1024, "the broker buffered the message"
            # The broker is still up for everyone else.
            async with await _connect(port, "rb-beta", passwords["rb-beta"]) as beta:
                await beta.publish("rq/v1/attestations/rb-beta", b"small")

            async def one() -> bool:
                return len(got) >= 1

            await asyncio.wait_for(_until(one), 10)
        assert [m.payload for m in got] == [b"small"]
