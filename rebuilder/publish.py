"""The publisher: send the outbox to MQTT in order, and keep the node's retained status fresh.

Guarantee: **at least once, in order**. An attestation is stored (with its outbox row) before it
is published; a row is marked published only after ``aiomqtt.Client.publish`` with QoS 1 returns,
which aiomqtt does only once the broker's PUBACK arrived (it waits on paho's ``on_publish``, which
paho calls for QoS 1 on PUBACK), and only when that PUBACK's MQTT 5 reason code is a success
(``_AckWatch``: aiomqtt itself ignores the code, so an ACL refusal would otherwise pass). A
broker outage only delays rows; a crash between the PUBACK and the mark re-sends that row after
restart, so consumers dedupe by envelope sha256 (the coordinator stores envelopes under that key
anyway).

Topics (docs/api.md): ``rq/v1/attestations/<id>`` (QoS 1) and retained ``rq/v1/status/<id>``.
Status messages are signed with the node's key (``verifier.status``), so a coordinator can tell
them from a forged "offline" or queue length. The last will cannot be signed when the broker
sends it, so the node signs it when it connects: ``{"state": "offline", "will": true, "session":
S, "time": <connect time>}``, where ``S`` is a random id of this connection, also carried by
every online status of that connection. A coordinator takes the will for the session it names
although it is older than that session's online statuses (docs/formats.md, "Status messages").
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rebuilder import __version__
from rebuilder.config import Config
from rebuilder.db import Store
from verifier.keys import Ed25519PrivateKey, load_private_key
from verifier.statement import format_time
from verifier.status import sign_status

__all__ = [
    "Message",
    "Publisher",
    "attestation_message",
    "attestation_topic",
    "checkpoint_topic",
    "flush_once",
    "status_body",
    "status_topic",
]

log = logging.getLogger("rebuilder.publish")

STATUS_INTERVAL_S = 30.0
PUBLISH_TIMEOUT_S = 20.0
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
BATCH = 100


def attestation_topic(node_id: str) -> str:
    return f"rq/v1/attestations/{node_id}"


def status_topic(node_id: str) -> str:
    return f"rq/v1/status/{node_id}"


@dataclass(frozen=True)
class Message:
    """One MQTT message exactly as the node publishes it (topic, QoS, retain, properties)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties


def attestation_message(node_id: str, envelope: bytes) -> Message:
    """The PUBLISH of one attestation: what a coordinator receives from a node (benchmarks
    and tests publish this, so they exercise the path production takes)."""
    return Message(attestation_topic(node_id), envelope, 1, False, _json_props())


def status_body(state: str, session: str, **fields: Any) -> dict[str, Any]:
    """A status body (docs/api.md), dated now, for the connection ``session``."""
    body: dict[str, Any] = {"state": state, "version": __version__, "session": session,
                            "time": format_time(datetime.now(UTC))}
    body.update(fields)
    return body


def checkpoint_topic(node_id: str) -> str:
    return f"rq/v1/checkpoints/{node_id}"


def _client(config: Config, client_id: str, will_payload: bytes | None) -> aiomqtt.Client:
    m = config.mqtt
    tls_context = None
    if m.tls:
        tls_context = ssl.create_default_context(cafile=str(m.ca_file) if m.ca_file else None)
    will = None
    if will_payload is not None:
        will = aiomqtt.Will(status_topic(config.node.id), will_payload, qos=1, retain=True,
                            properties=_json_props())
    return aiomqtt.Client(
        hostname=m.host,
        port=m.port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        username=m.username or None,
        password=m.password(),
        keepalive=m.keepalive,
        will=will,
        tls_context=tls_context,
        timeout=PUBLISH_TIMEOUT_S,
    )


