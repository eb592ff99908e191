"""A small, strict MQTT 5 client for the coordinator: subscribe at QoS 1, acknowledge, publish.

The node publishes with aiomqtt (paho-mqtt underneath); the coordinator receives with this
instead, because what a broker sends is network input and must be handled as such:

- A malformed PUBLISH (a topic that is not UTF-8, a length running past the end of the packet,
  packet id 0 at QoS 1, an unknown or repeated property, a topic alias never allowed) is
  dropped and counted by reason, and the connection stays up: the framing (fixed header and
  remaining length) is intact, so the packets behind it are read as usual. paho-mqtt closes the
  connection on each of these (and a topic length past the packet's end raises ``struct.error``
  out of its reader, leaving it stuck on that packet), so one hostile or broken broker would
  cost a reconnection per packet and every message queued behind it.
- A packet larger than the Maximum Packet Size announced in CONNECT is skipped as it streams
  in, never buffered whole.
- Only broken framing (a remaining length over four bytes, an unknown packet type) or a
  protocol violation that leaves no sane state (a second CONNACK) ends the connection.
- Acknowledgements are written once per read of the socket (one ``send`` for all the packets
  of that read), after the message was handed on: a message is acknowledged only once the
  coordinator holds it.

It speaks what the coordinator uses and no more: CONNECT (clean start, Maximum Packet Size),
SUBSCRIBE at QoS 1 (shared subscriptions included), PUBLISH in (QoS 0 and 1) and out (QoS 1),
PUBACK both ways, PINGREQ/PINGRESP and DISCONNECT. QoS 2 is never subscribed to, so a QoS 2
PUBLISH is malformed here. Everything is public asyncio API; nothing patches a library.

    async with await Connection.open(settings, on_message) as conn:
        await conn.subscribe(["$share/rq/rq/v1/attestations/+"])
        await conn.publish("rq/v1/events/disagreement", b"{...}")
        await conn.closed()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = [
    "PACKET_DROP_REASONS",
    "ConnectSettings",
    "Connection",
    "MalformedPacket",
    "MqttError",
    "Publish",
    "RateLimitedLog",
    "decode_publish",
    "encode_publish",
    "varint",
]

log = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024
_CONNECT_TIMEOUT_S = 10.0

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
_RECEIVE_MAXIMUM, _MAXIMUM_PACKET_SIZE, _SERVER_KEEP_ALIVE, _REASON_STRING = 0x21, 0x27, 0x13, 0x1F


class MqttError(Exception):
    """The connection was refused or lost; the caller reconnects."""


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


def _utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def encode_publish(
    topic: str, payload: bytes, packet_id: int, content_type: str | None = "application/json"
) -> bytes:
    props = b"" if content_type is None else bytes([_CONTENT_TYPE]) + _utf8(content_type)
    body = _utf8(topic) + struct.pack("!H", packet_id) + varint(len(props)) + props + payload
    return _packet(0x32, body)  # PUBLISH, QoS 1


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


def _properties(data: bytes, pos: int, end: int) -> tuple[dict[int, object], int]:
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
        props, pos = _properties(data, pos, end)
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


# ---- logging -------------------------------------------------------------------------------


class RateLimitedLog:
    """At most one log line per reason per ``interval`` seconds; the counts stay exact."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}
        self._since: Counter[str] = Counter()

    def __call__(self, reason: str, message: str, *args: object) -> None:
        self.counts[reason] += 1
        self._since[reason] += 1
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            return
        self._last[reason] = now
        n, self._since[reason] = self._since[reason], 0
        if last is None:
            self.logger.warning(message + " (more of this kind: counted, logged once a minute)",
                                *args)
        else:
            self.logger.warning(message + " (%d of this kind since the last line, %d in all)",
                                *args, n, self.counts[reason])


# ---- the connection ------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectSettings:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    tls: ssl.SSLContext | None = None
    max_packet_size: int = 1024 * 1024 + 65536  # announced in CONNECT


# Returns True when the message was taken at once; otherwise an awaitable that takes it.
MessageHandler = Callable[[Publish], "bool | Awaitable[None]"]


