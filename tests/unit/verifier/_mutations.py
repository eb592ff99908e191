"""Ways to change an envelope without touching what was signed (issue 11's revocation attack).

Each mutation keeps the payload and the rebuilder's valid signature, so the envelope still
verifies, but changes ``Envelope.digest()``: a revocation that named that digest missed it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

__all__ = ["MUTATIONS", "mutate"]


def _hint_changed(d: dict[str, object]) -> None:
    sigs = d["signatures"]
    assert isinstance(sigs, list)
    sigs[0]["keyid"] = "ab" * 32  # still lowercase hex, so still a well-formed envelope


def _hint_removed(d: dict[str, object]) -> None:
    sigs = d["signatures"]
    assert isinstance(sigs, list)
    del sigs[0]["keyid"]


def _extra_garbage_signature(d: dict[str, object]) -> None:
    sigs = d["signatures"]
    assert isinstance(sigs, list)
    sigs.append({"keyid": "", "sig": base64.b64encode(b"\x00" * 64).decode()})


def _base64_reencoded(d: dict[str, object]) -> None:
    payload = base64.b64decode(str(d["payload"]))
    d["payload"] = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    sigs = d["signatures"]
    assert isinstance(sigs, list)
    sig = base64.b64decode(sigs[0]["sig"])
    sigs[0]["sig"] = base64.urlsafe_b64encode(sig).decode().rstrip("=")


MUTATIONS: dict[str, Callable[[dict[str, object]], None]] = {
    "hint-changed": _hint_changed,
    "hint-removed": _hint_removed,
    "extra-garbage-signature": _extra_garbage_signature,
    "base64-reencoded": _base64_reencoded,
}


def mutate(raw: bytes, how: str) -> bytes:
    """``raw`` (one serialized envelope) changed by the mutation named ``how``."""
    d = json.loads(raw)
    MUTATIONS[how](d)
    return json.dumps(d).encode()
