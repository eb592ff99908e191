"""coordinator/mqtt5.py's PUBLISH decoding and rate-limited log: pure logic, checked against
packets built by paho-mqtt's own encoder where it has one."""

from __future__ import annotations

import logging
import struct

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from coordinator.mqtt5 import MalformedPacket, RateLimitedLog, decode_publish, encode_publish


def body(topic: bytes, mid: int | None, props: bytes, payload: bytes) -> bytes:
    out = struct.pack("!H", len(topic)) + topic
    if mid is not None:
        out += struct.pack("!H", mid)
    return out + props + payload


def node_props() -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = "application/json"
    props.UserProperty = ("a", "b")
    return bytes(props.pack())  # type: ignore[no-untyped-call]


def test_node_shaped_publish_decoded() -> None:
    m = decode_publish(0x02, body(b"rq/v1/attestations/rb-a", 7, node_props(), b"{}"))
    assert (m.topic, m.packet_id, m.payload, m.qos, m.retain) == (
        "rq/v1/attestations/rb-a", 7, b"{}", 1, False)
    assert m.content_type == "application/json"
    q0 = decode_publish(0x01, body(b"t", None, b"\x00", b"x"))  # QoS 0, retained
    assert (q0.qos, q0.retain, q0.packet_id, q0.payload) == (0, True, 0, b"x")


def test_round_trip_of_our_own_publish() -> None:
    packet = encode_publish("rq/v1/events/disagreement", b"{}", 65535)
    assert packet[0] == 0x32
    m = decode_publish(packet[0] & 0x0F, packet, 2)
    assert (m.topic, m.packet_id, m.payload) == ("rq/v1/events/disagreement", 65535, b"{}")


@pytest.mark.parametrize(
    ("flags", "data", "reason", "packet_id"),
    [
        (0x02, b"", "truncated", 0),
        (0x02, b"\x00\x05abc", "truncated", 0),  # topic longer than the packet
        (0x02, b"\x00\x01t\x00", "truncated", 0),  # half a packet id
        (0x02, body(b"t", 0, b"\x00", b""), "packet-id-0", 0),
        (0x04, body(b"t", 1, b"\x00", b""), "bad-qos", 0),  # QoS 2: never subscribed to
        (0x06, body(b"t", 1, b"\x00", b""), "bad-qos", 0),  # QoS 3 does not exist
        (0x02, body(b"t\xff", 9, b"\x00", b""), "invalid-topic", 9),
        (0x02, body(b"", 9, b"\x00", b""), "invalid-topic", 9),
        (0x02, body(b"a/+", 9, b"\x00", b""), "invalid-topic", 9),
        (0x02, body(b"a\x00b", 9, b"\x00", b""), "invalid-topic", 9),
        (0x02, body(b"t", 9, b"\x05\x03\x00", b""), "truncated", 9),  # props past the end
        (0x02, body(b"t", 9, b"\x02\x7f\x00", b""), "bad-properties", 9),  # unknown id
        (0x02, body(b"t", 9, b"\x03\x23\x00\x01", b""), "bad-properties", 9),  # topic alias
        (0x02, body(b"t", 9, b"\x08\x03\x00\x01a\x03\x00\x01b", b""), "bad-properties", 9),
        (0x02, body(b"t", 9, b"\x04\x03\x00\x01\xff", b""), "bad-properties", 9),  # not UTF-8
        (0x02, body(b"t", 9, b"\x80\x00", b""), "bad-properties", 9),  # non-minimal length
        (0x02, body(b"t", 9, b"\x02\x01", b""), "truncated", 9),  # byte property cut short
    ],
)
def test_malformed_refused_with_reason(
    flags: int, data: bytes, reason: str, packet_id: int
) -> None:
    with pytest.raises(MalformedPacket) as e:
        decode_publish(flags, data)
    assert e.value.reason == reason
    assert e.value.packet_id == packet_id


def test_rate_limited_log(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.ratelimit")
    limited = RateLimitedLog(logger, interval=60)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for i in range(10_000):
            limited("invalid-topic", "bad topic %d", i)
        limited("truncated", "short")
    assert limited.counts == {"invalid-topic": 10_000, "truncated": 1}
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["bad topic 0", "short"]
