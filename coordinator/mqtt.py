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
from collections.abc import Awaitable, Callable

from coordinator.config import MqttConfig
from coordinator.mqtt5 import Connection, ConnectSettings, MqttError, Publish, RateLimitedLog
from coordinator.service import Ingest
from coordinator.store import Disagreement

__all__ = [
    "ATTESTATIONS",
    "DISAGREEMENT_TOPIC",
    "STATUS",
    "MqttLink",
    "settings_for",
]

log = logging.getLogger(__name__)

ATTESTATIONS = "rq/v1/attestations/"
STATUS = "rq/v1/status/"
DISAGREEMENT_TOPIC = "rq/v1/events/disagreement"
_MAX_PENDING_EVENTS = 10_000
_BACKOFF_MAX = 30.0
# Room in a packet for what surrounds the envelope: fixed header, topic, packet id, properties.
PACKET_OVERHEAD = 64 * 1024


def settings_for(config: MqttConfig, identifier: str, max_envelope_bytes: int) -> ConnectSettings:
    """How to connect: the broker, the account, TLS, and the Maximum Packet Size announced
    (the envelope cap plus room for the packet's headers, so the broker never sends more)."""
    tls: ssl.SSLContext | None = None
    if config.tls:
        tls = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file else None
        )
    return ConnectSettings(
        host=config.host,
        port=config.port,
        client_id=identifier,
        username=config.username or None,
        password=config.password(),
        keepalive=config.keepalive,
        tls=tls,
        max_packet_size=max_envelope_bytes + PACKET_OVERHEAD,
    )


class MqttLink:
    """The coordinator's session with the broker: receive attestations and status, publish
    disagreements, reconnect with capped, jittered backoff."""

    def __init__(
        self, config: MqttConfig, ingest: Ingest, on_connect: Callable[[], None] | None = None
    ) -> None:
        self.config = config
        self.ingest = ingest
        self.on_connect = on_connect
        self.connected = asyncio.Event()
        self.connections = 0
        # Malformed packets, by reason (coordinator.mqtt5.PACKET_DROP_REASONS): counted
        # exactly, logged at most once a minute per reason.
        self.packets_dropped = RateLimitedLog(log)
        self._conn: Connection | None = None
        self._pending: deque[bytes] = deque(maxlen=_MAX_PENDING_EVENTS)
        self._identifier = f"rq-coordinator-{uuid.uuid4().hex[:12]}"

    def _on_message(self, message: Publish) -> bool | Awaitable[None]:
        topic = message.topic
        if topic.startswith(ATTESTATIONS):
            rebuilder = topic[len(ATTESTATIONS) :]
            if self.ingest.offer(rebuilder, message.payload):
                return True
            return self.ingest.submit(rebuilder, message.payload)  # waits: backpressure
        if topic.startswith(STATUS):
            return self.ingest.handle_status(topic[len(STATUS) :], message.payload)
        return False  # not subscribed to: ignored

    async def publish_disagreement(self, d: Disagreement) -> None:
        payload = json.dumps(d.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        conn = self._conn
        if conn is None or not self.connected.is_set():
            self._pending.append(payload)  # sent on the next connection
            return
        try:
            await conn.publish(DISAGREEMENT_TOPIC, payload)
            self.ingest.metrics.disagreements_published += 1
        except MqttError:
            self._pending.append(payload)

    async def run(self) -> None:
        delay = 1.0
        settings = settings_for(
            self.config, self._identifier, self.ingest.config.limits.max_envelope_bytes
        )
        while True:
            try:
                async with await Connection.open(
                    settings, self._on_message, self.packets_dropped
                ) as conn:
                    await conn.subscribe([ATTESTATIONS + "+", STATUS + "+"])
                    self._conn = conn
                    self.connected.set()
                    self.connections += 1
                    delay = 1.0
                    log.info(
                        "connected to MQTT broker %s:%d", self.config.host, self.config.port
                    )
                    if self.on_connect is not None:
                        self.on_connect()
                    while self._pending:
                        await conn.publish(DISAGREEMENT_TOPIC, self._pending[0])
                        self._pending.popleft()
                        self.ingest.metrics.disagreements_published += 1
                    await conn.closed()
            except MqttError as e:
                log.warning(
                    "MQTT connection to %s:%d lost or refused (%s); retrying in %.1fs",
                    self.config.host,
                    self.config.port,
                    e,
                    delay,
                )
            finally:
                self.connected.clear()
                self._conn = None
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(_BACKOFF_MAX, delay * 2)
