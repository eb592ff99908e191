"""The node serves revocations by the statement they name (v2) and, for older ones (v1), by the
envelope; one attestation per signed statement; older databases gain the statement digests."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rebuilder._schema import MIGRATIONS
from rebuilder.db import NewAttestation, Store
from tests.unit.coordinator.factory import Signer, sha
from verifier.dsse import Envelope, sign
from verifier.keys import generate_private_key

DEB = "hello_1.0-1_amd64.deb"
NODE = Signer("rb-node")


def attestation(env: Envelope, revokes: str | None = None) -> NewAttestation:
    return NewAttestation(
        envelope_sha256=env.digest(), envelope=env.to_bytes(),
        kind="revocation" if revokes else "rebuild", source="hello", version="1.0-1",
        arch="amd64", subjects=() if revokes else ((DEB, sha("h")),), revokes=revokes,
    )


@pytest.mark.parametrize("legacy", [False, True], ids=["v2", "v1"])
async def test_revocation_is_served_next_to_what_it_names(tmp_path: Path, legacy: bool) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        env = NODE.rebuild("hello", "1.0-1", {DEB: sha("h")})
        rev = NODE.revoke(env, legacy=legacy)
        named = env.digest() if legacy else env.payload_digest()
        await store.add_attestation(attestation(env))
        await store.add_attestation(attestation(rev, revokes=named))
        assert await store.attestations_by_digest(sha("h")) == [env.to_bytes(), rev.to_bytes()]
        assert await store.attestations_for_package("hello", "1.0-1") == [
            env.to_bytes(), rev.to_bytes()]
    finally:
        await store.close()


async def test_one_attestation_per_signed_statement(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    try:
        env = NODE.rebuild("hello", "1.0-1", {DEB: sha("h")})
        await store.add_attestation(attestation(env))
        extra = Envelope(env.payload_type, env.payload, (*env.signatures, env.signatures[0]))
        with pytest.raises(sqlite3.IntegrityError):
            await store.add_attestation(attestation(extra))
        assert (await store.counts())["last_seq"] == 1
    finally:
        await store.close()


async def test_migration_fills_statement_digests(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    env = sign(b'{"a":1}', generate_private_key())
    with sqlite3.connect(path) as db:  # a database as schema 2 wrote it
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for script in MIGRATIONS[:2]:
            assert isinstance(script, str)
            db.executescript(script)
        db.execute("INSERT INTO schema_version VALUES (2)")
        db.execute(
            "INSERT INTO attestations (envelope_sha256, envelope, kind, created_at)"
            " VALUES (?, ?, 'rebuild', ?)",
            (env.digest(), env.to_bytes(), datetime.now(UTC).isoformat()),
        )
    store = await Store.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT payload_sha256 FROM attestations").fetchall() == [
            (env.payload_digest(),)]
