"""The coordinator's MQTT side: subscribe to attestations and status, publish disagreements.

``MqttLink.run()`` connects (MQTT 5, QoS 1), subscribes to ``rq/v1/attestations/+`` and
``rq/v1/status/+``, hands every message to ``Ingest`` and reconnects with capped, jittered
backoff when the broker goes away. After every (re)connection it asks for an HTTP catch-up
round, so what was published while it was disconnected still arrives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt import ProtocolVersion
from paho.mqtt.enums import MQTTErrorCode

from coordinator.config import MqttConfig
from coordinator.service import Ingest
from coordinator.store import Disagreement

__all__ = [
    "ATTESTATIONS",
    "DISAGREEMENT_TOPIC",
    "STATUS",
    "MqttLink",
]

log = logging.getLogger(__name__)

ATTESTATIONS = "rq/v1/attestations/"
STATUS = "rq/v1/status/"
DISAGREEMENT_TOPIC = "rq/v1/events/disagreement"
_MAX_PENDING_EVENTS = 10_000
_BACKOFF_MAX = 30.0
_READ_SIZE = 64 * 1024
_ATTESTATIONS_BYTES = ATTESTATIONS.encode()


class _Client(aiomqtt.Client):
    """aiomqtt's client, with a cheaper path for a stream of attestations.

    Per message, aiomqtt and paho-mqtt cost the coordinator more CPU than anything it does but
    verifying the signature. Three things here cut that, each behaving as before otherwise:

    - An attestation goes to ``Ingest`` straight from paho's callback (aiomqtt would queue it
      and wake a task to take it out) whenever the ingest queue takes it at once and nothing
      waits ahead of it in aiomqtt's queue; everything else (status messages, and attestations
      while the ingest queue is full: backpressure, as before) goes through aiomqtt's queue to
      ``MqttLink.run``'s loop, in the order received.
    - paho reads a packet in three or four ``recv`` calls (one byte, the length byte by byte,
      the rest) and one packet per event-loop turn; here the socket is read 64 KiB at a time
      and every complete packet in that is handled in the same turn.
    - The acknowledgement paho queues for each message is written at the end of the loop turn
      (every one queued in it), instead of through ``add_writer``, another thread-safe wake-up
      and two more system calls each; only when the socket is full does aiomqtt's writer wait.
    - A QoS 1 PUBLISH on an attestation topic without MQTT 5 properties (what nodes send) is
      decoded here, without paho's message object, properties parser, log line and callback
      matcher; any other packet, or one this does not take, is paho's as before.
    """

    def __init__(
        self, *args: Any, offer: Callable[[str, bytes], bool] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._offer = offer
        self._rsock: object = None  # the socket _rbuf was read from
        self._rbuf = b""
        self._rpos = 0
        self._flush_due = False
        paho = self._client
        self._paho_recv: Callable[[int], bytes] | None = getattr(paho, "_sock_recv", None)
        if self._paho_recv is not None and hasattr(paho, "_sock"):
            paho._sock_recv = self._buffered_recv  # type: ignore[method-assign]
        self._paho_publish: Callable[[], MQTTErrorCode] | None = getattr(
            paho, "_handle_publish", None
        )
        if (
            offer is not None
            and self._paho_publish is not None
            and getattr(paho, "_protocol", None) == mqtt.MQTTv5
            and isinstance(getattr(paho, "_in_packet", None), dict)
            and hasattr(paho, "_send_puback")
        ):
            paho._handle_publish = self._handle_publish  # type: ignore[method-assign]

    # -- the common PUBLISH, decoded here

    def _handle_publish(self) -> MQTTErrorCode:
        paho = self._client
        assert self._offer is not None and self._paho_publish is not None
        header = paho._in_packet["command"]
        if header & 0x06 == 0x02 and not paho._manual_ack and self._queue.empty():  # QoS 1
            parsed = _plain_publish(paho._in_packet["packet"])
            if parsed is not None:
                topic, mid, payload = parsed
                if topic.startswith(_ATTESTATIONS_BYTES):
                    try:
                        rebuilder = topic[len(_ATTESTATIONS_BYTES) :].decode("utf-8")
                    except UnicodeDecodeError:
                        rebuilder = None
                    if rebuilder is not None and self._offer(rebuilder, payload):
                        return paho._send_puback(mid)
        return self._paho_publish()

    # -- reading: paho's one-byte reads served from a buffer

    def _buffered_recv(self, bufsize: int) -> bytes:
        sock = self._client._sock
        if sock is not self._rsock:  # a new connection: nothing buffered belongs to it
            self._rsock, self._rbuf, self._rpos = sock, b"", 0
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            assert self._paho_recv is not None
            buf = self._paho_recv(_READ_SIZE)  # raises BlockingIOError when there is nothing
            pos = 0
            if not buf:
                self._rbuf, self._rpos = b"", 0
                return buf  # connection closed
        out = buf[pos : pos + bufsize]
        self._rbuf, self._rpos = buf, pos + len(out)
        return out

    def _buffered(self) -> bool:
        return self._rsock is self._client._sock and self._rpos < len(self._rbuf)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        super()._on_socket_open(client, userdata, sock)
        if client._sock_recv != self._buffered_recv:
            return

        def callback() -> None:
            # As aiomqtt's own reader callback, but it handles every packet already read.
            try:
                while True:
                    client.loop_read()
                    if self._buffered():
                        continue
                    pending = getattr(client._sock, "pending", None)  # TLS: decrypted bytes
                    if pending is not None and pending() > 0:
                        continue
                    break
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        # paho may call this from the thread that connects: after aiomqtt's add_reader, this
        # one replaces its callback.
        self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), callback)

    # -- writing: acknowledgements at the end of the loop turn

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            in_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            in_loop = False
        if not in_loop:  # paho's connecting thread
            super()._on_socket_register_write(client, userdata, sock)
            return
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush, client, userdata, sock)

    def _flush(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._flush_due = False
        try:
            client.loop_write()
        except Exception as exc:
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)
            return
        if client._sock is sock and client.want_write():
            # The socket is full: aiomqtt's writer sends the rest when it can.
            super()._on_socket_register_write(client, userdata, sock)

    def _on_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        # Called by paho inside the event loop's reader callback: it must not raise.
        offer = self._offer
        if offer is not None and self._queue.empty():
            try:
                topic = message.topic
            except UnicodeDecodeError:
                topic = ""
            if (
                topic.startswith(ATTESTATIONS)
                and isinstance(message.payload, bytes)
                and offer(topic[len(ATTESTATIONS) :], message.payload)
            ):
                return
        super()._on_message(client, userdata, message)


def _plain_publish(packet: bytes | bytearray) -> tuple[bytes, int, bytes] | None:
    """(topic, packet id, payload) of a QoS 1 MQTT 5 PUBLISH body without properties; None
    for anything else (then paho decodes it, and refuses it when malformed)."""
    n = len(packet)
    if n < 2:
        return None
    pos = 2 + ((packet[0] << 8) | packet[1])
    if pos + 3 > n:
        return None
    mid = (packet[pos] << 8) | packet[pos + 1]
    if mid == 0 or packet[pos + 2] != 0:  # no packet id, or properties follow
        return None
    return bytes(packet[2 : pos]), mid, bytes(packet[pos + 3 :])


def client_for(
    config: MqttConfig, identifier: str, offer: Callable[[str, bytes], bool] | None = None
) -> aiomqtt.Client:
    """An MQTT 5 client; ``offer(rebuilder, payload)`` is tried first for each attestation."""
    tls: ssl.SSLContext | None = None
    if config.tls:
        tls = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file else None
        )
    return _Client(
        config.host,
        config.port,
        username=config.username or None,
        password=config.password(),
        identifier=identifier,
        protocol=ProtocolVersion.V5,
        keepalive=config.keepalive,
        tls_context=tls,
        timeout=10,
        # A bound on memory under a flood: beyond it aiomqtt discards (and logs) messages;
        # catch-up fetches any genuine one from its rebuilder later.
        max_queued_incoming_messages=100_000,
        offer=offer,
    )


class MqttLink:
    def __init__(
        self, config: MqttConfig, ingest: Ingest, on_connect: Callable[[], None] | None = None
    ) -> None:
        self.config = config
        self.ingest = ingest
        self.on_connect = on_connect
        self.connected = asyncio.Event()
        self.connections = 0
        self._client: aiomqtt.Client | None = None
        self._pending: deque[bytes] = deque(maxlen=_MAX_PENDING_EVENTS)
        self._identifier = f"rq-coordinator-{uuid.uuid4().hex[:12]}"

    async def publish_disagreement(self, d: Disagreement) -> None:
        payload = json.dumps(d.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        client = self._client
        if client is None or not self.connected.is_set():
            self._pending.append(payload)  # sent on the next connection
            return
        try:
            await client.publish(DISAGREEMENT_TOPIC, payload, qos=1, timeout=10)
            self.ingest.metrics.disagreements_published += 1
        except aiomqtt.MqttError:
            self._pending.append(payload)

    async def run(self) -> None:
        delay = 1.0
        while True:
            try:
                async with client_for(
                    self.config, self._identifier, self.ingest.offer
                ) as client:
                    self._client = client
                    await client.subscribe(ATTESTATIONS + "+", qos=1)
                    await client.subscribe(STATUS + "+", qos=1)
                    self.connected.set()
                    self.connections += 1
                    delay = 1.0
                    log.info(
                        "connected to MQTT broker %s:%d", self.config.host, self.config.port
                    )
                    if self.on_connect is not None:
                        self.on_connect()
                    while self._pending:
                        await client.publish(DISAGREEMENT_TOPIC, self._pending[0], qos=1)
                        self._pending.popleft()
                        self.ingest.metrics.disagreements_published += 1
                    async for message in client.messages:
                        await self._handle(message)
            except aiomqtt.MqttError as e:
                log.warning(
                    "MQTT connection to %s:%d lost or refused (%s); retrying in %.1fs",
                    self.config.host,
                    self.config.port,
                    e,
                    delay,
                )
            finally:
                self.connected.clear()
                self._client = None
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(_BACKOFF_MAX, delay * 2)

    async def _handle(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload
        if not isinstance(payload, (bytes, bytearray)):
            payload = b"" if payload is None else str(payload).encode()
        if topic.startswith(ATTESTATIONS):
            await self.ingest.submit(topic[len(ATTESTATIONS) :], bytes(payload))
        elif topic.startswith(STATUS):
            await self.ingest.handle_status(topic[len(STATUS) :], bytes(payload))
