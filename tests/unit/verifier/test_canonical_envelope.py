"""The canonical envelope form is RFC 8785 (JSON Canonicalization Scheme): the bytes
``Envelope.to_bytes`` writes, and ``Envelope.digest`` hashes, are exactly what the ``rfc8785``
package writes for the same envelope, so another language can compute them (docs/formats.md).
The keyid hint is lowercase hex, so every value is ASCII and the two agree."""

from __future__ import annotations

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.verifier._vectors import VECTORS
from verifier.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, Signature
from verifier.errors import BadDataError

VECTOR_FILES = sorted(p for p in (VECTORS / "attestations").glob("*.json") if p.stem != "malformed")


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: p.stem)
def test_vectors_are_in_jcs_form(path) -> None:  # type: ignore[no-untyped-def]
    raw = path.read_bytes().strip()
    env = Envelope.from_bytes(raw)
    assert env.to_bytes() == rfc8785.dumps(env.to_dict()) == raw


_hex = st.text(alphabet="0123456789abcdef", max_size=256)
_sigs = st.lists(st.builds(Signature, st.binary(min_size=0, max_size=96), _hex), min_size=1,
                 max_size=8)


@settings(max_examples=300, database=None, deadline=None)
@given(payload=st.binary(max_size=2000), sigs=_sigs)
def test_any_envelope_serializes_as_rfc8785(payload: bytes, sigs: list[Signature]) -> None:
    env = Envelope(IN_TOTO_PAYLOAD_TYPE, payload, tuple(sigs))
    assert env.to_bytes() == rfc8785.dumps(env.to_dict())
    assert Envelope.from_bytes(env.to_bytes()) == env


@pytest.mark.parametrize("hint", ["ABCD", "0x12", "é", "a" * 257, " ab"])
def test_keyid_hint_must_be_lowercase_hex(hint: str) -> None:
    with pytest.raises(BadDataError, match="keyid is not lowercase hex"):
        Envelope(IN_TOTO_PAYLOAD_TYPE, b"{}", (Signature(b"x", hint),))
    raw = b'{"payload":"e30=","payloadType":"%s","signatures":[{"keyid":"%s","sig":"eA=="}]}' % (
        IN_TOTO_PAYLOAD_TYPE.encode(), hint.encode())
    with pytest.raises(BadDataError, match="keyid is not lowercase hex"):
        Envelope.from_bytes(raw)
