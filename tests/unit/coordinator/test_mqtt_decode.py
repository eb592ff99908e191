"""coordinator/mqtt.py decodes the common PUBLISH itself: it must take only what it fully
understands and leave everything else to paho."""

from __future__ import annotations

import struct

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from coordinator.mqtt import _plain_publish


def body(topic: bytes, mid: int, props: bytes, payload: bytes) -> bytes:
    return struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + props + payload


def test_plain_publish_decoded() -> None:
    assert _plain_publish(body(b"rq/v1/attestations/rb-a", 7, b"\x00", b"{}")) == (
        b"rq/v1/attestations/rb-a",
        7,
        b"{}",
    )
    assert _plain_publish(bytearray(body(b"t", 65535, b"\x00", b""))) == (b"t", 65535, b"")


def test_anything_else_left_to_paho() -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 3
    with_props = props.pack()
    assert with_props[0] != 0
    assert _plain_publish(body(b"", 7, with_props, b"{}")) is None  # topic alias
    assert _plain_publish(body(b"t", 7, b"\x80\x00", b"{}")) is None  # non-minimal length
    assert _plain_publish(body(b"t", 0, b"\x00", b"{}")) is None  # packet id 0
    assert _plain_publish(b"") is None
    assert _plain_publish(b"\x00") is None
    assert _plain_publish(b"\x00\x05abc") is None  # topic longer than the packet
    assert _plain_publish(b"\x00\x01t\x00\x07") is None  # no property length


async def test_fast_path_is_installed_with_the_supported_versions() -> None:
    """The shortcuts fall back silently when aiomqtt or paho change their internals; with the
    versions pyproject.toml allows they must all be in place, or the ingest figures are gone."""
    from coordinator.config import MqttConfig
    from coordinator.mqtt import client_for

    client = client_for(MqttConfig(), "rq-test", offer=lambda rebuilder, payload: True)
    paho = client._client
    assert paho._handle_publish == client._handle_publish  # type: ignore[attr-defined]
    assert paho._sock_recv == client._buffered_recv  # type: ignore[attr-defined]
