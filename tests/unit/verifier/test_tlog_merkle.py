"""RFC 6962 hashing and proofs against the published vectors of transparency-dev/merkle
(proof/verify_test.go: the eight RFC 6962 leaves, their roots, inclusion and consistency
proofs), plus exhaustive generate-then-verify over small trees."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from verifier.tlog.merkle import (
    EMPTY_ROOT,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    stored_hash_count,
    stored_hash_index,
    stored_hashes_for_leaf,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# (leaf index, tree size, proof) with 0-based indexes.
INCLUSION = [
    (0, 1, []),
    (0, 8, _h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (5, 8, _h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (1, 5, _h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, _h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (6, 8, _h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 5, _h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
    (6, 7, _h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
]


class MemoryTree:
    def __init__(self, entries: Sequence[bytes] = ()) -> None:
        self.hashes: list[bytes] = []
        self.size = 0
        for e in entries:
            self.append(e)

    def read(self, indexes: Sequence[int]) -> list[bytes]:
        return [self.hashes[i] for i in indexes]

    def append(self, entry: bytes) -> None:
        assert len(self.hashes) == stored_hash_index(0, self.size)
        self.hashes += stored_hashes_for_leaf(self.size, leaf_hash(entry), self.read)
        self.size += 1
        assert len(self.hashes) == stored_hash_count(self.size)


def _mth(entries: Sequence[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, straight from the definition."""
    if not entries:
        return EMPTY_ROOT
    if len(entries) == 1:
        return leaf_hash(entries[0])
    k = 1 << ((len(entries) - 1).bit_length() - 1)
    return node_hash(_mth(entries[:k]), _mth(entries[k:]))


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert tree_hash(0, MemoryTree().read) == EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_published_roots(size: int) -> None:
    tree = MemoryTree(LEAVES[:size])
    assert tree_hash(size, tree.read) == ROOTS[size - 1]
    assert _mth(LEAVES[:size]) == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_published_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    tree = MemoryTree(LEAVES)
    assert inclusion_proof(index, size, tree.read) == proof
    verify_inclusion(index, size, leaf_hash(LEAVES[index]), proof, ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_published_consistency_proofs(old: int, new: int, proof: list[bytes]) -> None:
    tree = MemoryTree(LEAVES)
    assert consistency_proof(old, new, tree.read) == proof
    verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], proof)


def _inclusion_probes(index: int, size: int, proof: list[bytes], root: bytes,
                      leaf: bytes) -> list[tuple[str, int, int, bytes, list[bytes], bytes]]:
    probes = [
        ("index - 1", index - 1, size, leaf, proof, root),
        ("index + 1", index + 1, size, leaf, proof, root),
        ("index ^ 2", index ^ 2, size, leaf, proof, root),
        ("size * 2", index, size * 2, leaf, proof, root),
        ("size / 2", index, size // 2, leaf, proof, root),
        ("wrong leaf", index, size, leaf_hash(b"WrongLeaf"), proof, root),
        ("empty root", index, size, leaf, proof, EMPTY_ROOT),
        ("trailing root", index, size, leaf, [*proof, root], root),
        ("preceding root", index, size, leaf, [root, *proof], root),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((f"modified proof[{i}]", index, size, leaf, bad, root))
    if proof:
        probes.append(("removed component", index, size, leaf, proof[:-1], root))
    return probes


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION[1:])
def test_corrupted_inclusion_proofs_fail(index: int, size: int, proof: list[bytes]) -> None:
    leaf = leaf_hash(LEAVES[index])
    for desc, i, s, lf, p, r in _inclusion_probes(index, size, proof, ROOTS[size - 1], leaf):
        with pytest.raises(ProofError):
            verify_inclusion(i, s, lf, p, r)
            pytest.fail(f"accepted {desc}")


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY[1:])
def test_corrupted_consistency_proofs_fail(old: int, new: int, proof: list[bytes]) -> None:
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    probes = [
        ("old - 1", old - 1, new, r1, r2, proof), ("old + 1", old + 1, new, r1, r2, proof),
        ("old ^ 2", old ^ 2, new, r1, r2, proof), ("new * 2", old, new * 2, r1, r2, proof),
        ("new / 2", old, new // 2, r1, r2, proof), ("swapped roots", old, new, r2, r1, proof),
        ("wrong old root", old, new, EMPTY_ROOT, r2, proof),
        ("wrong new root", old, new, r1, EMPTY_ROOT, proof),
        ("empty proof", old, new, r1, r2, []),
        ("trailing root", old, new, r1, r2, [*proof, r1]),
        ("preceding proof[0]", old, new, r1, r2, [proof[0], *proof]),
        ("truncated", old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((f"modified proof[{i}]", old, new, r1, r2, bad))
    for desc, o, n, a, b, p in probes:
        if o == n and a == b and not p:
            continue
        with pytest.raises(ProofError):
            verify_consistency(o, n, a, b, p)
            pytest.fail(f"accepted {desc}")


def test_same_size_different_root_is_rejected() -> None:
    with pytest.raises(ProofError, match="same tree size"):
        verify_consistency(3, 3, ROOTS[2], ROOTS[3], [])


def test_shrinking_tree_is_rejected() -> None:
    with pytest.raises(ProofError, match="down"):
        verify_consistency(5, 4, ROOTS[4], ROOTS[3], [])


def test_oversized_proof_is_rejected() -> None:
    with pytest.raises(ProofError, match="at most 63"):
        verify_inclusion(0, 2, ROOTS[0], [ROOTS[0]] * 64, ROOTS[1])


def test_generated_proofs_verify_for_every_small_tree() -> None:
    entries = [b"entry %d" % i for i in range(70)]
    tree = MemoryTree(entries)
    roots = [tree_hash(n, tree.read) for n in range(71)]
    for n in range(1, 71):
        assert roots[n] == _mth(entries[:n])
        for i in range(n):
            verify_inclusion(i, n, leaf_hash(entries[i]), inclusion_proof(i, n, tree.read),
                             roots[n])
        for m in range(0, n + 1):
            verify_consistency(m, n, roots[m], roots[n], consistency_proof(m, n, tree.read))
