"""Inclusion proofs of envelopes in cosigned checkpoints, and the policy that demands them.

The proof object is shaped after the Sigstore bundle's ``inclusionProof`` (docs/formats.md):
``{"logIndex", "treeSize", "rootHash", "hashes", "checkpoint": {"envelope"}}``; the checkpoint
is the node's signed note with witness cosignatures. Pure: no I/O, no clock::

    proof = InclusionProof.from_dict(answer["proofs"][envelope_digest])
    cp = verify_envelope_proof(envelope_bytes, proof, rebuilder_key, policy.log)
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verifier.errors import BadDataError, ConfigError
from verifier.keys import Ed25519PublicKey
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.merkle import HASH_SIZE, MAX_PROOF_HASHES, leaf_hash, verify_inclusion
from verifier.tlog.note import ALG_COSIGNATURE_V1, Note, NoteError, NoteVerifier

__all__ = ["InclusionProof", "LogPolicy", "proofs_by_digest", "verify_envelope_proof"]

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
MAX_WITNESSES = 64


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise BadDataError("inclusion proof", f"{what} is not a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadDataError("inclusion proof", f"{what} is not base64") from e
    if len(raw) != HASH_SIZE:
        raise BadDataError("inclusion proof", f"{what} is {len(raw)} bytes, not {HASH_SIZE}")
    return raw


def _decimal(value: object, what: str) -> int:
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise BadDataError("inclusion proof", f"{what} is not a decimal string")
    return int(value)


@dataclass(frozen=True)
class InclusionProof:
    log_index: int
    tree_size: int
    root_hash: bytes
    hashes: tuple[bytes, ...]
    checkpoint: bytes  # the signed note, cosignatures included

    @classmethod
    def from_dict(cls, d: object) -> InclusionProof:
        if not isinstance(d, dict) or set(d) != {"logIndex", "treeSize", "rootHash", "hashes",
                                                  "checkpoint"}:
            raise BadDataError("inclusion proof", "expected exactly logIndex, treeSize, "
                               "rootHash, hashes, checkpoint")
        hashes = d["hashes"]
        if not isinstance(hashes, list) or len(hashes) > MAX_PROOF_HASHES:
            raise BadDataError("inclusion proof", f"hashes is not a list of at most "
                               f"{MAX_PROOF_HASHES}")
        cp = d["checkpoint"]
        if not isinstance(cp, dict) or set(cp) != {"envelope"} or not isinstance(
                cp["envelope"], str):
            raise BadDataError("inclusion proof", 'checkpoint is not {"envelope": "<note>"}')
        return cls(
            log_index=_decimal(d["logIndex"], "logIndex"),
            tree_size=_decimal(d["treeSize"], "treeSize"),
            root_hash=_b64(d["rootHash"], "rootHash"),
            hashes=tuple(_b64(h, f"hashes[{i}]") for i, h in enumerate(hashes)),
            checkpoint=cp["envelope"].encode(),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "logIndex": str(self.log_index),
            "treeSize": str(self.tree_size),
            "rootHash": base64.b64encode(self.root_hash).decode(),
            "hashes": [base64.b64encode(h).decode() for h in self.hashes],
            "checkpoint": {"envelope": self.checkpoint.decode()},
        }


@dataclass(frozen=True)
class LogPolicy:
    """``[log]``, ``[[witness]]`` and ``witness_threshold`` of the verifier policy."""

    require_inclusion: bool = False
    witnesses: tuple[NoteVerifier, ...] = ()
    witness_threshold: int = 0
    state_file: Path | None = None  # None: the default location (verifier.tlog.state)


    def __post_init__(self) -> None:
        if isinstance(self.witness_threshold, bool) or not isinstance(
                self.witness_threshold, int) or self.witness_threshold < 0:
            raise ConfigError("policy: witness_threshold must be a non-negative integer")
        if self.witness_threshold > len(self.witnesses):
            raise ConfigError(f"policy: witness_threshold {self.witness_threshold} is above "
                              f"the {len(self.witnesses)} [[witness]] entries")
        names = [w.name for w in self.witnesses]
        if len(set(names)) != len(names):
            raise ConfigError("policy: a [[witness]] name is listed twice")

    @classmethod
    def from_dict(cls, log: object, witnesses: object, threshold: object,
                  base_dir: Path) -> LogPolicy:
        if not isinstance(log, dict) or set(log) - {"require_inclusion", "state_file"}:
            raise ConfigError("policy: [log] takes require_inclusion and state_file only")
        req = log.get("require_inclusion", False)
        if not isinstance(req, bool):
            raise ConfigError("policy: [log] require_inclusion must be true or false")
        state = log.get("state_file")
        if state is not None and not isinstance(state, str):
            raise ConfigError("policy: [log] state_file must be a path")
        if not isinstance(witnesses, list) or len(witnesses) > MAX_WITNESSES:
            raise ConfigError(f"policy: [[witness]] must be at most {MAX_WITNESSES} tables")
        keys: list[NoteVerifier] = []
        for i, w in enumerate(witnesses):
            if not isinstance(w, dict) or set(w) != {"name", "key"}:
                raise ConfigError(f"policy: witness[{i}] needs exactly name and key")
            try:
                v = NoteVerifier.from_vkey(str(w["key"]))
            except NoteError as e:
                raise ConfigError(f"policy: witness[{i}] key: {e.reason}") from e
            if v.alg != ALG_COSIGNATURE_V1 or v.name != w["name"]:
                raise ConfigError(f"policy: witness[{i}] key must be a cosignature/v1 (type "
                                  f"0x04) vkey named {w['name']!r}")
            keys.append(v)
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise ConfigError("policy: witness_threshold must be an integer")
        path = None
        if state is not None:
            p = Path(state)
            path = p if p.is_absolute() else base_dir / p
        return cls(req, tuple(keys), threshold, path)


def verify_envelope_proof(envelope: bytes, proof: InclusionProof, key: Ed25519PublicKey,
                          log: LogPolicy) -> tuple[Checkpoint, Note]:
    """The checkpoint ``proof`` puts ``envelope`` in, once verified: signed by ``key`` as the
    log key of its origin, cosigned by ``log.witness_threshold`` trusted witnesses, and the
    audit path leading from the envelope's leaf hash to its root. ``BadDataError`` otherwise."""
    note = Note.from_bytes(proof.checkpoint)
    cp = Checkpoint.from_text(note.text)
    try:
        note.verify([NoteVerifier.ed25519(cp.origin, key)])
    except NoteError as e:
        raise BadDataError("inclusion proof", f"checkpoint of {cp.origin} is not signed by "
                           f"the rebuilder's key: {e.reason}") from e
    cosigned = []
    for w in log.witnesses:
        try:
            note.verify([w])
            cosigned.append(w.name)
        except NoteError as e:
            if "does not verify" in e.reason:
                raise BadDataError("inclusion proof", f"cosignature of {w.name}: "
                                   f"{e.reason}") from e
    if len(cosigned) < log.witness_threshold:
        raise BadDataError("inclusion proof", f"checkpoint {cp.size} of {cp.origin} is "
                           f"cosigned by {len(cosigned)} trusted witness(es) "
                           f"({', '.join(cosigned) or 'none'}), "
                           f"policy needs {log.witness_threshold}")
    if (proof.tree_size, proof.root_hash) != (cp.size, cp.root):
        raise BadDataError("inclusion proof", "treeSize/rootHash differ from the checkpoint's")
    verify_inclusion(proof.log_index, cp.size, leaf_hash(envelope), proof.hashes, cp.root)
    return cp, note


def proofs_by_digest(items: Mapping[str, object]) -> dict[str, InclusionProof | BadDataError]:
    """Parse a ``"proofs"`` object of an attestation answer; bad entries become errors."""
    out: dict[str, InclusionProof | BadDataError] = {}
    for digest, p in items.items():
        if p is None:
            continue
        try:
            out[digest] = InclusionProof.from_dict(p)
        except BadDataError as e:
            out[digest] = e
    return out


