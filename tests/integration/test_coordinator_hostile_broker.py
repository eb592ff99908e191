"""A hostile broker: a small asyncio TCP server on a loopback port, speaking just enough MQTT 5
to accept the coordinator's CONNECT and SUBSCRIBE, then sending crafted packets between genuine
ones. Every malformed packet is dropped and counted by reason, the connection stays up (one
connection in all), every genuine message behind them is stored and acknowledged, and the log
holds at most one line per reason however many arrive."""

from __future__ import annotations

import asyncio
import logging
import struct
from pathlib import Path

import pytest

from coordinator.app import INGEST, MQTT, STORE, create_app
from coordinator.config import load_config
from tests.support import free_port, wait_for
from tests.unit.coordinator.factory import Signer, coordinator_toml, serving, sha


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def publish(topic: bytes, mid: int, payload: bytes, props: bytes | None = None) -> bytes:
    """A QoS 1 PUBLISH as a node's (ContentType property) unless ``props`` says otherwise."""
    if props is None:
        props = b"\x03" + _s(b"application/json")
    return _packet(0x32, _s(topic) + struct.pack("!H", mid) + _varint(len(props)) + props
                   + payload)


class HostileBroker:
    def __init__(self, crafted: list[bytes]) -> None:
        self.crafted = crafted
        self.connections = 0
        self.acked: list[tuple[int, int]] = []  # (packet id, reason code)
        self.connect_properties = b""
        self.done = asyncio.Event()

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            b = (await reader.readexactly(1))[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return first, await reader.readexactly(length)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            first, body = await self._read(reader)
            assert first >> 4 == 1  # CONNECT
            self.connect_properties = body
            writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK, success, no properties
            first, body = await self._read(reader)
            assert first >> 4 == 8  # SUBSCRIBE
            mid = body[:2]
            writer.write(_packet(0x90, mid + b"\x00" + b"\x01\x01"))  # SUBACK, QoS 1 twice
            for p in self.crafted:
                writer.write(p)
            await writer.drain()
            while True:
                first, body = await self._read(reader)
                if first >> 4 == 4:  # PUBACK
                    code = body[2] if len(body) > 2 else 0
                    self.acked.append((struct.unpack("!H", body[:2])[0], code))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.slow
async def test_malformed_packets_dropped_connection_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alpha = Signer("rb-alpha")
    good = [
        alpha.rebuild(f"p{i}", "1.0", {f"p{i}_1.0_all.deb": sha(f"p{i}")}).to_bytes()
        for i in range(6)
    ]
    topic = b"rq/v1/attestations/rb-alpha"
    flood = 3000
    crafted = [
        publish(topic, 1, good[0]),
        publish(b"rq/v1/attestations/rb-\xff\xfe", 2, good[1]),  # topic not UTF-8
        _packet(0x32, struct.pack("!H", 500) + topic),  # topic length past the packet's end
        publish(topic, 0, good[1]),  # packet id 0 at QoS 1
        publish(topic, 3, good[1], props=b"\x7f\x00"),  # unknown property 0x7f
        publish(topic, 4, good[1], props=b"\x23\x00\x01"),  # topic alias, never allowed
        publish(topic, 5, good[1]),
        # Larger than the Maximum Packet Size the coordinator announced: skipped as it streams.
        publish(topic, 6, b"A" * (3 * 1024 * 1024)),
        publish(topic, 7, good[2]),
        _packet(0x62, b"\x00\x09"),  # PUBREL: never expected here
        *(publish(b"rq/v1/attestations/\xc0", 100 + i % 1000, b"{}") for i in range(flood)),
        publish(topic, 8, good[3]),
        publish(topic, 9, good[4]),
        publish(topic, 10, good[5]),
    ]
    broker = HostileBroker(crafted)
    server = await asyncio.start_server(broker.handle, "127.0.0.1", 0)
    mqtt_port = server.sockets[0].getsockname()[1]
    port = free_port()
    app = create_app(load_config(coordinator_toml(tmp_path, [alpha], mqtt_port, port)))
    caplog.set_level(logging.WARNING, logger="coordinator.mqtt")
    try:
        async with serving(app, port):
            async def all_stored() -> bool:
                return (await app[STORE].totals()).envelopes == len(good)

            await wait_for(all_stored, 30, "every genuine attestation stored")

            def acked(mids: set[int]) -> bool:
                return mids <= {m for m, code in broker.acked if code == 0}

            async def acknowledged() -> bool:
                return acked({1, 5, 7, 8, 9, 10})

            await wait_for(acknowledged, 10, "every genuine message acknowledged")
            counts = app[MQTT].packets_dropped.counts
            assert app[MQTT].connected.is_set()
            assert broker.connections == 1, "the coordinator reconnected"
    finally:
        server.close()
        await server.wait_closed()
    assert counts["invalid-topic"] == 1 + flood
    assert counts["truncated"] == 1
    assert counts["packet-id-0"] == 1
    assert counts["bad-properties"] == 2
    assert counts["oversized"] == 1
    assert counts["unexpected"] == 1
    # Malformed packets whose packet id was readable are acknowledged as refused, so a broker
    # does not send them again; the oversized one never reached the coordinator whole.
    assert (2, 0x80) in broker.acked and (3, 0x80) in broker.acked
    assert not any(m == 6 for m, _ in broker.acked)
    m = app[INGEST].metrics
    assert m.ingested["mqtt"] == len(good) and m.dropped_total() == 0
    lines = [r for r in caplog.records if r.name == "coordinator.mqtt"]
    per_reason = [r.getMessage().split(":")[0] for r in lines if "dropped" in r.getMessage()]
    assert len(lines) <= 8, f"{len(lines)} log lines for {flood + 7} malformed packets"
    assert per_reason, "nothing was logged at all"
    # The Maximum Packet Size announced in CONNECT: the envelope cap plus header room.
    limit = app[INGEST].config.limits.max_envelope_bytes + 64 * 1024
    assert b"\x27" + struct.pack("!I", limit) in broker.connect_properties