class Connection:
    """One MQTT 5 session over one TCP (or TLS) connection; ``open`` it, ``close`` it."""

    def __init__(
        self,
        settings: ConnectSettings,
        on_message: MessageHandler,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_drop: RateLimitedLog | None = None,
    ) -> None:
        self.settings = settings
        self.on_message = on_message
        self.dropped = on_drop or RateLimitedLog(log)
        self._reader = reader
        self._writer = writer
        self._acks = bytearray()
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_read = time.monotonic()
        # While the reader waits for the coordinator to take a message, nothing is read: that
        # is backpressure, not a dead broker.
        self._busy = False
        self._in_flight_out: asyncio.Semaphore = asyncio.Semaphore(65535)
        self.server_max_packet = 268_435_455
        self.keepalive = settings.keepalive

    @classmethod
    async def open(
        cls,
        settings: ConnectSettings,
        on_message: MessageHandler,
        on_drop: RateLimitedLog | None = None,
    ) -> Connection:
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(
                    settings.host, settings.port, ssl=settings.tls, limit=_READ_SIZE
                )
        except (OSError, TimeoutError) as e:
            raise MqttError(f"cannot connect to {settings.host}:{settings.port}: {e}") from e
        conn = cls(settings, on_message, reader, writer, on_drop)
        try:
            await conn._handshake()
        except BaseException:
            writer.close()
            raise
        conn._tasks = [
            asyncio.create_task(conn._read_loop(), name="mqtt read"),
            asyncio.create_task(conn._ping_loop(), name="mqtt ping"),
        ]
        return conn

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- handshake

    async def _handshake(self) -> None:
        s = self.settings
        flags = 0x02  # clean start
        payload = _utf8(s.client_id)
        if s.username is not None:
            flags |= 0x80
            payload += _utf8(s.username)
        if s.password is not None:
            flags |= 0x40
            payload += _utf8(s.password)
        ours = bytes([_MAXIMUM_PACKET_SIZE]) + struct.pack("!I", s.max_packet_size)
        body = _utf8("MQTT") + bytes([5, flags]) + struct.pack("!H", s.keepalive)
        self._writer.write(_packet(0x10, body + varint(len(ours)) + ours + payload))
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                first, raw = await self._read_packet_whole()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            raise MqttError(f"no CONNACK from {s.host}:{s.port}: {e}") from e
        data: bytes = raw
        if first >> 4 != CONNACK or len(data) < 2:
            raise MqttError(f"broker answered CONNECT with packet type {first >> 4}")
        code = data[1]
        try:
            props, _ = _properties(data, 2, len(data)) if len(data) > 2 else ({}, 2)
        except MalformedPacket as e:
            raise MqttError(f"malformed CONNACK: {e}") from e
        if code >= 0x80:
            why = props.get(_REASON_STRING)
            raise MqttError(f"broker refused the connection: reason 0x{code:02x}"
                            + (f" ({why})" if isinstance(why, str) else ""))
        maximum = props.get(_MAXIMUM_PACKET_SIZE)
        if isinstance(maximum, int) and maximum > 0:
            self.server_max_packet = maximum
        receive = props.get(_RECEIVE_MAXIMUM)
        if isinstance(receive, int) and receive > 0:
            self._in_flight_out = asyncio.Semaphore(receive)
        keep = props.get(_SERVER_KEEP_ALIVE)
        if isinstance(keep, int):
            self.keepalive = keep

    async def _read_packet_whole(self) -> tuple[int, bytes]:
        first = (await self._reader.readexactly(1))[0]
        length, shift = 0, 0
        for _ in range(4):
            b = (await self._reader.readexactly(1))[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        else:
            raise MqttError("remaining length longer than 4 bytes")
        if length > self.settings.max_packet_size:
            raise MqttError(f"a {length}-byte packet during the handshake")
        return first, await self._reader.readexactly(length)

    # -- requests

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._waiting:
                return self._next_id
        raise MqttError("no free packet identifier")

    async def _request(self, packet: bytes, packet_id: int, within: float) -> tuple[int, bytes]:
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiting[packet_id] = future
        try:
            self._write(packet)
            waits: list[asyncio.Future[Any]] = [future, self._closed]
            async with asyncio.timeout(within):
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if not future.done():
                raise MqttError("connection lost while waiting for an answer")
            return future.result()
        except TimeoutError:
            raise MqttError(f"no answer within {within}s") from None
        finally:
            self._waiting.pop(packet_id, None)

    async def subscribe(self, filters: list[str], within: float = 10.0) -> None:
        """Subscribe at QoS 1; raises ``MqttError`` naming any filter the broker refused."""
        pid = self._packet_id()
        body = struct.pack("!H", pid) + b"\x00" + b"".join(_utf8(f) + b"\x01" for f in filters)
        _, data = await self._request(_packet(0x82, body), pid, within)
        try:
            _, pos = _properties(data, 2, len(data))
        except MalformedPacket as e:
            raise MqttError(f"malformed SUBACK: {e}") from e
        codes = data[pos:]
        refused = [f"{f} (0x{c:02x})" for f, c in zip(filters, codes, strict=False) if c >= 0x80]
        if refused or len(codes) != len(filters):
            raise MqttError(f"the broker refused the subscription to {', '.join(refused)}")

    async def publish(self, topic: str, payload: bytes, within: float = 10.0) -> None:
        """Publish at QoS 1 and wait for a successful PUBACK."""
        async with self._in_flight_out:
            pid = self._packet_id()
            packet = encode_publish(topic, payload, pid)
            if len(packet) > self.server_max_packet:
                raise MqttError(f"{len(packet)} bytes over the broker's maximum packet size")
            _, data = await self._request(packet, pid, within)
        code = data[2] if len(data) > 2 else 0
        if code >= 0x80:
            raise MqttError(f"the broker refused the message on {topic}: reason 0x{code:02x}")

    # -- the reader

    def _write(self, data: bytes | bytearray) -> None:
        if self._closed.done() or self._writer.is_closing():
            raise MqttError("connection closed")
        self._writer.write(data)

    def _flush_acks(self) -> None:
        if self._acks:
            with contextlib.suppress(MqttError):
                self._write(self._acks)
            self._acks = bytearray()

    async def _read_loop(self) -> None:
        try:
            await self._read_packets()
        except (OSError, asyncio.IncompleteReadError, MqttError) as e:
            self._lost(e)
        except asyncio.CancelledError:
            self._lost(None)
            raise
        except Exception as e:  # a bug here must not leave the caller waiting forever
            log.exception("MQTT reader failed")
            self._lost(e)

    async def _read_packets(self) -> None:
        buf = b""
        skip = 0  # bytes of an oversized packet still to discard
        limit = self.settings.max_packet_size
        reader = self._reader
        while True:
            chunk = await reader.read(_READ_SIZE)
            if not chunk:
                raise MqttError("the broker closed the connection")
            self._last_read = time.monotonic()
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk, skip = chunk[skip:], 0
            buf = buf + chunk if buf else chunk
            pos, n = 0, len(buf)
            while pos < n:
                first = buf[pos]
                length, shift, p = 0, 0, pos + 1
                while True:
                    if p >= n:
                        length = -1  # the length itself is not all here yet
                        break
                    b = buf[p]
                    p += 1
                    length |= (b & 0x7F) << shift
                    if not b & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise MqttError("remaining length longer than 4 bytes: framing lost")
                if length < 0:
                    break
                if length > limit:
                    self.dropped("oversized", "dropped a %d-byte MQTT packet (limit %d)",
                                 length, limit)
                    available = n - p
                    if available >= length:
                        pos = p + length
                        continue
                    skip, pos = length - available, n
                    break
                end = p + length
                if end > n:
                    break
                taken = self._dispatch(first, buf, p, end)
                pos = end
                if taken is not None:  # the handler must wait: acknowledge what came before
                    self._flush_acks()
                    self._busy = True
                    try:
                        await taken
                    finally:
                        self._busy = False
                        self._last_read = time.monotonic()
                    self._ack_after(first, buf, p, end)
            buf = buf[pos:] if pos < n else b""
            self._flush_acks()

    def _dispatch(self, first: int, buf: bytes, start: int, end: int) -> Awaitable[None] | None:
        kind = first >> 4
        if kind == PUBLISH:
            try:
                message = decode_publish(first & 0x0F, buf, start, end)
            except MalformedPacket as e:
                self.dropped(e.reason, "dropped a malformed MQTT PUBLISH: %s", e)
                if e.packet_id:
                    self._acks += b"\x40\x03" + struct.pack("!H", e.packet_id) + b"\x80"
                return None
            result = self.on_message(message)
            if result is True or result is False:
                if message.qos:
                    self._acks += b"\x40\x02" + struct.pack("!H", message.packet_id)
                return None
            return result
        if kind in (PUBACK, SUBACK):
            if end - start < 2:
                self.dropped("truncated", "dropped a %s without a packet identifier",
                             "PUBACK" if kind == PUBACK else "SUBACK")
                return None
            pid = (buf[start] << 8) | buf[start + 1]
            future = self._waiting.get(pid)
            if future is not None and not future.done():
                future.set_result((kind, bytes(buf[start:end])))
            return None
        if kind == PINGRESP:
            return None
        if kind == DISCONNECT:
            code = buf[start] if end > start else 0
            raise MqttError(f"the broker disconnected us: reason 0x{code:02x}")
        self.dropped("unexpected", "dropped an unexpected MQTT packet of type %d", kind)
        return None

    def _ack_after(self, first: int, buf: bytes, start: int, end: int) -> None:
        if (first >> 1) & 0x03:  # QoS 1 (anything else was refused before)
            n = (buf[start] << 8) | buf[start + 1]
            pid = buf[start + 2 + n : start + 4 + n]
            self._acks += b"\x40\x02" + pid

    async def _ping_loop(self) -> None:
        interval = max(1.0, self.keepalive / 2) if self.keepalive else 30.0
        while True:
            await asyncio.sleep(interval)
            silent = time.monotonic() - self._last_read
            if self.keepalive and silent > 2 * self.keepalive and not self._busy:
                self._lost(MqttError(f"nothing from the broker for {2 * self.keepalive}s"))
                return
            try:
                self._write(b"\xc0\x00")
            except MqttError:
                return

    # -- closing

    def _lost(self, error: BaseException | None) -> None:
        if not self._closed.done():
            if error is None:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(
                    error if isinstance(error, MqttError) else MqttError(str(error))
                )
        self._writer.close()

    async def closed(self) -> None:
        """Wait until the connection ends; raises ``MqttError`` when it was lost."""
        await asyncio.shield(self._closed)

    async def close(self) -> None:
        if not self._closed.done():
            with contextlib.suppress(OSError, MqttError):
                self._write(b"\xe0\x00")  # DISCONNECT, normal
            self._lost(None)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()
        if self._closed.done() and not self._closed.cancelled():
            self._closed.exception()  # retrieved: no "never retrieved" warning
