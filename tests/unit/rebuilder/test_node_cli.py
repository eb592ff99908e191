"""The ``rebuilder`` command: init, status, revoke, keyinfo (real store, real signing)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from rebuilder.cli import main
from rebuilder.db import Store
from rebuilder.queue import JobRunner
from tests.unit.rebuilder.node_helpers import job, make_node, reproduced
from verifier.dsse import Envelope
from verifier.keys import load_private_key
from verifier.statement import RevocationStatement, parse_statement


def test_init_refuses_to_overwrite_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_node(tmp_path)
    before = cfg.node.signing_key.read_bytes()
    capsys.readouterr()
    rc = main(["init", "--dir", str(tmp_path / "node"), "--id", "rb-other", "--operator", "x",
               "--public-url", "http://127.0.0.1:1"])
    assert rc == 3
    assert "refusing to overwrite a signing key" in capsys.readouterr().err
    assert cfg.node.signing_key.read_bytes() == before


def test_init_prints_identity_and_rejects_bad_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_node(tmp_path)
    out = capsys.readouterr().out
    assert "-----BEGIN PUBLIC KEY-----" in out and "keyid: " in out
    rc = main(["init", "--dir", str(tmp_path / "n2"), "--id", "Bad_Id", "--operator", "x",
               "--public-url", "http://127.0.0.1:1"])
    assert rc == 3 and "--id" in capsys.readouterr().err
    assert not (tmp_path / "n2" / "keys").exists()
    rc = main(["init", "--dir", str(tmp_path / "n3"), "--id", "ok", "--operator", "x",
               "--public-url", "ftp://nope"])
    assert rc == 3 and "node.public_url" in capsys.readouterr().err
    assert not (tmp_path / "n3").exists()


def test_bad_config_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_node(tmp_path)
    assert cfg.path is not None
    cfg.path.write_text(cfg.path.read_text().replace("parallel = 1", "parallel = 0"))
    assert main(["status", "--config", str(cfg.path)]) == 3
    assert "build.parallel = 0 is outside 1..64" in capsys.readouterr().err


async def _one_build(cfg: Any) -> str:
    store = await Store.open(cfg.node.db_path)
    runner = JobRunner(cfg, store, load_private_key(cfg.node.signing_key),
                       lambda j, w: _outcome(j))
    await store.add_jobs([job(), job("queued-one")])
    claimed = await store.claim_job()
    assert claimed is not None
    result = await runner.run(claimed)
    await store.close()
    return result.envelope_sha256


async def _outcome(j: Any) -> Any:
    return reproduced(j)


def test_status_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_node(tmp_path)
    conf = str(cfg.path)
    target = asyncio.run(_one_build(cfg))
    capsys.readouterr()
    assert main(["status", "--config", conf, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["queue"] == 1 and status["done"] == 1 and status["outbox_backlog"] == 1
    assert status["latest"][0]["verdict"] == "reproduced"

    assert main(["revoke", "--config", conf, "f" * 64, "--reason", "x"]) == 3
    assert "stored no attestation" in capsys.readouterr().err
    assert main(["revoke", "--config", conf, "zz", "--reason", "x"]) == 3
    assert main(["revoke", "--config", conf, target, "--reason", "toolchain was compromised"]) == 0
    out = capsys.readouterr().out
    assert f"revoked {target}" in out
    assert main(["revoke", "--config", conf, target, "--reason", "again"]) == 3
    assert "already revoked" in capsys.readouterr().err

    async def check() -> None:
        store = await Store.open(cfg.node.db_path, readonly=True)
        digest = job().published["hello_1.0-1_amd64.deb"][0]
        envs = [Envelope.from_bytes(e) for e in await store.attestations_by_digest(digest)]
        assert next(e.digest() for e in envs) == target
        revocation = parse_statement(envs[1].payload)
        assert isinstance(revocation, RevocationStatement)
        # v2: it names the signed statement, not the envelope
        assert revocation.revoked == envs[0].payload_digest() and not revocation.legacy
        assert revocation.reason == "toolchain was compromised"
        assert envs[1].verify(load_private_key(cfg.node.signing_key).public_key())
        assert (await store.counts())["backlog"] == 2  # the daemon publishes it
        await store.close()

    asyncio.run(check())
    rev = next(line for line in out.splitlines() if line.startswith("revoked")).split()[3]
    assert main(["revoke", "--config", conf, rev, "--reason", "x"]) == 3
    assert "cannot be revoked" in capsys.readouterr().err


def test_revoke_by_statement_digest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GET /v1/builds/<id> shows statement_sha256; revoking by it is the same revocation."""
    cfg = make_node(tmp_path)
    conf = str(cfg.path)
    target = asyncio.run(_one_build(cfg))

    async def statement_of() -> str:
        store = await Store.open(cfg.node.db_path, readonly=True)
        try:
            row = await store.attestation(target)
            assert row is not None
            return Envelope.from_bytes(row.envelope).payload_digest()
        finally:
            await store.close()

    statement = asyncio.run(statement_of())
    capsys.readouterr()
    assert main(["revoke", "--config", conf, statement, "--reason", "bad host"]) == 0
    assert main(["revoke", "--config", conf, target, "--reason", "again"]) == 3
    assert "already revoked" in capsys.readouterr().err


def test_keyinfo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_node(tmp_path)
    capsys.readouterr()
    assert main(["keyinfo", "--config", str(cfg.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["id"] == "rb-test" and info["public_key"].startswith("-----BEGIN PUBLIC KEY")


def test_requeue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_node(tmp_path)
    conf = str(cfg.path)
    asyncio.run(_one_build(cfg))  # job 1 done, job 2 queued
    capsys.readouterr()
    assert main(["requeue", "--config", conf]) == 3
    assert main(["requeue", "--config", conf, "1", "2", "99"]) == 0
    out = capsys.readouterr().out
    assert "re-queued 1 job(s): 1" in out
    assert "not re-queued (unknown, queued or running): 2 99" in out

    async def check() -> None:
        store = await Store.open(cfg.node.db_path, readonly=True)
        row = await store.job(1)
        assert row is not None and (row.state, row.attempts) == ("queued", 1)
        await store.close()

    asyncio.run(check())
