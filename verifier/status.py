"""Signed status messages: a node's ``rq/v1/status/<id>`` body in a DSSE envelope.

A status message says whether a node is online and how busy it is. Unsigned, anyone able to
publish on the topic (or a broker) could retain a false "offline" or a fake queue length, so the
node signs it with its attestation key and the coordinator verifies it under the key registered
for the id in the topic, as for attestations (docs/formats.md, "Status messages")::

    data = sign_status({"state": "online", "queue": 3, ...}, key)
    body = open_status(data, public_key, max_bytes=4096)   # raises BadDataError

The envelope is DSSE's JSON form with its own payloadType, so a status signature can never be
taken for an attestation's, nor the other way round (PAE binds the type).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from verifier.dsse import pae, strict_json_loads
from verifier.errors import BadDataError
from verifier.keys import keyid

__all__ = ["STATUS_PAYLOAD_TYPE", "StatusError", "open_status", "sign_status"]

STATUS_PAYLOAD_TYPE = "application/vnd.repro-quorum.status+json"


class StatusError(BadDataError):
    """A status message refused; ``kind``: ``malformed``, ``unsigned`` or ``bad-signature``."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__("status", reason)
        self.kind = kind


def sign_status(body: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The serialized signed envelope of one status body."""
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    sig = key.sign(pae(STATUS_PAYLOAD_TYPE, payload))
    envelope = {
        "payloadType": STATUS_PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": keyid(key.public_key()), "sig": base64.b64encode(sig).decode()}],
    }
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise StatusError("malformed", f"{what} missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise StatusError("malformed", f"{what} is not base64") from e


def open_status(data: bytes, key: Ed25519PublicKey, max_bytes: int = 4096) -> object:
    """Verify a signed status under ``key``; its body (parsed JSON, not yet validated).

    Raises ``StatusError`` naming the problem: oversized or not JSON (``malformed``), not an
    envelope of this type (``unsigned``: a plain status body, say), or no signature by ``key``
    (``bad-signature``).
    """
    if len(data) > max_bytes:
        raise StatusError("malformed", f"{len(data)} bytes, limit {max_bytes}")
    try:
        obj = strict_json_loads(data, "status")
    except BadDataError as e:
        raise StatusError("malformed", e.reason) from None
    if not isinstance(obj, dict) or "payloadType" not in obj:
        raise StatusError("unsigned", "not a signed status envelope")
    if obj.get("payloadType") != STATUS_PAYLOAD_TYPE:
        raise StatusError("unsigned", f"payloadType is not {STATUS_PAYLOAD_TYPE}")
    payload = _b64(obj.get("payload"), "payload")
    sigs = obj.get("signatures")
    if not isinstance(sigs, list) or not 1 <= len(sigs) <= 4:
        raise StatusError("malformed", "signatures must be a list of 1 to 4")
    message = pae(STATUS_PAYLOAD_TYPE, payload)
    for s in sigs:
        if not isinstance(s, dict):
            raise StatusError("malformed", "a signature is not an object")
        try:
            key.verify(_b64(s.get("sig"), "sig"), message)
        except InvalidSignature:
            continue
        try:
            return strict_json_loads(payload, "status")
        except BadDataError as e:
            raise StatusError("malformed", e.reason) from None
    raise StatusError("bad-signature", "no signature verifies under the rebuilder's key")
