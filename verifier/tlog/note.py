"""C2SP signed notes (c2sp.org/signed-note): parse, sign, verify; verifier keys (vkeys).

A note is a text ending in a newline, a blank line, and signature lines
``— <name> base64(key id || signature)``. Ed25519 (type 0x01) signs the text itself;
cosignature/v1 (type 0x04, see ``cosignature.py``) signs a timestamped message over it::

    signer = NoteSigner("example.com/log", key)
    note = sign_note("hello\\n", [signer])
    Note.from_bytes(note).verify([NoteVerifier.from_vkey(signer.vkey)])
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from verifier.errors import BadDataError
from verifier.keys import Ed25519PrivateKey, Ed25519PublicKey, raw_public_key

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Note",
    "NoteError",
    "NoteSigner",
    "NoteVerifier",
    "Signature",
    "key_id",
    "sign_note",
]

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
MAX_NOTE_BYTES = 64 * 1024
MAX_SIGNATURES = 64  # the spec asks verifiers to accept at least 16
_DASH = "\u2014 "


class NoteError(BadDataError):
    """A note, signature line or vkey is malformed, or no trusted signature verifies."""

    def __init__(self, reason: str) -> None:
        super().__init__("signed note", reason)


def key_id(name: str, alg: int, public: bytes) -> int:
    """SHA-256(name || 0x0A || alg || public key)[:4], big-endian."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()
    return int.from_bytes(digest[:4], "big")


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name) or not name.isprintable():
        raise NoteError(f"key name {name!r} is empty or has spaces, '+' or control characters")


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: int
    sig: bytes  # what follows the key id

    def line(self) -> str:
        raw = struct.pack(">I", self.key_id) + self.sig
        return f"{_DASH}{self.name} {base64.b64encode(raw).decode()}\n"

    @classmethod
    def from_line(cls, line: str) -> Signature:
        line = line.removesuffix("\n")
        if not line.startswith(_DASH):
            raise NoteError(f"signature line does not start with an em dash: {line[:40]!r}")
        name, sep, b64 = line[len(_DASH):].partition(" ")
        if not sep:
            raise NoteError(f"signature line has no signature: {line[:60]!r}")
        _check_name(name)
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise NoteError(f"signature of {name} is not base64") from e
        if len(raw) < 5:
            raise NoteError(f"signature of {name} is {len(raw)} bytes, too short")
        return cls(name, int.from_bytes(raw[:4], "big"), raw[4:])


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted key: name, algorithm (0x01 or 0x04) and the 32-byte Ed25519 key."""

    name: str
    alg: int
    public: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise NoteError(f"signature type 0x{self.alg:02x} of {self.name} is not supported")
        if len(self.public) != 32:
            raise NoteError(f"public key of {self.name} is {len(self.public)} bytes, not 32")

    @functools.cached_property
    def key_id(self) -> int:
        return key_id(self.name, self.alg, self.public)

    @property
    def vkey(self) -> str:
        """``<name>+<key id hex>+<base64(alg || key)>``."""
        blob = base64.b64encode(bytes([self.alg]) + self.public).decode()
        return f"{self.name}+{self.key_id:08x}+{blob}"

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        parts = vkey.strip().split("+", 2)  # the base64 may itself contain '+'
        if len(parts) != 3 or len(parts[1]) != 8:
            raise NoteError(f"vkey {vkey[:80]!r} is not <name>+<8 hex digits>+<base64>")
        name, hexid, b64 = parts
        try:
            kid = int(hexid, 16)
            blob = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error) as e:
            raise NoteError(f"vkey of {name} has a bad key id or key encoding") from e
        if not blob:
            raise NoteError(f"vkey of {name} has no key")
        verifier = cls(name, blob[0], blob[1:])
        if verifier.key_id != kid:
            raise NoteError(f"vkey of {name} names key id {hexid}, its key hashes to "
                            f"{verifier.key_id:08x}")
        return verifier

    @classmethod
    def ed25519(cls, name: str, key: Ed25519PublicKey, alg: int = ALG_ED25519) -> NoteVerifier:
        v = cls(name, alg, raw_public_key(key))
        v.__dict__["_key"] = key  # already decoded: loading a point costs a third of a verify
        return v

    @functools.cached_property
    def _key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public)

    def verify(self, text: bytes, sig: bytes) -> bool:
        """Does ``sig`` (the bytes after the key id) sign ``text`` under this key?"""
        if self.alg == ALG_ED25519:
            message = text
            if len(sig) != 64:
                return False
        else:
            if len(sig) != 72:
                return False
            timestamp = int.from_bytes(sig[:8], "big")
            if timestamp >= 1 << 63:
                return False
            message = cosigned_message(text, timestamp)
            sig = sig[8:]
        try:
            self._key.verify(sig, message)
        except InvalidSignature:
            return False
        return True


def cosigned_message(text: bytes, timestamp: int) -> bytes:
    """What a cosignature/v1 signs (c2sp.org/tlog-cosignature, "Ed25519 signed message")."""
    return b"cosignature/v1\ntime %d\n" % timestamp + text


class NoteSigner:
    """Signs note texts with an Ed25519 key as signature type 0x01 (or 0x04 cosignatures)."""

    def __init__(self, name: str, key: Ed25519PrivateKey, alg: int = ALG_ED25519) -> None:
        self.verifier = NoteVerifier.ed25519(name, key.public_key(), alg)
        self._key = key

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def vkey(self) -> str:
        return self.verifier.vkey

    def sign(self, text: bytes, timestamp: int = 0) -> Signature:
        if self.verifier.alg == ALG_ED25519:
            sig = self._key.sign(text)
        else:
            sig = struct.pack(">Q", timestamp) + self._key.sign(cosigned_message(text, timestamp))
        return Signature(self.name, self.verifier.key_id, sig)


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text does not end in a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("note has ASCII control characters other than newline")


def sign_note(text: str, signers: Sequence[NoteSigner], timestamp: int = 0) -> bytes:
    """The signed note of ``text`` by every signer."""
    _check_text(text)
    body = text.encode()
    lines = "".join(s.sign(body, timestamp).line() for s in signers)
    return body + b"\n" + lines.encode()


@dataclass(frozen=True)
class Note:
    text: str
    signatures: tuple[Signature, ...]

    @classmethod
    def from_bytes(cls, data: bytes) -> Note:
        if len(data) > MAX_NOTE_BYTES:
            raise NoteError(f"note is {len(data)} bytes, limit {MAX_NOTE_BYTES}")
        try:
            s = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NoteError("note is not UTF-8") from e
        _check_text(s)
        cut = s.rfind("\n\n")
        if cut < 0:
            raise NoteError("note has no blank line before its signatures")
        text, sigs = s[:cut + 1], s[cut + 2:]
        lines = sigs.split("\n")
        if lines[-1] != "":
            raise NoteError("last signature line does not end in a newline")
        lines = lines[:-1]
        if not lines:
            raise NoteError("note has no signature lines")
        if len(lines) > MAX_SIGNATURES:
            raise NoteError(f"note has {len(lines)} signatures, limit {MAX_SIGNATURES}")
        return cls(text, tuple(Signature.from_line(line) for line in lines))

    def to_bytes(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode()

    def verify(self, known: Sequence[NoteVerifier]) -> list[Signature]:
        """The signatures by ``known`` keys, all checked; signatures by unknown keys are
        ignored. ``NoteError`` if one by a known key fails or none is by a known key."""
        by_id = {(k.name, k.key_id): k for k in known}
        good: list[Signature] = []
        body = self.text.encode()
        for sig in self.signatures:
            k = by_id.get((sig.name, sig.key_id))
            if k is None:
                continue
            if not k.verify(body, sig.sig):
                raise NoteError(f"signature of {sig.name} (key id {sig.key_id:08x}) does not "
                                "verify: the note was modified or signed by another key")
            good.append(sig)
        if not good:
            names = ", ".join(sorted({k.name for k in known})) or "none"
            raise NoteError(f"no signature by a trusted key (trusted: {names})")
        return good

    def with_signatures(self, extra: Sequence[Signature]) -> Note:
        """This note with ``extra`` signatures appended (dropping exact duplicates and older
        signatures by the same key)."""
        keys = {(s.name, s.key_id) for s in extra}
        kept = [s for s in self.signatures if (s.name, s.key_id) not in keys]
        return Note(self.text, (*kept, *extra))
