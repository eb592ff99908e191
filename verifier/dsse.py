"""DSSE v1 envelopes (https://github.com/secure-systems-lab/dsse, ARCHITECTURE §4.2).

An envelope carries a payload and signatures over ``PAE(payloadType, payload)``. The signature is
checked over the payload bytes exactly as received; only then may the payload be parsed::

    env = sign(statement_bytes, private_key)
    Envelope.from_bytes(env.to_bytes()).verify(public_key)   # True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from verifier.errors import BadDataError
from verifier.keys import KeyId, keyid

__all__ = [
    "IN_TOTO_PAYLOAD_TYPE",
    "MAX_ENVELOPE_BYTES",
    "Envelope",
    "Signature",
    "pae",
    "sign",
    "strict_json_loads",
]

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_ENVELOPE_BYTES = 1024 * 1024
MAX_SIGNATURES = 8
_MAX_KEYID_CHARS = 256
_KEYID_HINT = re.compile(r"[0-9a-f]{0,256}")  # lowercase hex (a sha256 keyid is 64), or empty


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: ``DSSEv1 SP LEN(type) SP type SP LEN(body) SP body``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # built in C; a duplicate shows as a shorter dict
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise BadDataError("json", f"duplicate key {dup!r}")
    return out


def _reject_constant(name: str) -> Any:
    raise BadDataError("json", f"non-standard constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: the same Infinity the constant would be
        raise BadDataError("json", f"number {text[:32]} is out of range (Infinity)")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_surrogates(value: Any) -> None:
    """A ``\\ud800`` escape decodes to a lone surrogate, text that is not Unicode (and not
    UTF-8 when written back). Iterative: the value may be nested as deep as the parser allows."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                raise BadDataError("json", "a string holds a lone surrogate (\\ud800-\\udfff)")
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


# One decoder for every call: json.loads with hooks would build a new one each time. Its
# scanner is called directly: ``decode`` adds two regex passes for surrounding whitespace.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
)
_SCAN = _DECODER.scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__
_JSON_WS = " \t\n\r"


