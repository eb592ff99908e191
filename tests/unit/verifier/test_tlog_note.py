"""Signed notes, vkeys, cosignature/v1, checkpoints and tile paths, with published vectors:
the signed note of golang.org/x/mod/sumdb/note's tests (Ed25519 is deterministic, so signing
must reproduce it byte for byte) and transparency-dev/formats' type 0x04 cosigner vkey."""

from __future__ import annotations

import base64

import pytest

from verifier.errors import BadDataError
from verifier.keys import Ed25519PrivateKey, generate_private_key
from verifier.tlog.checkpoint import Checkpoint, CheckpointError
from verifier.tlog.note import (
    ALG_COSIGNATURE_V1,
    Note,
    NoteError,
    NoteSigner,
    NoteVerifier,
    cosigned_message,
    sign_note,
)
from verifier.tlog.tiles import (
    decode_bundle,
    encode_bundle,
    entries_path,
    parse_tile_path,
    tile_path,
    tiles_for_size,
)

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_TEXT = ("If you think cryptography is the answer to your problem,\n"
              "then you don't know what your problem is.\n")
PETER_NOTE = (PETER_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGU"
              "gYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n").encode()
PLUS_VKEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"  # base64 with a '+'
COSIGNER_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"


def _peter_signer() -> NoteSigner:
    seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])[1:]
    return NoteSigner("PeterNeumann", Ed25519PrivateKey.from_private_bytes(seed))


def test_go_note_vector_signs_byte_for_byte() -> None:
    signer = _peter_signer()
    assert signer.vkey == PETER_VKEY
    assert sign_note(PETER_TEXT, [signer]) == PETER_NOTE


def test_go_note_vector_verifies_and_tampering_fails() -> None:
    verifier = NoteVerifier.from_vkey(PETER_VKEY)
    note = Note.from_bytes(PETER_NOTE)
    assert note.text == PETER_TEXT
    assert [s.name for s in note.verify([verifier])] == ["PeterNeumann"]
    assert note.to_bytes() == PETER_NOTE
    tampered = Note.from_bytes(PETER_NOTE.replace(b"cryptography", b"cryptographY"))
    with pytest.raises(NoteError, match="does not verify"):
        tampered.verify([verifier])


def test_cosigner_vkey_vector_has_type_4_and_its_key_id() -> None:
    v = NoteVerifier.from_vkey(COSIGNER_VKEY)
    assert v.alg == ALG_COSIGNATURE_V1
    assert v.key_id == 0xDA77ADE7
    assert v.vkey == COSIGNER_VKEY


def test_vkey_whose_base64_has_a_plus() -> None:
    v = NoteVerifier.from_vkey(PLUS_VKEY)
    assert (v.name, v.key_id, v.vkey) == ("TEST", 0x7997405C, PLUS_VKEY)


@pytest.mark.parametrize("vkey", [
    "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong key id
    "PeterNeumann+c74f20a3+AhpC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # unknown type
    "PeterNeumann+c74f20a3",
    "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",
])
def test_bad_vkeys_are_refused(vkey: str) -> None:
    with pytest.raises(NoteError):
        NoteVerifier.from_vkey(vkey)


def test_unknown_signatures_are_ignored_but_one_known_is_required() -> None:
    other = NoteSigner("other.example", generate_private_key())
    note = Note.from_bytes(sign_note(PETER_TEXT, [other, _peter_signer()]))
    good = note.verify([NoteVerifier.from_vkey(PETER_VKEY)])
    assert [s.name for s in good] == ["PeterNeumann"]
    with pytest.raises(NoteError, match="no signature by a trusted key"):
        Note.from_bytes(sign_note(PETER_TEXT, [other])).verify(
            [NoteVerifier.from_vkey(PETER_VKEY)])


@pytest.mark.parametrize(("data", "reason"), [
    (b"no blank line\n\xe2\x80\x94 a AAAAAAA=\n", "blank line"),
    (PETER_TEXT.encode() + b"\n", "no signature lines"),
    (PETER_TEXT.encode() + b"\n- PeterNeumann AAAAAAAA\n", "em dash"),
    (PETER_TEXT.encode() + b"\n\xe2\x80\x94 PeterNeumann !!!!\n", "base64"),
    (b"bell \x07\n\n\xe2\x80\x94 a AAAAAAA=\n", "control"),
    (b"\xff\n\n", "UTF-8"),
    (b"x" * 70000, "limit"),
])
def test_malformed_notes_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(NoteError, match=reason):
        Note.from_bytes(data)


def test_cosignature_v1_signs_the_timestamped_message() -> None:
    key = generate_private_key()
    witness = NoteSigner("witness.example/w1", key, ALG_COSIGNATURE_V1)
    text = "example.com/log\n3\n" + base64.b64encode(b"\x01" * 32).decode() + "\n"
    sig = witness.sign(text.encode(), timestamp=1679315147)
    assert sig.sig[:8] == (1679315147).to_bytes(8, "big")
    message = cosigned_message(text.encode(), 1679315147)
    assert message.startswith(b"cosignature/v1\ntime 1679315147\nexample.com/log\n")
    key.public_key().verify(sig.sig[8:], message)  # raises when it is not that message
    assert witness.verifier.verify(text.encode(), sig.sig)
    assert not witness.verifier.verify(text.encode().replace(b"3", b"4"), sig.sig)
    # The same key as a plain Ed25519 note key has another key id: no confusion of types.
    assert NoteSigner("witness.example/w1", key).verifier.key_id != witness.verifier.key_id


def test_checkpoint_round_trip_and_spec_example() -> None:
    text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = Checkpoint.from_text(text)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert cp.to_text() == text


@pytest.mark.parametrize("text", [
    "o\n01\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
    "o\n-1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
    "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2=\n",
    "o\n1\n",
    "\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
    "DSSEv1 x\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
    "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n",
])
def test_bad_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.from_text(text)


def test_tile_paths_follow_tlog_tiles() -> None:
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(1, 3, 17) == "tile/1/003.p/17"
    assert entries_path(0) == "tile/entries/000"
    assert entries_path(1000, 5) == "tile/entries/x001/000.p/5"
    assert parse_tile_path("tile/0/x001/x234/067") == (0, 1234067, 256)
    assert parse_tile_path("tile/entries/x001/000.p/5") == (None, 1000, 5)
    # The spec's example: a tree of 70,000 has these partial tiles.
    assert tiles_for_size(70000) == [(0, 273, 112), (1, 1, 17), (2, 0, 1)]
    assert tiles_for_size(256) == [(1, 0, 1)]


@pytest.mark.parametrize("path", [
    "tile/0/1", "tile/64/000", "tile/0/000.p/256", "tile/0/000.p/0", "tile/0/000.p/01",
    "tile/0/x000/001", "tile/0/../000", "tile/entries/", "checkpoint", "tile/0/x01/000",
])
def test_bad_tile_paths_are_refused(path: str) -> None:
    with pytest.raises(BadDataError):
        parse_tile_path(path)


def test_entry_bundles_round_trip_and_bound_entries() -> None:
    entries = [b"", b"a", b"x" * 300]
    data = encode_bundle(entries)
    assert data[:4] == b"\x00\x00\x00\x01"
    assert decode_bundle(data, 3) == entries
    with pytest.raises(BadDataError, match="truncated"):
        decode_bundle(data[:-1], 3)
    with pytest.raises(ValueError, match="exceeds"):
        encode_bundle([b"x" * 65536])
