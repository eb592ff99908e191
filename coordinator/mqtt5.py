"""A small, strict MQTT 5 client for the coordinator: subscribe at QoS 1, acknowledge, publish.

The node publishes with aiomqtt (paho-mqtt underneath); the coordinator receives with this
instead, because what a broker sends is network input and must be handled as such:

- A malformed PUBLISH (a topic that is not UTF-8, a length running past the end of the packet,
  packet id 0 at QoS 1, an unknown or repeated property, a topic alias never allowed) is
  dropped and counted by reason, and the connection stays up: the framing (fixed header and
  remaining length) is intact, so the packets behind it are read as usual. With aiomqtt over
  paho-mqtt most of these end the connection (aiomqtt raises on a non-UTF-8 topic inside
  paho's callback; a topic length past the packet's end raises ``struct.error`` out of paho's
  reader, which then stays stuck on that packet) and packet id 0 passes as valid, so one
  hostile or broken broker cost a reconnection per packet and the messages queued behind it.
- A packet larger than the Maximum Packet Size announced in CONNECT is skipped as it streams
  in, never buffered whole.
- Only broken framing (a remaining length over four bytes), a DISCONNECT from the broker or
  silence beyond twice the keepalive ends the connection; a packet type a broker must not send
  here (PUBREL, a second CONNACK, ...) is dropped as ``unexpected``.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from coordinator.mqtt_codec import (
    CONNACK,
    DISCONNECT,
    MAXIMUM_PACKET_SIZE,
    PACKET_DROP_REASONS,
    PINGRESP,
    PUBACK,
    PUBLISH,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    SERVER_KEEP_ALIVE,
    SUBACK,
    MalformedPacket,
    Publish,
    decode_publish,
    encode_publish,
    packet,
    properties,
    utf8,
    varint,
)
from coordinator.ratelimit import RateLimitedLog

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
]

log = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024
_CONNECT_TIMEOUT_S = 10.0


class MqttError(Exception):
    """The connection was refused or lost; the caller reconnects."""


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
        payload = utf8(s.client_id)
        if s.username is not None:
            flags |= 0x80
            payload += utf8(s.username)
        if s.password is not None:
            flags |= 0x40
            payload += utf8(s.password)
        ours = bytes([MAXIMUM_PACKET_SIZE]) + struct.pack("!I", s.max_packet_size)
        body = utf8("MQTT") + bytes([5, flags]) + struct.pack("!H", s.keepalive)
        self._writer.write(packet(0x10, body + varint(len(ours)) + ours + payload))
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
            props, _ = properties(data, 2, len(data)) if len(data) > 2 else ({}, 2)
        except MalformedPacket as e:
            raise MqttError(f"malformed CONNACK: {e}") from e
        if code >= 0x80:
            why = props.get(REASON_STRING)
            raise MqttError(f"broker refused the connection: reason 0x{code:02x}"
                            + (f" ({why})" if isinstance(why, str) else ""))
        maximum = props.get(MAXIMUM_PACKET_SIZE)
        if isinstance(maximum, int) and maximum > 0:
            self.server_max_packet = maximum
        receive = props.get(RECEIVE_MAXIMUM)
        if isinstance(receive, int) and receive > 0:
            self._in_flight_out = asyncio.Semaphore(receive)
        keep = props.get(SERVER_KEEP_ALIVE)
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
        body = struct.pack("!H", pid) + b"\x00" + b"".join(utf8(f) + b"\x01" for f in filters)
        _, data = await self._request(packet(0x82, body), pid, within)
        try:
            _, pos = properties(data, 2, len(data))
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
