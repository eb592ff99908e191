"""DSSE interoperability with securesystemslib's independent implementation."""

from __future__ import annotations

import json

import pytest
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from tests.unit.verifier._vectors import VECTORS, make_vectors
from verifier.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, sign
from verifier.keys import keyid

mv = make_vectors()


def sslib_key(name: str) -> SSlibKey:
    # securesystemslib matches signatures to keys by keyid, so give it ours.
    public = mv.private_key(name).public_key()
    return SSlibKey.from_crypto(public, keyid=keyid(public))


def test_envelope_signed_here_verifies_with_securesystemslib() -> None:
    raw = (VECTORS / "attestations/agree-rb-alpha.json").read_bytes()
    theirs = SslibEnvelope.from_dict(json.loads(raw))
    accepted = theirs.verify([sslib_key("rb-alpha")], threshold=1)
    assert list(accepted) == [keyid(mv.private_key("rb-alpha").public_key())]


def test_tampered_envelope_fails_with_securesystemslib_too() -> None:
    raw = (VECTORS / "attestations/tampered-rb-beta.json").read_bytes()
    theirs = SslibEnvelope.from_dict(json.loads(raw))
    with pytest.raises(VerificationError):
        theirs.verify([sslib_key("rb-beta")], threshold=1)


def test_envelope_signed_with_securesystemslib_verifies_here() -> None:
    private = mv.private_key("rb-gamma")
    signer = CryptoSigner(private, sslib_key("rb-gamma"))
    payload = mv.rebuild("rb-gamma", (mv.Subject(mv.DEB_NAME, "c" * 64),)).to_bytes()
    theirs = SslibEnvelope(payload, IN_TOTO_PAYLOAD_TYPE, {})
    theirs.sign(signer)
    ours = Envelope.from_bytes(json.dumps(theirs.to_dict()).encode())
    assert ours.payload == payload
    assert ours.verify(private.public_key())
    assert not ours.verify(mv.private_key("rb-alpha").public_key())
    # Ed25519 is deterministic: both implementations produce the same signature bytes.
    assert ours.signatures[0].sig == sign(payload, private).signatures[0].sig
