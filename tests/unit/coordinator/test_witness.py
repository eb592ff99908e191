"""The coordinator's C2SP tlog-witness: every answer of "add-checkpoint", persisted state, and
no rollback race; on a real SQLite file."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from coordinator.witness import Witness
from verifier.keys import generate_private_key
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.merkle import consistency_proof, leaf_hash, stored_hashes_for_leaf, tree_hash
from verifier.tlog.note import ALG_COSIGNATURE_V1, Note, NoteSigner, sign_note

ORIGIN = "rb-a.example/log"


class Tree:
    def __init__(self, n: int, salt: bytes = b"") -> None:
        self.hashes: list[bytes] = []
        for i in range(n):
            self.hashes += stored_hashes_for_leaf(i, leaf_hash(salt + b"%d" % i), self.read)

    def read(self, ix: list[int] | tuple[int, ...] | object) -> list[bytes]:
        return [self.hashes[i] for i in ix]  # type: ignore[attr-defined]

    def root(self, n: int) -> bytes:
        return tree_hash(n, self.read)  # type: ignore[arg-type]

    def proof(self, old: int, new: int) -> list[bytes]:
        return consistency_proof(old, new, self.read)  # type: ignore[arg-type]


def request(old: int, proof: list[bytes], note: bytes) -> bytes:
    return (f"old {old}\n".encode() + b"".join(base64.b64encode(h) + b"\n" for h in proof)
            + b"\n" + note)


@pytest.fixture
def log_key() -> NoteSigner:
    return NoteSigner(ORIGIN, generate_private_key())


@pytest.fixture
async def witness(tmp_path: Path, log_key: NoteSigner) -> Witness:
    signer = NoteSigner("coord.example/witness", generate_private_key(), ALG_COSIGNATURE_V1)
    w = await Witness.open(tmp_path / "witness.db", signer,
                           {ORIGIN: ("rb-a", log_key.verifier)})
    yield w  # type: ignore[misc]
    await w.close()


def cp_note(signer: NoteSigner, tree: Tree, n: int, origin: str = ORIGIN) -> bytes:
    return sign_note(Checkpoint(origin, n, tree.root(n)).to_text(), [signer])


async def test_first_checkpoint_is_cosigned_and_persisted(
        witness: Witness, log_key: NoteSigner, tmp_path: Path) -> None:
    tree = Tree(10)
    note = cp_note(log_key, tree, 5)
    answer = await witness.add_checkpoint(request(0, [], note))
    assert answer.status == 200, answer.body
    assert answer.body.startswith("— coord.example/witness ".encode())
    cosigned = Note.from_bytes(note + answer.body)
    sigs = cosigned.verify([witness.signer.verifier])
    assert sigs[0].sig[:8] != bytes(8)  # a timestamp
    latest = await witness.latest(ORIGIN)
    assert latest is not None and latest.size == 5
    # persisted: a new process sees it
    again = await Witness.open(tmp_path / "witness.db", witness.signer, witness.logs)
    assert (await again.latest(ORIGIN)) == latest
    await again.close()
    # and the next checkpoint must come with a proof from 5
    answer = await witness.add_checkpoint(request(5, tree.proof(5, 10), cp_note(log_key, tree, 10)))
    assert answer.status == 200, answer.body


async def test_unknown_origin_is_404(witness: Witness) -> None:
    other = NoteSigner("elsewhere.example/log", generate_private_key())
    answer = await witness.add_checkpoint(
        request(0, [], cp_note(other, Tree(3), 3, "elsewhere.example/log")))
    assert answer.status == 404


async def test_checkpoint_not_signed_by_the_log_key_is_403(witness: Witness) -> None:
    impostor = NoteSigner(ORIGIN, generate_private_key())
    answer = await witness.add_checkpoint(request(0, [], cp_note(impostor, Tree(3), 3)))
    assert answer.status == 403


async def test_old_size_above_checkpoint_size_is_400(witness: Witness,
                                                     log_key: NoteSigner) -> None:
    answer = await witness.add_checkpoint(request(4, [], cp_note(log_key, Tree(3), 3)))
    assert answer.status == 400


@pytest.mark.parametrize("body", [
    b"", b"old 01\n\n", b"new 0\n\n", b"old 0\nnot base64!\n\n", b"old 0\n" + b"AAAA\n\n",
    b"old 0\n\nnot a note\n", b"old 0\n" + b"".join(
        base64.b64encode(bytes(32)) + b"\n" for _ in range(64)) + b"\n",
])
async def test_malformed_requests_are_400(witness: Witness, body: bytes) -> None:
    assert (await witness.add_checkpoint(body)).status == 400


async def test_wrong_old_size_is_409_with_the_latest_size(witness: Witness,
                                                          log_key: NoteSigner) -> None:
    tree = Tree(8)
    assert (await witness.add_checkpoint(request(0, [], cp_note(log_key, tree, 4)))).status == 200
    answer = await witness.add_checkpoint(request(0, [], cp_note(log_key, tree, 8)))
    assert (answer.status, answer.content_type, answer.body) == (409, "text/x.tlog.size",
                                                                 b"4\n")


async def test_same_size_other_root_is_409(witness: Witness, log_key: NoteSigner) -> None:
    assert (await witness.add_checkpoint(
        request(0, [], cp_note(log_key, Tree(4), 4)))).status == 200
    forked = Tree(4, salt=b"fork")
    answer = await witness.add_checkpoint(request(4, [], cp_note(log_key, forked, 4)))
    assert answer.status == 409


async def test_inconsistent_checkpoint_is_422_and_not_recorded(
        witness: Witness, log_key: NoteSigner) -> None:
    tree = Tree(4)
    assert (await witness.add_checkpoint(request(0, [], cp_note(log_key, tree, 4)))).status == 200
    forked = Tree(9, salt=b"fork")  # rewrote history, then grew
    answer = await witness.add_checkpoint(
        request(4, forked.proof(4, 9), cp_note(log_key, forked, 9)))
    assert answer.status == 422
    latest = await witness.latest(ORIGIN)
    assert latest is not None and latest.size == 4


async def test_concurrent_requests_cannot_roll_back(witness: Witness,
                                                    log_key: NoteSigner) -> None:
    tree = Tree(20)
    assert (await witness.add_checkpoint(request(0, [], cp_note(log_key, tree, 5)))).status == 200
    a, b = await asyncio.gather(
        witness.add_checkpoint(request(5, tree.proof(5, 20), cp_note(log_key, tree, 20))),
        witness.add_checkpoint(request(5, tree.proof(5, 10), cp_note(log_key, tree, 10))),
    )
    assert sorted([a.status, b.status]) == [200, 409]
    latest = await witness.latest(ORIGIN)
    assert latest is not None and latest.size == (20 if a.status == 200 else 10)
