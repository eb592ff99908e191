"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification. Pure: no I/O.

The tree's hashes are kept in the "stored hash" order of Go's ``sumdb/tlog`` (each leaf hash,
then the hashes of the complete subtrees it completes), so a log appends with O(1) writes and
reads any complete subtree hash by index::

    hashes: list[bytes] = []
    for i, entry in enumerate(entries):
        hashes += stored_hashes_for_leaf(i, leaf_hash(entry), lambda ix: [hashes[j] for j in ix])
    root = tree_hash(len(entries), lambda ix: [hashes[j] for j in ix])
    verify_inclusion(2, len(entries), leaf_hash(entries[2]), inclusion_proof(2, ...), root)
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from verifier.errors import BadDataError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "HashReader",
    "ProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion",
    "stored_hash_count",
    "stored_hash_index",
    "stored_hashes_for_leaf",
    "subtree_hash_indexes",
    "tree_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
MAX_PROOF_HASHES = 63  # a tree of < 2**63 leaves never needs more (tlog-witness's own limit)
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) (RFC 6962 §2.1)

# Reads stored hashes by stored-hash index; returns them in the order asked.
HashReader = Callable[[Sequence[int]], Sequence[bytes]]


class ProofError(BadDataError):
    """An inclusion or consistency proof does not verify (or is malformed)."""

    def __init__(self, reason: str) -> None:
        super().__init__("merkle proof", reason)


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


# -- stored hashes ---------------------------------------------------------------------------


def stored_hash_index(level: int, n: int) -> int:
    """Where the ``n``-th hash of ``level`` (the subtree of leaves [n*2**level, (n+1)*2**level))
    sits in the stored-hash order."""
    # Level L's n-th hash comes right after level L-1's (2n+1)-th hash; go down to level 0,
    # where leaf n is preceded by n + n/2 + n/4 + ... hashes, then add back the levels.
    for _ in range(level):
        n = 2 * n + 1
    i = 0
    while n > 0:
        i += n
        n >>= 1
    return i + level


def stored_hash_count(size: int) -> int:
    """How many stored hashes a tree of ``size`` leaves has."""
    if size == 0:
        return 0
    count = stored_hash_index(0, size - 1) + 1
    n = size - 1
    while n & 1:  # the subtrees the last leaf completes
        count += 1
        n >>= 1
    return count


def stored_hashes_for_leaf(n: int, leaf: bytes, read: HashReader) -> list[bytes]:
    """The hashes to store after leaf ``n``: the leaf hash, then one per subtree it completes.

    ``read`` is asked for the left siblings (roots of the complete subtrees to the left).
    """
    m = ((n + 1) & -(n + 1)).bit_length() - 1  # trailing one bits of n
    indexes = [stored_hash_index(i, (n >> i) - 1) for i in range(m)]
    old = list(read(indexes)) if m else []
    out = [leaf]
    h = leaf
    for i in range(m):
        h = node_hash(old[i], h)
        out.append(h)
    return out


def _split(size: int) -> int:
    """The largest power of two strictly smaller than ``size`` (size >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def subtree_hash_indexes(lo: int, hi: int) -> list[int]:
    """Stored indexes of the complete subtrees that make up leaves [lo, hi), left to right.

    ``lo`` must be aligned to the largest of them (true of every subtree RFC 6962 names).
    """
    out: list[int] = []
    while lo < hi:
        k = 1 << ((hi - lo).bit_length() - 1)  # largest power of two <= hi - lo
        level = k.bit_length() - 1
        if lo & (k - 1):
            raise ValueError(f"subtree [{lo}, {hi}) is not aligned")
        out.append(stored_hash_index(level, lo >> level))
        lo += k
    return out


def _fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of consecutive complete subtrees of strictly decreasing size, left to right."""
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = node_hash(left, h)
    return h


