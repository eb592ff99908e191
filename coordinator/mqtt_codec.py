"""MQTT 5 packet encoding and strict PUBLISH decoding for the coordinator's client
(coordinator/mqtt5.py). Pure: bytes in, values or a ``MalformedPacket`` naming the reason out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "PACKET_DROP_REASONS",
    "MalformedPacket",
    "Publish",
    "decode_publish",
    "encode_publish",
    "packet",
    "properties",
    "utf8",
    "varint",
]


CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK = 5, 6, 7, 8, 9
UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 10, 11, 12, 13, 14, 15

PACKET_DROP_REASONS = (
    "truncated",  # a length inside the packet runs past its end
    "invalid-topic",  # not UTF-8, empty, a wildcard or U+0000 in it
    "packet-id-0",  # QoS 1 without a packet identifier
    "bad-qos",  # QoS 2 (never subscribed to) or 3
    "bad-properties",  # unknown, repeated or malformed property, or a topic alias
    "oversized",  # larger than the Maximum Packet Size announced
    "unexpected",  # a packet type the broker must not send here (PUBREL, SUBSCRIBE, ...)
)

# Property identifier -> wire type (MQTT 5 §2.2.2.2).
_BYTE, _TWO, _FOUR, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES: dict[int, int] = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _UTF8, 0x08: _UTF8, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _FOUR, 0x12: _UTF8, 0x13: _TWO, 0x15: _UTF8, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _FOUR, 0x19: _BYTE, 0x1A: _UTF8, 0x1C: _UTF8, 0x1F: _UTF8, 0x21: _TWO,
    0x22: _TWO, 0x23: _TWO, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
_CONTENT_TYPE, _TOPIC_ALIAS, _USER_PROPERTY = 0x03, 0x23, 0x26
_SUBSCRIPTION_ID = 0x0B  # may repeat in a PUBLISH
RECEIVE_MAXIMUM, MAXIMUM_PACKET_SIZE, SERVER_KEEP_ALIVE, REASON_STRING = 0x21, 0x27, 0x13, 0x1F


class MalformedPacket(Exception):
    def __init__(self, reason: str, detail: str, packet_id: int = 0) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.packet_id = packet_id  # nonzero when known: the packet can still be acknowledged


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int
    content_type: str | None = None


# ---- encoding ------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    if not 0 <= n < 268_435_456:
        raise ValueError(f"{n} does not fit an MQTT variable byte integer")
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def encode_publish(
    topic: str, payload: bytes, packet_id: int, content_type: str | None = "application/json"
) -> bytes:
    props = b"" if content_type is None else bytes([_CONTENT_TYPE]) + utf8(content_type)
    body = utf8(topic) + struct.pack("!H", packet_id) + varint(len(props)) + props + payload
    return packet(0x32, body)  # PUBLISH, QoS 1


# ---- decoding ------------------------------------------------------------------------------


def _read_varint(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    for i in range(4):
        if pos >= end:
            raise MalformedPacket("truncated", "variable byte integer runs past the packet")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if i and byte == 0:
                raise MalformedPacket("bad-properties", "variable byte integer not minimal")
            return value, pos
        shift += 7
    raise MalformedPacket("bad-properties", "variable byte integer longer than 4 bytes")


def properties(data: bytes, pos: int, end: int) -> tuple[dict[int, object], int]:
    """Parse a property block at ``pos``; (properties, position after it)."""
    length, pos = _read_varint(data, pos, end)
    stop = pos + length
    if stop > end:
        raise MalformedPacket("truncated", f"properties of {length} bytes run past the packet")
    props: dict[int, object] = {}
    while pos < stop:
        ident, pos = _read_varint(data, pos, stop)
        kind = _PROPERTY_TYPES.get(ident)
        if kind is None:
            raise MalformedPacket("bad-properties", f"unknown property 0x{ident:02x}")
        value: object
        if kind == _BYTE:
            if pos + 1 > stop:
                raise MalformedPacket("truncated", f"property 0x{ident:02x} cut short")
            value, pos = data[pos], pos + 1
        elif kind == _TWO:
            if pos + 2 > stop:
                raise MalformedPacket("truncated", f"property 0x{ident:02x} cut short")
            value, pos = (data[pos] << 8) | data[pos + 1], pos + 2
        elif kind == _FOUR:
            if pos + 4 > stop:
                raise MalformedPacket("truncated", f"property 0x{ident:02x} cut short")
            value, pos = struct.unpack_from("!I", data, pos)[0], pos + 4
        elif kind == _VARINT:
            value, pos = _read_varint(data, pos, stop)
        elif kind == _PAIR:
            k, pos = _string(data, pos, stop, ident)
            v, pos = _string(data, pos, stop, ident)
            value = (k, v)
        else:
            if pos + 2 > stop:
                raise MalformedPacket("truncated", f"property 0x{ident:02x} cut short")
            n = (data[pos] << 8) | data[pos + 1]
            if pos + 2 + n > stop:
                raise MalformedPacket("truncated", f"property 0x{ident:02x} runs past the packet")
            raw = bytes(data[pos + 2 : pos + 2 + n])
            pos += 2 + n
            value = raw
            if kind == _UTF8:
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise MalformedPacket(
                        "bad-properties", f"property 0x{ident:02x} is not UTF-8"
                    ) from None
        if ident in (_USER_PROPERTY, _SUBSCRIPTION_ID):
            props.setdefault(ident, [])
            props[ident].append(value)  # type: ignore[attr-defined]
        elif ident in props:
            raise MalformedPacket("bad-properties", f"property 0x{ident:02x} repeated")
        else:
            props[ident] = value
    return props, stop


def _string(data: bytes, pos: int, end: int, ident: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise MalformedPacket("truncated", f"property 0x{ident:02x} cut short")
    n = (data[pos] << 8) | data[pos + 1]
    if pos + 2 + n > end:
        raise MalformedPacket("truncated", f"property 0x{ident:02x} runs past the packet")
    try:
        return bytes(data[pos + 2 : pos + 2 + n]).decode("utf-8"), pos + 2 + n
    except UnicodeDecodeError:
        raise MalformedPacket("bad-properties", f"property 0x{ident:02x} is not UTF-8") from None


def decode_publish(flags: int, data: bytes, start: int = 0, end: int | None = None) -> Publish:
    """Decode the body of a PUBLISH (``data[start:end]``); raises ``MalformedPacket``."""
    end = len(data) if end is None else end
    qos = (flags >> 1) & 0x03
    if qos > 1:
        raise MalformedPacket("bad-qos", f"QoS {qos} was never subscribed to")
    if start + 2 > end:
        raise MalformedPacket("truncated", "no topic length")
    n = (data[start] << 8) | data[start + 1]
    pos = start + 2 + n
    if pos > end:
        raise MalformedPacket("truncated", f"topic of {n} bytes runs past the packet")
    packet_id = 0
    if qos:
        if pos + 2 > end:
            raise MalformedPacket("truncated", "no packet identifier")
        packet_id = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if packet_id == 0:
            raise MalformedPacket("packet-id-0", "QoS 1 PUBLISH with packet identifier 0")
    raw_topic = bytes(data[start + 2 : start + 2 + n])
    try:
        topic = raw_topic.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket(
            "invalid-topic", f"not UTF-8: {raw_topic[:60]!r}", packet_id
        ) from None
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise MalformedPacket("invalid-topic", f"{topic[:60]!r} is not a topic name", packet_id)
    try:
        props, pos = properties(data, pos, end)
    except MalformedPacket as e:
        e.packet_id = packet_id
        raise
    if _TOPIC_ALIAS in props:
        raise MalformedPacket("bad-properties", "topic alias, never allowed", packet_id)
    content_type = props.get(_CONTENT_TYPE)
    return Publish(
        topic,
        bytes(data[pos:end]),
        qos,
        bool(flags & 0x01),
        packet_id,
        content_type if isinstance(content_type, str) else None,
    )
