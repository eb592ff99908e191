"""Transparency logs after the C2SP specifications: RFC 6962 Merkle trees, signed notes,
checkpoints, cosignatures, tiles, and the inclusion proofs verifiers check (ARCHITECTURE §4.9).

Everything here is pure (bytes and values in, values out); the node's log (``rebuilder.tlog``)
and the coordinator's witness (``coordinator.witness``) do the I/O.
"""

from verifier.tlog.checkpoint import Checkpoint, CheckpointError
from verifier.tlog.merkle import (
    EMPTY_ROOT,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)
from verifier.tlog.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    Note,
    NoteError,
    NoteSigner,
    NoteVerifier,
    Signature,
    sign_note,
)

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "EMPTY_ROOT",
    "Checkpoint",
    "CheckpointError",
    "Note",
    "NoteError",
    "NoteSigner",
    "NoteVerifier",
    "ProofError",
    "Signature",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "sign_note",
    "tree_hash",
    "verify_consistency",
    "verify_inclusion",
]
