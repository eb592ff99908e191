"""Signed status messages (verifier/status.py): a round trip, and everything refused."""

from __future__ import annotations

import base64
import json

import pytest

from verifier.dsse import sign
from verifier.keys import generate_private_key
from verifier.status import STATUS_PAYLOAD_TYPE, StatusError, open_status, sign_status

KEY = generate_private_key()
BODY = {"state": "online", "queue": 2, "time": "2026-12-04T18:00:00Z",
        "session": "0123456789abcdef"}


def test_round_trip() -> None:
    assert open_status(sign_status(BODY, KEY), KEY.public_key()) == BODY


def _refused(data: bytes, kind: str) -> None:
    with pytest.raises(StatusError) as e:
        open_status(data, KEY.public_key())
    assert e.value.kind == kind


def test_unsigned_and_foreign_envelopes_refused() -> None:
    _refused(json.dumps(BODY).encode(), "unsigned")  # the old, unsigned form
    # An attestation envelope signed by the same key is not a status (PAE binds the type).
    _refused(sign(json.dumps(BODY).encode(), KEY).to_bytes(), "unsigned")
    envelope = json.loads(sign_status(BODY, KEY))
    envelope["payloadType"] = "application/vnd.in-toto+json"
    _refused(json.dumps(envelope).encode(), "unsigned")


def test_forged_and_modified_refused() -> None:
    _refused(sign_status(BODY, generate_private_key()), "bad-signature")
    envelope = json.loads(sign_status(BODY, KEY))
    forged = dict(BODY, queue=99999)
    envelope["payload"] = base64.b64encode(json.dumps(forged).encode()).decode()
    _refused(json.dumps(envelope).encode(), "bad-signature")


@pytest.mark.parametrize("data", [
    b"{" * 5000,  # oversized
    b"not json",
    json.dumps({"payloadType": STATUS_PAYLOAD_TYPE, "payload": "%%%", "signatures": [
        {"sig": ""}]}).encode(),
    json.dumps({"payloadType": STATUS_PAYLOAD_TYPE, "payload": "", "signatures": []}).encode(),
    json.dumps({"payloadType": STATUS_PAYLOAD_TYPE, "payload": "", "signatures": [1]}).encode(),
])
def test_malformed_refused(data: bytes) -> None:
    _refused(data, "malformed")
