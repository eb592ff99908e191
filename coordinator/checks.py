"""Checks on what rebuilders send, before anything is stored: bytes in, a verdict out, no I/O.

``check_envelope`` follows ARCHITECTURE §4.2 and §4.6 in order: size cap, DSSE parse, signature
under the key of the rebuilder *named by the topic or URL*, and only then the statement::

    result = check_envelope(message.payload, config.rebuilder("rb-alpha"))
    if isinstance(result, Dropped):
        metrics.dropped[result.reason] += 1

Everything returned is plain data (picklable), so checking can run in a worker process.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

from verifier.dsse import Envelope, strict_json_loads
from verifier.errors import BadDataError
from verifier.keys import Ed25519PublicKey, KeyId
from verifier.statement import RebuildStatement, RevocationStatement, parse_statement
from verifier.verdicts import JobVerdict

__all__ = [
    "DROP_REASONS",
    "Accepted",
    "DropReason",
    "Dropped",
    "OutputRow",
    "Packed",
    "Status",
    "check_batch",
    "check_envelope",
    "check_envelope_dict",
    "check_message",
    "init_worker",
    "pack",
    "parse_status",
    "parse_status_body",
    "unpack",
]

DropReason = Literal[
    "oversized",
    "malformed",
    "unknown-rebuilder",
    "wrong-key",
    "bad-signature",
    "bad-statement",
]
DROP_REASONS: tuple[DropReason, ...] = (
    "oversized",
    "malformed",
    "unknown-rebuilder",
    "wrong-key",
    "bad-signature",
    "bad-statement",
)

Kind = Literal["rebuild", "failure", "revocation"]


@dataclass(frozen=True, slots=True)
class OutputRow:
    name: str
    verdict: str
    rebuilt: str | None
    buildinfo: str | None
    repository: str | None
    report_url: str | None


@dataclass(frozen=True, slots=True)
class Accepted:
    """A verified envelope and the fields the coordinator indexes it by."""

    rebuilder: str
    digest: str  # hex sha256 of the canonical serialization (Envelope.digest()) of ``body``
    body: bytes  # the envelope as signed (its one verified signature), canonical; stored, served
    kind: Kind
    source: str | None = None
    version: str | None = None
    architecture: str | None = None
    # the job's class (verifier/verdicts.py); None for a revocation
    verdict: JobVerdict | None = None
    finished: str | None = None  # RFC 3339
    invocation: str | None = None  # runDetails.metadata.invocationId
    subjects: tuple[tuple[str, str], ...] = ()  # (name, hex sha256)
    outputs: tuple[OutputRow, ...] = ()
    failure: str | None = None
    revoked: str | None = None  # for a revocation: the revoked statement's payload sha256 (v2)
    reason: str | None = None  # for a revocation
    repository: str | None = None  # externalParameters.repository: "<url> <suite>"
    payload_digest: str = ""  # hex sha256 of the signed payload: one row per (rebuilder, this)
    legacy: bool = False  # a v1 revocation: ``revoked`` names an as-signed envelope digest
    # the package's ecosystem (statement ``package.ecosystem``); a revocation names none
    ecosystem: str = "debian"


@dataclass(frozen=True, slots=True)
class Dropped:
    rebuilder: str
    reason: DropReason
    detail: str


def _verify(
    env: Envelope, rebuilder_id: str, key: Ed25519PublicKey, kid: KeyId
) -> Envelope | Dropped:
    """The envelope as signed (only the signature that verifies, ``kid`` as its hint), or why
    not: extra signatures and rewritten hints are dropped before anything is stored."""
    sig = env.verified_signature(key, kid)
    if sig is not None:
        return env.as_signed(sig, kid)
    # The keyid is only a hint, so it never makes a signature valid; it does tell an operator
    # whether someone signed with another key or modified a payload signed with the right one.
    if any(s.keyid == kid for s in env.signatures):
        return Dropped(
            rebuilder_id,
            "bad-signature",
            f"signature of {rebuilder_id} does not verify under keyid {kid[:12]}…: "
            "payload was modified or the signature is corrupt",
        )
    hints = ", ".join(s.keyid[:12] or "(none)" for s in env.signatures)
    return Dropped(
        rebuilder_id,
        "wrong-key",
        f"no signature verifies under {rebuilder_id}'s keyid {kid[:12]}… (signed by {hints})",
    )


def _summarize(rebuilder_id: str, env: Envelope) -> Accepted | Dropped:
    try:
        statement = parse_statement(env.payload)
    except BadDataError as e:
        return Dropped(rebuilder_id, "bad-statement", str(e))
    body = env.to_bytes()
    digest = hashlib.sha256(body).hexdigest()  # Envelope.digest(), without serializing twice
    payload_digest = env.payload_digest()
    if isinstance(statement, RevocationStatement):
        return Accepted(
            rebuilder=rebuilder_id,
            digest=digest,
            body=body,
            kind="revocation",
            finished=_rfc3339(statement.revoked_on),
            revoked=statement.revoked,
            reason=statement.reason,
            payload_digest=payload_digest,
            legacy=statement.legacy,
        )
    assert isinstance(statement, RebuildStatement)
    verdict = statement.verdict  # failed | tampered | unreproducible | reproduced
    pkg = statement.package
    return Accepted(
        rebuilder=rebuilder_id,
        digest=digest,
        body=body,
        kind="failure" if statement.failed else "rebuild",
        ecosystem=pkg.ecosystem,
        source=pkg.name,
        version=pkg.version,
        architecture=pkg.architecture,
        verdict=verdict,
        finished=_rfc3339(statement.finished_on),
        invocation=statement.invocation_id,
        subjects=tuple((s.name, s.sha256) for s in statement.subjects),
        outputs=tuple(
            OutputRow(v.name, v.verdict, v.rebuilt, v.buildinfo, v.repository, v.report_url)
            for v in statement.verdicts
        ),
        failure=statement.failure,
        repository=statement.repository,
        payload_digest=payload_digest,
    )


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_envelope(
    data: bytes,
    rebuilder_id: str,
    key: Ed25519PublicKey | None,
    kid: KeyId | None,
    max_bytes: int = 1024 * 1024,
) -> Accepted | Dropped:
    """Verify one serialized envelope said to come from ``rebuilder_id`` (key None: unknown)."""
    if key is None or kid is None:
        return Dropped(rebuilder_id, "unknown-rebuilder", f"{rebuilder_id!r} is not registered")
    if len(data) > max_bytes:
        return Dropped(rebuilder_id, "oversized", f"{len(data)} bytes, limit {max_bytes}")
    try:
        env = Envelope.from_bytes(data)
    except BadDataError as e:
        return Dropped(rebuilder_id, "malformed", str(e))
    signed = _verify(env, rebuilder_id, key, kid)
    return signed if isinstance(signed, Dropped) else _summarize(rebuilder_id, signed)


def check_envelope_dict(
    obj: object,
    rebuilder_id: str,
    key: Ed25519PublicKey,
    kid: KeyId,
    max_bytes: int = 1024 * 1024,
) -> Accepted | Dropped:
    """As ``check_envelope`` for an envelope already parsed from a larger JSON document."""
    try:
        env = Envelope.from_dict(obj)
    except BadDataError as e:
        return Dropped(rebuilder_id, "malformed", str(e))
    if len(env.payload) > max_bytes:
        return Dropped(rebuilder_id, "oversized", f"payload over {max_bytes} bytes")
    signed = _verify(env, rebuilder_id, key, kid)
    return signed if isinstance(signed, Dropped) else _summarize(rebuilder_id, signed)


Keys = dict[str, tuple[Ed25519PublicKey, KeyId]]
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def check_message(
    rebuilder_id: str, payload: bytes, keys: Keys, max_bytes: int = 1024 * 1024
) -> Accepted | Dropped:
    """Check one MQTT message for the rebuilder its topic names (``keys``: the registered)."""
    key, kid = keys.get(rebuilder_id, (None, None))
    if key is None and not _ID.fullmatch(rebuilder_id):
        # The topic level is attacker-chosen text: keep it printable and short in logs.
        rebuilder_id = rebuilder_id.encode("unicode_escape").decode("ascii")[:80]
    return check_envelope(payload, rebuilder_id, key, kid, max_bytes)


# ---- checking in worker processes ----------------------------------------------------------
# Ed25519 verification holds the GIL, so on a multi-core machine the coordinator checks
# batches in a process pool; each worker loads the registered public keys once.

_worker_keys: Keys = {}
_worker_max_bytes = 1024 * 1024


def init_worker(pems: dict[str, str], max_bytes: int) -> None:
    from verifier.keys import keyid, load_public_key

    global _worker_max_bytes
    _worker_keys.clear()
    for rid, pem in pems.items():
        key = load_public_key(pem)
        _worker_keys[rid] = (key, keyid(key))
    _worker_max_bytes = max_bytes


# What a worker sends back for an accepted envelope: its fields as a plain tuple (a frozen
# slotted dataclass pickles through Python code, several times slower), without the body when
# it is the payload as received (the usual case: nodes publish the canonical serialization),
# which the coordinator already has.
Packed = tuple[Any, ...]
_FIELDS = tuple(f.name for f in fields(Accepted))
_BODY = _FIELDS.index("body")
_OUTPUTS = _FIELDS.index("outputs")


def pack(result: Accepted | Dropped, payload: bytes) -> Packed | Dropped:
    if isinstance(result, Dropped):
        return result
    values = [getattr(result, f) for f in _FIELDS]
    if result.body == payload:
        values[_BODY] = None
    values[_OUTPUTS] = tuple(map(_output_tuple, result.outputs))
    return tuple(values)


def unpack(packed: Packed | Dropped, payload: bytes) -> Accepted | Dropped:
    if isinstance(packed, Dropped):
        return packed
    values = list(packed)
    if values[_BODY] is None:
        values[_BODY] = payload
    values[_OUTPUTS] = tuple(OutputRow(*o) for o in values[_OUTPUTS])
    return Accepted(*values)


def _output_tuple(o: OutputRow) -> tuple[str | None, ...]:
    return (o.name, o.verdict, o.rebuilt, o.buildinfo, o.repository, o.report_url)


def check_batch(items: list[tuple[str, bytes]]) -> list[Packed | Dropped]:
    """``check_message`` over a batch, in a worker set up by ``init_worker``; the results are
    ``pack``ed (``unpack`` them with the same payloads)."""
    return [
        pack(check_message(rid, payload, _worker_keys, _worker_max_bytes), payload)
        for rid, payload in items
    ]


@dataclass(frozen=True, slots=True)
class Status:
    """A node's retained status message (docs/api.md, MQTT)."""

    state: Literal["online", "offline"]
    queue: int | None = None
    running: int | None = None
    version: str | None = None
    time: datetime | None = None
    session: str | None = None  # the node's MQTT connection this status belongs to
    will: bool = False  # the offline status the node left with the broker as its last will


