"""The node's transparency log on a real SQLite store: appended in the storing transaction,
integrated, checkpointed, written as C2SP tiles, proofs that verify, restart consistency."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from pathlib import Path

import pytest

from rebuilder.db import NewAttestation, Store
from rebuilder.tlog import LogEntryTooLarge, LogSettings, NodeLog
from verifier.keys import generate_private_key
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.merkle import leaf_hash, node_hash, verify_consistency, verify_inclusion
from verifier.tlog.note import Note, NoteSigner, NoteVerifier
from verifier.tlog.tiles import decode_bundle, entries_path, tile_path

ORIGIN = "rb.example/log"


def _att(i: int) -> NewAttestation:
    env = b'{"payload":"%d","payloadType":"t","signatures":[]}' % i
    return NewAttestation(envelope_sha256=hashlib.sha256(env).hexdigest(), envelope=env,
                          kind="revocation", source=None, version=None, arch=None,
                          subjects=(), revokes=None)


def _mth(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


async def _open(tmp_path: Path, key: object = None) -> tuple[Store, NodeLog, NoteSigner]:
    store = await Store.open(tmp_path / "state.db")
    signer = NoteSigner(ORIGIN, key or generate_private_key())  # type: ignore[arg-type]
    settings = LogSettings(ORIGIN, "http://rb.example/log", tmp_path / "log")
    return store, await NodeLog.open(store, settings, signer), signer


async def test_every_stored_envelope_is_logged_in_order(tmp_path: Path) -> None:
    store, node_log, _ = await _open(tmp_path)
    seqs = [await store.add_attestation(_att(i)) for i in range(3)]
    await store.add_attestations_bulk([_att(i) for i in range(3, 10)])
    rows = await store._all("SELECT idx, seq FROM log_entries ORDER BY idx")
    assert [r["idx"] for r in rows] == list(range(10))
    assert [r["seq"] for r in rows][:3] == seqs
    assert await node_log.size() == 10
    await store.close()


async def test_too_large_envelope_is_refused_with_the_build(tmp_path: Path) -> None:
    store, _, _ = await _open(tmp_path)
    big = NewAttestation("ab" * 32, b"x" * 70000, "revocation", None, None, None, ())
    with pytest.raises(LogEntryTooLarge, match="at most 65535"):
        await store.add_attestation(big)
    assert await store.attestation("ab" * 32) is None  # rolled back with it
    await store.close()


async def test_checkpoint_tiles_and_proofs(tmp_path: Path) -> None:
    store, node_log, signer = await _open(tmp_path)
    n = 600  # two full level-0 tiles and a partial one
    await store.add_attestations_bulk([_att(i) for i in range(n)])
    signed = await node_log.checkpoint()
    assert signed is not None
    leaves = [leaf_hash(_att(i).envelope) for i in range(n)]
    assert signed.checkpoint == Checkpoint(ORIGIN, n, _mth(leaves))
    # The served note verifies under the vkey the node document names.
    served = (tmp_path / "log" / "checkpoint").read_bytes()
    Note.from_bytes(served).verify([NoteVerifier.from_vkey(signer.vkey)])
    d = tmp_path / "log"
    assert (d / tile_path(0, 0)).read_bytes() == b"".join(leaves[:256])
    assert (d / tile_path(0, 2, 88)).read_bytes() == b"".join(leaves[512:600])
    assert (d / tile_path(1, 0, 2)).read_bytes() == _mth(leaves[:256]) + _mth(leaves[256:512])
    bundle = decode_bundle((d / entries_path(2, 88)).read_bytes(), 88)
    assert bundle[0] == _att(512).envelope
    for i in (0, 255, 256, 599):
        proof = await node_log.inclusion_proof(i, n)
        verify_inclusion(i, n, leaves[i], proof, signed.checkpoint.root)
    info = await node_log.proof_for(_att(7).envelope_sha256)
    assert info is not None
    assert (info["logIndex"], info["treeSize"]) == ("7", "600")
    verify_inclusion(7, n, leaves[7], [base64.b64decode(h) for h in info["hashes"]],
                     signed.checkpoint.root)
    # The tree grows: a new checkpoint, consistent with the old one.
    await store.add_attestations_bulk([_att(i) for i in range(n, n + 5)])
    newer = await node_log.checkpoint()
    assert newer is not None and newer.checkpoint.size == n + 5
    verify_consistency(n, n + 5, signed.checkpoint.root, newer.checkpoint.root,
                       await node_log.consistency_proof(n, n + 5))
    assert (d / tile_path(0, 2, 93)).exists()
    await store.close()


async def test_restart_reuses_the_signed_checkpoint_and_rewrites_files(tmp_path: Path) -> None:
    key = generate_private_key()
    store, node_log, _ = await _open(tmp_path, key)
    await store.add_attestations_bulk([_att(i) for i in range(5)])
    first = await node_log.checkpoint()
    assert first is not None
    await store.close()
    (tmp_path / "log" / "checkpoint").unlink()
    store, node_log, _ = await _open(tmp_path, key)
    assert node_log.latest == first
    assert (tmp_path / "log" / "checkpoint").read_bytes() == first.served()
    assert await node_log.checkpoint() == first  # no second signature for the same size
    rows = await store._all("SELECT COUNT(*) AS n FROM log_checkpoints")
    assert rows[0]["n"] == 1
    await store.close()


async def test_envelopes_stored_before_the_log_are_in_it(tmp_path: Path) -> None:
    store, _, _ = await _open(tmp_path)
    await store.add_attestations_bulk([_att(i) for i in range(3)])
    async with store.transaction() as db:  # as a database from before the log (schema 6)
        for t in ("log_no_rewrite", "log_no_delete"):
            await db.execute(f"DROP TRIGGER {t}")
        await db.execute("DROP VIEW log_entries")
        for t in ("log_cosignatures", "log_checkpoints", "log_state", "log_hashes"):
            await db.execute(f"DROP TABLE {t}")
        await db.execute("DROP INDEX attestations_payload")  # 8: after the log
        await db.execute("ALTER TABLE attestations DROP COLUMN payload_sha256")
        for column in ("interruptions", "interrupted_because"):  # 9
            await db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        await db.execute("UPDATE schema_version SET version = 6")
        a = _att(3)  # stored by a node of that schema
        await db.execute("INSERT INTO attestations (envelope_sha256, envelope, kind, created_at)"
                         " VALUES (?, ?, ?, 'now')", (a.envelope_sha256, a.envelope, a.kind))
    await store.close()
    store, node_log, _ = await _open(tmp_path)
    rows = await store._all("SELECT idx, seq FROM log_entries ORDER BY idx")
    assert [(r["idx"], r["seq"]) for r in rows] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    signed = await node_log.checkpoint()
    assert signed is not None and signed.checkpoint.size == 4
    await store.close()


async def test_the_log_cannot_be_rewritten_or_get_gaps(tmp_path: Path) -> None:
    """Attacks on the append-only property through the database: rewriting is refused by a
    trigger; a gap (a row inserted past the end by hand) is never checkpointed over."""
    store, node_log, _ = await _open(tmp_path)
    await store.add_attestations_bulk([_att(i) for i in range(3)])
    for sql in ["DELETE FROM attestations WHERE seq = 2",
                "UPDATE attestations SET envelope = x'00' WHERE seq = 2",
                "UPDATE attestations SET seq = 9 WHERE seq = 3"]:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            async with store.transaction() as db:
                await db.execute(sql)
    assert (await node_log.checkpoint()) is not None
    async with store.transaction() as db:
        await db.execute("INSERT INTO attestations (seq, envelope_sha256, envelope, kind,"
                         " created_at) VALUES (10, 'ff', x'00', 'revocation', 'now')")
    with pytest.raises(RuntimeError, match="missing"):
        await node_log.checkpoint()
    assert node_log.latest is not None and node_log.latest.checkpoint.size == 3
    await store.close()


async def test_origin_cannot_change(tmp_path: Path) -> None:
    key = generate_private_key()
    store, node_log, _ = await _open(tmp_path, key)
    await store.add_attestations_bulk([_att(0)])
    await node_log.checkpoint()
    settings = LogSettings("other.example/log", "http://x/log", tmp_path / "log")
    with pytest.raises(ValueError, match="cannot change"):
        await NodeLog.open(store, settings, NoteSigner("other.example/log", key))
    await store.close()