def strict_json_loads(data: bytes | str, what: str, *, scan_escapes: bool = True) -> Any:
    """Parse JSON refusing duplicate keys, NaN/Infinity (also as 1e999) and lone surrogates,
    as a ``BadDataError`` on failure.

    ``scan_escapes=False`` skips the search for ``\\u`` escapes (about 1 µs per KiB) where
    every string of the document is then checked against an ASCII grammar anyway (envelopes).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        start = 0
        if text[:1] in _JSON_WS:  # also true for "": the scanner then reports the empty input
            start = len(text) - len(text.lstrip(_JSON_WS))
        try:
            value, end = _SCAN(text, start)
        except StopIteration as e:
            raise json.JSONDecodeError("Expecting value", text, e.value) from None
        if end != len(text) and text[end:].strip(_JSON_WS):
            raise json.JSONDecodeError("Extra data", text, end)
        # Only a \\u escape makes a lone surrogate (UTF-8 cannot hold one); one-character
        # containment is a memchr, a thirtieth of searching for the two-character escape.
        if scan_escapes and "\\" in text and "\\u" in text:
            _reject_surrogates(value)
        return value
    except UnicodeDecodeError as e:
        raise BadDataError(what, "not UTF-8") from e
    except BadDataError as e:
        raise BadDataError(what, e.reason) from e
    except (ValueError, RecursionError) as e:
        raise BadDataError(what, f"not valid JSON: {e}") from e


def _b64decode(value: object, field: str, index: int | None = None) -> bytes:
    """Standard or URL-safe base64, padded or not (DSSE allows each); strictly nothing else.

    ``index`` numbers the signature a ``field`` belongs to, for the message only.
    """
    if not isinstance(value, str):
        raise BadDataError("envelope", f"{_field(field, index)} must be a base64 string")
    # binascii directly: half the cost of base64.b64decode on a payload.
    s = value
    if "-" in s or "_" in s:
        s = s.replace("-", "+").replace("_", "/")
    if len(s) % 4:
        s += "=" * (-len(s) % 4)
    try:
        return binascii.a2b_base64(s, strict_mode=True)
    except (binascii.Error, ValueError) as e:
        raise BadDataError("envelope", f"{_field(field, index)} is not valid base64") from e


def _field(field: str, index: int | None) -> str:
    return field if index is None else f"{field} {index} sig"


@dataclass(frozen=True, slots=True)
class Signature:
    sig: bytes
    keyid: str = ""  # only a hint: a signature counts for whichever trusted key verifies it


@dataclass(frozen=True, slots=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        if self.payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise BadDataError(
                "envelope", f"payloadType is {self.payload_type!r}, expected {IN_TOTO_PAYLOAD_TYPE}"
            )
        if not self.signatures:
            raise BadDataError("envelope", "no signatures")
        if len(self.signatures) > MAX_SIGNATURES:
            raise BadDataError(
                "envelope", f"{len(self.signatures)} signatures, limit {MAX_SIGNATURES}"
            )
        for i, s in enumerate(self.signatures):  # parsed or built in Python alike
            if not _KEYID_HINT.fullmatch(s.keyid):
                raise BadDataError(
                    "envelope",
                    f"signature {i} keyid is not lowercase hex of at most {_MAX_KEYID_CHARS}"
                    " characters",
                )

    @classmethod
    def from_dict(cls, d: object) -> Envelope:
        if not isinstance(d, dict):
            raise BadDataError("envelope", "top level is not a JSON object")
        payload_type = d.get("payloadType")
        if not isinstance(payload_type, str):
            raise BadDataError("envelope", "payloadType missing or not a string")
        payload = _b64decode(d.get("payload"), "payload")
        raw_sigs = d.get("signatures")
        if not isinstance(raw_sigs, list):
            raise BadDataError("envelope", "signatures missing or not a list")
        if len(raw_sigs) > MAX_SIGNATURES:
            raise BadDataError("envelope", f"{len(raw_sigs)} signatures, limit {MAX_SIGNATURES}")
        sigs = []
        for i, s in enumerate(raw_sigs):
            if not isinstance(s, dict):
                raise BadDataError("envelope", f"signature {i} is not an object")
            kid = s.get("keyid", "")
            if not isinstance(kid, str):  # its value is checked by __post_init__
                raise BadDataError("envelope", f"signature {i} keyid is not a string")
            sigs.append(Signature(_b64decode(s.get("sig"), "signature", i), kid))
        return cls(payload_type, payload, tuple(sigs))

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """Parse one serialized envelope, refusing anything over ``MAX_ENVELOPE_BYTES``."""
        if len(data) > MAX_ENVELOPE_BYTES:
            raise BadDataError(
                "envelope", f"{len(data)} bytes, limit {MAX_ENVELOPE_BYTES} bytes"
            )
        # Every string an envelope keeps is checked against an ASCII grammar (the payload type,
        # base64, a hex keyid), so a lone surrogate cannot pass: no need to scan for escapes.
        return cls.from_dict(strict_json_loads(data, "envelope", scan_escapes=False))

    def to_dict(self) -> dict[str, Any]:
        return {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }

    def to_bytes(self) -> bytes:
        """Canonical serialization: sorted keys, no spaces. ``digest`` is computed over it."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode("ascii")

    def digest(self) -> str:
        """Lowercase hex sha256 of the canonical serialization; what a revocation names."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def payload_digest(self) -> str:
        """Lowercase hex sha256 of the signed payload bytes: what a revocation (v2) names.

        Unlike ``digest`` it ignores everything outside the signature's reach (keyid hints,
        extra signatures, the base64 spelling), so it names the statement itself.
        """
        return hashlib.sha256(self.payload).hexdigest()

    def as_signed(self, sig: Signature, kid: KeyId) -> Envelope:
        """This envelope as its signer published it: only ``sig``, with ``kid`` as its hint."""
        if len(self.signatures) == 1 and self.signatures[0] == Signature(sig.sig, kid):
            return self
        return Envelope(self.payload_type, self.payload, (Signature(sig.sig, kid),))

    def verify(self, key: Ed25519PublicKey, kid: KeyId | None = None) -> bool:
        """True when some signature verifies under ``key`` over PAE(payloadType, payload).

        A signature whose keyid hint names ``kid`` is tried first; the hint never decides.
        """
        return self.verified_signature(key, kid) is not None

    def verified_signature(
        self, key: Ed25519PublicKey, kid: KeyId | None = None
    ) -> Signature | None:
        """The first signature that verifies under ``key`` (see ``verify``), or None."""
        message = pae(self.payload_type, self.payload)
        if len(self.signatures) == 1:  # the usual case: nothing to order
            ordered: Sequence[Signature] = self.signatures
        else:
            kid = kid if kid is not None else keyid(key)
            ordered = sorted(self.signatures, key=lambda s: s.keyid != kid)
        for s in ordered:
            try:
                key.verify(s.sig, message)
            except InvalidSignature:
                continue
            return s
        return None

    def verify_any(self, keys: Mapping[KeyId, Ed25519PublicKey]) -> KeyId | None:
        """The first trusted keyid whose key verifies a signature, or None."""
        hinted = [s.keyid for s in self.signatures if s.keyid in keys]
        for kid in [*hinted, *(k for k in keys if k not in hinted)]:
            if self.verify(keys[KeyId(kid)], KeyId(kid)):
                return KeyId(kid)
        return None


def sign(
    payload: bytes,
    keys: Ed25519PrivateKey | Sequence[Ed25519PrivateKey],
    payload_type: str = IN_TOTO_PAYLOAD_TYPE,
) -> Envelope:
    """Sign ``payload`` with one or more keys; each signature carries its keyid hint."""
    key_list = [keys] if isinstance(keys, Ed25519PrivateKey) else list(keys)
    message = pae(payload_type, payload)
    sigs = tuple(Signature(sig=k.sign(message), keyid=keyid(k.public_key())) for k in key_list)
    return Envelope(payload_type=payload_type, payload=payload, signatures=sigs)