def _resolve(ranges: Sequence[tuple[int, int]], read: HashReader) -> list[bytes]:
    """MTH(D[lo:hi]) of each range, with one call to ``read``."""
    groups = [subtree_hash_indexes(lo, hi) for lo, hi in ranges]
    flat = list(read([i for g in groups for i in g]))
    out: list[bytes] = []
    pos = 0
    for g in groups:
        out.append(_fold(flat[pos:pos + len(g)]))
        pos += len(g)
    return out


def tree_hash(size: int, read: HashReader) -> bytes:
    """MTH(D[0:size]) from the stored hashes."""
    if size == 0:
        return EMPTY_ROOT
    return _resolve([(0, size)], read)[0]


# -- proofs (RFC 6962 §2.1.1, §2.1.2) ----------------------------------------------------------


def _path(m: int, lo: int, hi: int) -> list[tuple[int, int]]:
    # PATH(m, D[lo:hi]); the ranges whose hashes make up the audit path, leaf side first.
    out: list[tuple[int, int]] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo = lo + k
    out.reverse()
    return out


def inclusion_proof(index: int, size: int, read: HashReader) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    return _resolve(_path(index, 0, size), read)


def _subproof(m: int, lo: int, hi: int, whole: bool) -> list[tuple[int, int]]:
    # SUBPROOF(m, D[lo:hi], b) of RFC 6962 §2.1.2; emitted in the RFC's order.
    if m == hi - lo:
        return [] if whole else [(lo, hi)]
    k = _split(hi - lo)
    if m <= k:
        return [*_subproof(m, lo, lo + k, whole), (lo + k, hi)]
    return [*_subproof(m - k, lo + k, hi, False), (lo, lo + k)]


def consistency_proof(old: int, new: int, read: HashReader) -> list[bytes]:
    """The consistency proof from the tree of ``old`` leaves to that of ``new`` (empty when
    ``old`` is 0 or equals ``new``)."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    if old == 0 or old == new:
        return []
    return _resolve(_subproof(old, 0, new, True), read)


# -- verification (RFC 9162 §2.1.3.2, §2.1.4.2) ------------------------------------------------


def _check_hashes(proof: Sequence[bytes]) -> None:
    if len(proof) > MAX_PROOF_HASHES:
        raise ProofError(f"proof has {len(proof)} hashes, at most {MAX_PROOF_HASHES} possible")
    for i, p in enumerate(proof):
        if len(p) != HASH_SIZE:
            raise ProofError(f"proof hash {i} is {len(p)} bytes, expected {HASH_SIZE}")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2, steps 1-5 without the final
    comparison); ``ProofError`` when the proof has the wrong shape for (index, size)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    if len(leaf) != HASH_SIZE:
        raise ProofError(f"leaf hash is {len(leaf)} bytes, expected {HASH_SIZE}")
    _check_hashes(proof)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"proof is longer than a path in a tree of size {size}")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"proof is shorter than a path in a tree of size {size}")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes],
                     root: bytes) -> None:
    """Raise ``ProofError`` unless ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree
    of ``size`` leaves whose root is ``root``."""
    got = root_from_inclusion(index, size, leaf, proof)
    if not hmac.compare_digest(got, root):
        raise ProofError(
            f"inclusion proof of leaf {index} leads to root {got.hex()[:16]}..., not the "
            f"checkpoint's {root.hex()[:16]}... of size {size}"
        )


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Raise ``ProofError`` unless the tree (``new``, ``new_root``) extends (``old``,
    ``old_root``) according to ``proof`` (RFC 9162 §2.1.4.2)."""
    if not 0 <= old <= new:
        raise ProofError(f"tree size went from {old} down to {new}")
    _check_hashes(proof)
    if old == new:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise ProofError(f"two different roots for the same tree size {old}")
        return
    if old == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError(f"empty consistency proof from size {old} to {new}")
    path = list(proof)
    if old & (old - 1) == 0:  # step 2: old is a power of two, its root is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof from {old} to {new} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof from {old} to {new} is too short")
    if not hmac.compare_digest(fr, old_root):
        raise ProofError(f"consistency proof does not lead to the root of size {old}")
    if not hmac.compare_digest(sr, new_root):
        raise ProofError(f"consistency proof does not lead to the root of size {new}")