class _AckWatch:
    """Records the reason code of each PUBACK, which aiomqtt does not surface.

    aiomqtt's ``publish`` returns once paho reports the message published, whatever the PUBACK's
    MQTT 5 reason code; a broker refusing it (say, "not authorized" by an ACL) would look like a
    success. Publishing one message at a time, the code seen during a ``publish`` call is that
    message's, so ``check`` can turn a refusal into an error and the row stays in the outbox.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self.failure: str | None = None
        paho = getattr(client, "_client", None)
        original = getattr(paho, "on_publish", None)
        if paho is None or original is None:
            return  # aiomqtt changed its internals: fall back to its own semantics

        def on_publish(c: Any, userdata: Any, mid: int, reason_code: Any, props: Any) -> None:
            if getattr(reason_code, "is_failure", False):
                self.failure = str(reason_code)
            original(c, userdata, mid, reason_code, props)

        paho.on_publish = on_publish

    async def publish(self, client: aiomqtt.Client, message: Message) -> None:
        self.failure = None
        await client.publish(message.topic, message.payload, qos=message.qos,
                             retain=message.retain, properties=message.properties)
        if self.failure is not None:
            raise aiomqtt.MqttError(
                f"the broker refused the message on {message.topic}: {self.failure}"
            )


def _json_props() -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = "application/json"
    return props


StatusSource = Callable[[], Awaitable[dict[str, Any]]]


class Publisher:
    """Runs until cancelled: connect, publish the outbox, refresh status, reconnect on loss."""

    def __init__(self, config: Config, store: Store, status: StatusSource) -> None:
        self.config = config
        self.store = store
        self.status = status
        self._wake = asyncio.Event()
        self._acks: _AckWatch | None = None
        self.drained = asyncio.Event()  # set while the outbox is known to be empty
        self.published = 0
        self.connected = False
        self._key: Ed25519PrivateKey | None = None
        self._session_id = secrets.token_hex(8)
        self._checkpoint: bytes | None = None  # latest served checkpoint note (rebuilder.tlog)
        self._checkpoint_sent: bytes | None = None

    def _signing_key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_private_key(self.config.node.signing_key)
        return self._key

    def publish_checkpoint(self, note: bytes) -> None:
        """Publish this checkpoint (retained) as soon as connected; a newer one replaces it."""
        self._checkpoint = note
        self._wake.set()

    def wake(self) -> None:
        self.drained.clear()
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                # A new session per connection; its last will is signed now (module docstring).
                self._session_id = secrets.token_hex(8)
                will = sign_status(status_body("offline", self._session_id, will=True),
                                   self._signing_key())
                client = _client(self.config, f"rq-rebuilder-{self.config.node.id}", will)
                self._acks = _AckWatch(client)
                async with client as c:
                    self.connected = True
                    failures = 0
                    log.info("connected to MQTT broker %s:%d", self.config.mqtt.host,
                             self.config.mqtt.port)
                    await self._session(c)
            except (aiomqtt.MqttError, sqlite3.Error, OSError) as e:
                self.connected = False
                failures += 1
                delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(failures, 10))
                delay *= random.uniform(0.5, 1.0)
                log.warning("MQTT broker %s:%d unavailable (%s); outbox kept, retry in %.1fs",
                            self.config.mqtt.host, self.config.mqtt.port, e, delay)
                self.drained.clear()
                await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        await self._publish_status(client, "online")
        last_status = asyncio.get_running_loop().time()
        while True:
            self._wake.clear()
            sent = await self._drain(client)
            if self._checkpoint is not None and self._checkpoint != self._checkpoint_sent:
                note = self._checkpoint
                await client.publish(checkpoint_topic(self.config.node.id), note, qos=1,
                                     retain=True)
                self._checkpoint_sent = note
            now = asyncio.get_running_loop().time()
            if sent or now - last_status >= STATUS_INTERVAL_S:
                await self._publish_status(client, "online")
                last_status = now
            if sent:
                continue
            self.drained.set()
            try:
                async with asyncio.timeout(STATUS_INTERVAL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _drain(self, client: aiomqtt.Client) -> int:
        rows = await self.store.pending_outbox(BATCH)
        for row in rows:
            assert self._acks is not None
            await self._acks.publish(client, attestation_message(self.config.node.id, row.envelope))
            # publish() returned: the broker acknowledged (PUBACK, success). Only now mark it.
            await self.store.mark_published(row.seq)
            self.published += 1
            log.info("published attestation seq %d %s (%s)", row.seq, row.envelope_sha256,
                     row.kind)
        return len(rows)

    async def _publish_status(self, client: aiomqtt.Client, state: str) -> None:
        body = status_body(state, self._session_id)
        if state == "online":
            body.update(await self.status())
        await client.publish(status_topic(self.config.node.id),
                             sign_status(body, self._signing_key()),
                             qos=1, retain=True, properties=_json_props())

    async def goodbye(self) -> None:
        """Publish the retained offline status on a clean shutdown (best effort)."""
        try:
            async with asyncio.timeout(5), _client(
                self.config, f"rq-rebuilder-{self.config.node.id}-bye", None
            ) as c:
                await self._publish_status(c, "offline")
        except (aiomqtt.MqttError, TimeoutError) as e:
            log.info("could not publish offline status: %s", e)


async def flush_once(config: Config, store: Store, deadline_s: float = 30.0) -> int:
    """Publish every pending outbox row now (``rebuilder revoke --publish-now``); rows sent."""
    sent = 0
    client = _client(config, f"rq-rebuilder-{config.node.id}-cli", None)
    acks = _AckWatch(client)
    async with asyncio.timeout(deadline_s), client as c:
        while rows := await store.pending_outbox(BATCH):
            for row in rows:
                await acks.publish(c, attestation_message(config.node.id, row.envelope))
                await store.mark_published(row.seq)
                sent += 1
    return sent
