"""Hypothesis strategies for what a hostile source can send: JSON of any shape, depth and size,
mutated envelopes, validly signed junk statements, and bytes that are not JSON at all.

A hostile *trusted* rebuilder holds its own key, so ``signed_junk`` signs with it: everything
past the signature check has to hold too.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

from verifier.dsse import sign
from verifier.keys import Ed25519PrivateKey

__all__ = ["envelope_items", "hostile_bodies", "json_values"]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", "debian", "verdict:hello_1.0-1_amd64.deb", "a" * 64, "sha256", "1.0-1",
                     "https://in-toto.io/Statement/v1", "https://slsa.dev/provenance/v1",
                     "https://repro-quorum.dev/revocation/v2", "2026-11-19T12:00:00Z",
                     "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(max_size=12), inner, max_size=5),
    ),
    max_leaves=30,
)


def _deep(n: int, leaf: str = "") -> str:
    return "[" * n + leaf + "]" * n


def _mutate(d: Any, path: list[Any], value: Any) -> Any:
    """``d`` with the value at ``path`` (a list of keys/indices, cut where it stops) replaced."""
    if not path or not isinstance(d, (dict, list)) or not d:
        return value
    key = path[0]
    if isinstance(d, dict):
        k = sorted(d)[key % len(d)] if isinstance(key, int) else key
        out = dict(d)
        out[k] = _mutate(d.get(k), path[1:], value)
        return out
    i = key % len(d) if isinstance(key, int) else 0
    return [*d[:i], _mutate(d[i], path[1:], value), *d[i + 1:]]


@st.composite
def signed_junk(draw: st.DrawFn, key: Ed25519PrivateKey, statement: dict[str, Any]) -> bytes:
    """A validly signed payload: a mutated real statement, or any JSON, or any bytes."""
    kind = draw(st.sampled_from(["mutated", "json", "bytes", "deep"]))
    if kind == "mutated":
        path = draw(st.lists(st.one_of(st.integers(0, 20), st.text(max_size=8)), max_size=6))
        payload = json.dumps(_mutate(statement, path, draw(json_values))).encode()
    elif kind == "json":
        payload = json.dumps(draw(json_values)).encode()
    elif kind == "deep":
        payload = _deep(draw(st.integers(500, 3000))).encode()
    else:
        payload = draw(st.binary(max_size=200))
    return sign(payload, key).to_bytes()


@st.composite
def envelope_items(
    draw: st.DrawFn, key: Ed25519PrivateKey, statement: dict[str, Any], honest: bytes
) -> bytes:
    """One serialized envelope-ish thing a hostile rebuilder sends."""
    kind = draw(st.sampled_from(["signed", "mutated-envelope", "json", "bytes", "deep"]))
    if kind == "signed":
        return draw(signed_junk(key, statement))
    if kind == "mutated-envelope":
        env = json.loads(honest)
        path = draw(st.lists(st.one_of(st.integers(0, 5), st.sampled_from(
            ["payload", "payloadType", "signatures", "keyid", "sig"])), max_size=4))
        value = draw(st.one_of(json_values, st.just(base64.b64encode(b"\x00" * 64).decode())))
        return json.dumps(_mutate(env, path, value)).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        return _deep(draw(st.integers(500, 200_000))).encode()
    return draw(st.binary(max_size=300))


@st.composite
def hostile_bodies(
    draw: st.DrawFn, key: Ed25519PrivateKey, statement: dict[str, Any], honest: bytes
) -> bytes:
    """A whole HTTP answer body: an attestations list of hostile items, or anything else."""
    kind = draw(st.sampled_from(["list", "json", "bytes", "deep", "deep-item", "wrong-shape"]))
    if kind == "list":
        items = draw(st.lists(envelope_items(key, statement, honest), max_size=4))
        parts = []
        for raw in items:
            try:
                json.loads(raw)
                parts.append(raw)
            except (ValueError, RecursionError):  # not JSON (for this parser): as a string
                parts.append(json.dumps(raw.decode("latin-1")).encode())
        return b'{"attestations": [' + b",".join(parts) + b"]}"
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        return _deep(draw(st.integers(500, 200_000))).encode()
    if kind == "deep-item":
        return ('{"attestations": [' + _deep(draw(st.integers(800, 1000))) + "]}").encode()
    if kind == "wrong-shape":
        return json.dumps({"attestations": draw(json_values)}).encode()
    return draw(st.binary(max_size=300))
