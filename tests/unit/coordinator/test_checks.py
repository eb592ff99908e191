"""Table-driven checks of what the coordinator accepts: one named vector per attack."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest

from coordinator.checks import Accepted, Dropped, check_envelope, parse_status
from tests.unit.coordinator.factory import Signer, sha
from verifier.dsse import Envelope, Signature, sign
from verifier.errors import BadDataError
from verifier.keys import keyid

ALPHA = Signer("rb-alpha")
MALLORY = Signer("rb-mallory")
GOOD = ALPHA.rebuild("hello", "1.0-1", {"hello_1.0-1_amd64.deb": sha("hello")})


def _tampered_payload() -> bytes:
    d = json.loads(GOOD.to_bytes())
    statement = json.loads(base64.b64decode(d["payload"]))
    statement["subject"][0]["digest"]["sha256"] = sha("evil")
    d["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps(d).encode()


def _with_signatures(sigs: tuple[Signature, ...]) -> bytes:
    return Envelope(GOOD.payload_type, GOOD.payload, sigs).to_bytes()


def _wrong_hint() -> bytes:
    forged = MALLORY.rebuild("hello", "1.0-1", {"hello_1.0-1_amd64.deb": sha("evil")})
    # Mallory claims alpha's keyid in the hint; only the real key can make it verify.
    kid = keyid(ALPHA.key.public_key())
    return Envelope(
        forged.payload_type, forged.payload, (Signature(forged.signatures[0].sig, kid),)
    ).to_bytes()


DROPS: dict[str, tuple[Callable[[], bytes], str]] = {
    "signed by another rebuilder's key": (
        lambda: MALLORY.rebuild("hello", "1.0-1", {"hello_1.0-1_amd64.deb": sha("x")}).to_bytes(),
        "wrong-key",
    ),
    "forged keyid hint": (_wrong_hint, "bad-signature"),
    "payload modified after signing": (_tampered_payload, "bad-signature"),
    "signature bytes zeroed": (
        lambda: _with_signatures(
            (Signature(b"\0" * 64, keyid(ALPHA.key.public_key())),)
        ),
        "bad-signature",
    ),
    "oversized": (lambda: b"{" + b" " * (1024 * 1024) + b"}", "oversized"),
    "not json": (lambda: b"\xff\xfe garbage", "malformed"),
    "json array": (lambda: b"[]", "malformed"),
    "duplicate keys": (
        lambda: b'{"payloadType":"a","payloadType":"b","payload":"","signatures":[]}',
        "malformed",
    ),
    "no signatures": (
        lambda: json.dumps(
            {"payloadType": GOOD.payload_type, "payload": "e30=", "signatures": []}
        ).encode(),
        "malformed",
    ),
    "wrong payload type": (
        lambda: json.dumps(
            {"payloadType": "text/plain", "payload": "e30=", "signatures": [{"sig": "AA=="}]}
        ).encode(),
        "malformed",
    ),
    "bad base64": (
        lambda: json.dumps(
            {"payloadType": GOOD.payload_type, "payload": "!!!", "signatures": [{"sig": "AA"}]}
        ).encode(),
        "malformed",
    ),
    "validly signed non-statement": (
        lambda: sign(b'{"hello": "world"}', ALPHA.key).to_bytes(),
        "bad-statement",
    ),
    "validly signed statement with bad digest": (
        lambda: sign(
            GOOD.payload.replace(sha("hello").encode(), b"NOT-A-DIGEST"), ALPHA.key
        ).to_bytes(),
        "bad-statement",
    ),
}


@pytest.mark.parametrize("name", sorted(DROPS))
def test_dropped(name: str) -> None:
    make, reason = DROPS[name]
    pub = ALPHA.key.public_key()
    result = check_envelope(make(), "rb-alpha", pub, keyid(pub))
    assert isinstance(result, Dropped), name
    assert result.reason == reason, (name, result.detail)
    assert result.detail


def test_unknown_rebuilder() -> None:
    result = check_envelope(GOOD.to_bytes(), "rb-nobody", None, None)
    assert isinstance(result, Dropped) and result.reason == "unknown-rebuilder"


def test_accepted_indexes_the_statement() -> None:
    pub = ALPHA.key.public_key()
    # Non-canonical spacing is accepted; what is stored is the canonical form.
    spaced = json.dumps(json.loads(GOOD.to_bytes()), indent=2).encode()
    result = check_envelope(spaced, "rb-alpha", pub, keyid(pub))
    assert isinstance(result, Accepted)
    assert result.digest == GOOD.digest()
    assert result.body == GOOD.to_bytes()
    assert (result.kind, result.source, result.version, result.verdict) == (
        "rebuild", "hello", "1.0-1", "reproduced",
    )
    assert result.subjects == (("hello_1.0-1_amd64.deb", sha("hello")),)


def test_mismatch_failure_and_revocation_kinds() -> None:
    pub = ALPHA.key.public_key()
    kid = keyid(pub)
    deb = "a_1_amd64.deb"
    mismatch = ALPHA.rebuild("a", "1", {deb: sha("1")}, upstream={deb: sha("2")})
    r = check_envelope(mismatch.to_bytes(), "rb-alpha", pub, kid)
    assert isinstance(r, Accepted) and r.verdict == "unreproducible"
    assert r.outputs[0].repository == sha("2")
    f = check_envelope(ALPHA.failure("a", "1").to_bytes(), "rb-alpha", pub, kid)
    assert isinstance(f, Accepted) and (f.kind, f.verdict, f.subjects) == ("failure", "failed", ())
    rv = check_envelope(ALPHA.revoke(mismatch).to_bytes(), "rb-alpha", pub, kid)
    assert isinstance(rv, Accepted) and rv.kind == "revocation"
    assert rv.revoked == mismatch.payload_digest() and rv.verdict is None



def test_worker_results_round_trip() -> None:
    """What a verification worker sends back is, unpacked, exactly what it checked."""
    import pickle

    from coordinator.checks import check_batch, init_worker, pack, unpack
    from verifier.keys import public_key_pem

    deb = "a_1_amd64.deb"
    mismatch = ALPHA.rebuild("a", "1", {deb: sha("1")}, upstream={deb: sha("2")})
    spaced = json.dumps(json.loads(GOOD.to_bytes()), indent=2).encode()  # body != payload
    items = [
        ("rb-alpha", GOOD.to_bytes()),
        ("rb-alpha", spaced),
        ("rb-alpha", mismatch.to_bytes()),
        ("rb-alpha", ALPHA.failure("a", "1").to_bytes()),
        ("rb-alpha", ALPHA.revoke(mismatch).to_bytes()),
        ("rb-alpha", b"{}"),
        ("rb-nobody", GOOD.to_bytes()),
    ]
    init_worker({"rb-alpha": public_key_pem(ALPHA.key.public_key())}, 1024 * 1024)
    packed = pickle.loads(pickle.dumps(check_batch(items)))  # noqa: S301  # our own bytes
    pub = ALPHA.key.public_key()
    expected = [check_envelope(p, rid, *((pub, keyid(pub)) if rid == "rb-alpha" else (None, None)))
                for rid, p in items]
    assert [unpack(r, p) for r, (_, p) in zip(packed, items, strict=True)] == expected
    assert packed[0][2] is None  # the canonical payload itself is not sent back
    assert packed[1][2] == GOOD.to_bytes()
    assert pack(expected[5], items[5][1]) is expected[5]

STATUS_BAD = {
    "not json": b"online",
    "array": b"[]",
    "unknown state": b'{"state": "sleeping"}',
    "negative queue": b'{"state": "online", "queue": -1}',
    "bool queue": b'{"state": "online", "queue": true}',
    "naive time": b'{"state": "online", "time": "2026-01-01T00:00:00"}',
    "garbage time": b'{"state": "online", "time": "yesterday"}',
    "long version": b'{"state": "online", "version": "' + b"1" * 100 + b'"}',
    "oversized": b'{"state": "online", "x": "' + b"a" * 5000 + b'"}',
    "short session": b'{"state": "online", "session": "abc"}',
    "upper-case session": b'{"state": "online", "session": "ABCDEF0123456789"}',
    "will while online": b'{"state": "online", "will": true}',
    "will not a boolean": b'{"state": "offline", "will": 1}',
}


@pytest.mark.parametrize("name", sorted(STATUS_BAD))
def test_status_rejected(name: str) -> None:
    with pytest.raises(BadDataError):
        parse_status(STATUS_BAD[name])


def test_status_accepted() -> None:
    s = parse_status(b'{"state":"online","queue":3,"running":1,"version":"0.1.0",'
                     b'"time":"2026-11-21T12:00:00Z"}')
    assert (s.state, s.queue, s.running, s.version) == ("online", 3, 1, "0.1.0")
    assert parse_status(b'{"state":"offline"}').state == "offline"
