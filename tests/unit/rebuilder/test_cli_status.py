"""``rebuilder status`` shows what an operator acts on: each result's envelope sha256 (what
``revoke`` takes) and the revocations with their reasons."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from rebuilder.cli import main
from tests.unit.rebuilder.node_helpers import make_node
from tests.unit.rebuilder.test_node_cli import _one_build


def test_status_shows_envelope_digests_and_revocation_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_node(tmp_path)
    conf = str(cfg.path)
    target = asyncio.run(_one_build(cfg))
    capsys.readouterr()
    assert main(["status", "--config", conf]) == 0
    out = capsys.readouterr().out
    assert f"envelope {target}\n" in out and "REVOKED" not in out

    assert main(["revoke", "--config", conf, target, "--reason", "toolchain was compromised"]) == 0
    capsys.readouterr()
    assert main(["status", "--config", conf]) == 0
    out = capsys.readouterr().out
    assert f"envelope {target} REVOKED" in out
    # the revocation names the signed statement (v2), not the envelope
    statement = asyncio.run(_statement_digest(cfg, target))
    assert f"revoked {statement}: toolchain was compromised" in out

    assert main(["status", "--config", conf, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["latest"][0]["envelope_sha256"] == target
    assert status["latest"][0]["revoked_by"]
    assert status["revocations"][0]["revokes"] == statement
    assert status["revocations"][0]["reason"] == "toolchain was compromised"


async def _statement_digest(cfg: object, envelope_sha256: str) -> str:
    from rebuilder.db import Store
    from verifier.dsse import Envelope

    store = await Store.open(cfg.node.db_path, readonly=True)  # type: ignore[attr-defined]
    try:
        row = await store.attestation(envelope_sha256)
        assert row is not None
        return Envelope.from_bytes(row.envelope).payload_digest()
    finally:
        await store.close()
