"""Ed25519 signing keys and key ids (ARCHITECTURE §4.1).

Private keys are PKCS#8 PEM files of mode 0600; public keys are SubjectPublicKeyInfo PEM.
The keyid is the lowercase hex sha256 of the 32 raw public-key bytes::

    key = generate_private_key()
    save_private_key(key, Path("signing.pem"))
    keyid(key.public_key())  # '3f2a...'
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NewType

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from verifier.errors import BadDataError

KeyId = NewType("KeyId", str)

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "KeyId",
    "generate_private_key",
    "keyid",
    "load_private_key",
    "load_public_key",
    "private_key_pem",
    "public_key_pem",
    "raw_public_key",
    "save_private_key",
]

MAX_PEM_BYTES = 16 * 1024


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid(key: Ed25519PublicKey) -> KeyId:
    """Lowercase hex sha256 of the 32 raw public-key bytes."""
    return KeyId(hashlib.sha256(raw_public_key(key)).hexdigest())


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write ``key`` to ``path`` with mode 0600; refuse to overwrite an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never replace a key that exists; the mode is set at creation, never widened.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(key))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise BadDataError("private key", f"{path} is not an unencrypted PKCS#8 PEM key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise BadDataError("private key", f"{path} holds a {type(key).__name__}, not Ed25519")
    return key


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    """Parse a SubjectPublicKeyInfo PEM Ed25519 public key."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    if len(data) > MAX_PEM_BYTES:
        raise BadDataError("public key", f"PEM is {len(data)} bytes, limit {MAX_PEM_BYTES}")
    blocks = data.count(b"-----BEGIN ")
    if blocks > 1:  # the parser would silently keep the first: say which key is meant
        raise BadDataError("public key", f"PEM holds {blocks} blocks; give exactly one key")
    try:
        key = serialization.load_pem_public_key(data.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise BadDataError("public key", "not a SubjectPublicKeyInfo PEM key") from e
    if not isinstance(key, Ed25519PublicKey):
        raise BadDataError("public key", f"a {type(key).__name__}, not Ed25519")
    return key
