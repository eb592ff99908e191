"""``verifier check`` end to end over HTTP: asking rebuilders directly, or one coordinator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration._verifier_servers import Behaviour, serving_in_thread
from tests.unit.verifier._vectors import VECTORS
from verifier.cli import main

DEB = VECTORS / "debs/hello_1.0-1_amd64.deb"
IDS = ["rb-alpha", "rb-beta", "rb-gamma"]


def att(name: str) -> bytes:
    return (VECTORS / f"attestations/{name}.json").read_bytes().strip()


def write_policy(tmp_path: Path, urls: list[str]) -> Path:
    text = (VECTORS / "policy.toml").read_text()
    for i, url in enumerate(urls):
        text = text.replace(f"http://127.0.0.1:{8401 + i}", url)
    (tmp_path / "keys").symlink_to(VECTORS / "keys")
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_check_asks_each_rebuilder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    behaviours = [Behaviour(envelopes=[att(f"agree-{rid}")]) for rid in IDS]
    behaviours += [Behaviour(status=404), Behaviour(envelopes=[att("malformed")])]
    with serving_in_thread(behaviours) as urls:
        policy = write_policy(tmp_path, urls)
        code = main(["check", "--json", "--timeout", "5", "--policy", str(policy), str(DEB)])
    (doc,) = json.loads(capsys.readouterr().out)
    assert code == 0, doc["reasons"]
    statuses = [r["status"] for r in doc["rebuilders"]]
    # The 404 everywhere is no rebuilder at all; the malformed answer is invalid too.
    assert statuses == ["agrees", "agrees", "agrees", "invalid", "invalid"]


def test_check_via_coordinator_rejects_a_disagreement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = [att("agree-rb-alpha"), att("agree-rb-beta"), att("mismatch-rb-gamma")]
    with serving_in_thread([Behaviour(envelopes=pool)]) as (coordinator,):
        policy = write_policy(tmp_path, [])
        code = main(["check", "--coordinator", coordinator, "--policy", str(policy), str(DEB)])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("REJECTED hello_1.0-1_amd64.deb")
    assert "rb-gamma" in out and "disagrees" in out and "/v1/reports/7.html" in out