_VERSION = re.compile(r"[A-Za-z0-9.+~_-]{1,64}")


def _count(value: object, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 10**9:
        raise BadDataError("status", f"{what} must be a non-negative integer")
    return value


_SESSION = re.compile(r"[0-9a-f]{16,64}")


def parse_status(data: bytes, max_bytes: int = 4096) -> Status:
    """Validate an (unsigned) status body; raises ``BadDataError`` naming what was wrong."""
    if len(data) > max_bytes:
        raise BadDataError("status", f"{len(data)} bytes, limit {max_bytes}")
    return parse_status_body(strict_json_loads(data, "status"))


def parse_status_body(obj: object) -> Status:
    """Validate a status body already parsed (from a signed status, ``verifier.status``)."""
    if not isinstance(obj, dict):
        raise BadDataError("status", "not a JSON object")
    state = obj.get("state")
    if state not in ("online", "offline"):
        raise BadDataError("status", f"state {state!r} is not 'online' or 'offline'")
    version = obj.get("version")
    if version is not None and (not isinstance(version, str) or not _VERSION.fullmatch(version)):
        raise BadDataError("status", "version must be a short version string")
    when: datetime | None = None
    raw_time = obj.get("time")
    if raw_time is not None:
        if not isinstance(raw_time, str) or len(raw_time) > 64:
            raise BadDataError("status", "time must be an RFC 3339 string")
        try:
            when = datetime.fromisoformat(raw_time.replace("Z", "+00:00"))
        except ValueError as e:
            raise BadDataError("status", f"time {raw_time!r} is not RFC 3339") from e
        if when.tzinfo is None:
            raise BadDataError("status", "time has no time zone")
    session = obj.get("session")
    if session is not None and (not isinstance(session, str) or not _SESSION.fullmatch(session)):
        raise BadDataError("status", "session must be 16-64 lowercase hex digits")
    will = obj.get("will", False)
    if not isinstance(will, bool) or (will and state != "offline"):
        raise BadDataError("status", "will must be a boolean, true only when offline")
    return Status(
        state=state,
        queue=_count(obj.get("queue"), "queue"),
        running=_count(obj.get("running"), "running"),
        version=version,
        time=when,
        session=session,
        will=will,
    )
