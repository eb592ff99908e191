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


class _Client(aiomqtt.Client):
    """aiomqtt's client, handing attestations to ``Ingest`` straight from paho's callback.

    aiomqtt queues every message and wakes a task to take each one out, which costs the
    coordinator more CPU per attestation than anything else it does to it but verifying the
    signature. An attestation skips that whenever the ingest queue takes it at once and nothing
    waits ahead of it in aiomqtt's queue; everything else (status messages, and attestations
    while the ingest queue is full: backpressure, as before) goes through aiomqtt's queue to
    ``MqttLink.run``'s loop, in the order received.
    """

    def __init__(
        self, *args: Any, offer: Callable[[str, bytes], bool] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._offer = offer

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
