"""The verifier command, run in-process against the vectors (offline sources)."""

from __future__ import annotations

import io
import json
import shutil
import stat
import sys
from pathlib import Path

import pytest

from tests.unit.verifier._vectors import VECTORS
from verifier.cli import main, parse_hook_input
from verifier.errors import BadDataError
from verifier.keys import keyid, load_private_key

DEB = VECTORS / "debs/hello_1.0-1_amd64.deb"
POLICY = VECTORS / "policy.toml"


@pytest.fixture
def quorum_dir(tmp_path: Path) -> Path:
    d = tmp_path / "att"
    d.mkdir()
    lines = b"".join(
        (VECTORS / f"attestations/agree-{rid}.json").read_bytes() for rid in ("rb-alpha", "rb-beta")
    )
    (d / "pool.intoto.jsonl").write_bytes(lines + b"\n")
    (d / "junk.json").write_bytes(b"not an envelope")
    return d


def test_check_accepts_with_a_quorum(quorum_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["check", "--policy", str(POLICY), "--attestations", str(quorum_dir), str(DEB)]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("ACCEPTED hello_1.0-1_amd64.deb")
    assert "rb-alpha" in out and "agrees" in out


def test_check_rejects_and_explains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "att"
    d.mkdir()
    shutil.copy(VECTORS / "attestations/agree-rb-alpha.json", d)
    shutil.copy(VECTORS / "attestations/mismatch-rb-gamma.json", d)
    assert main(["check", "--policy", str(POLICY), "--attestations", str(d), str(DEB)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("REJECTED")
    assert "disagrees" in out and "http://127.0.0.1:8403/v1/reports/7.html" in out
    assert "why:" in out and "reject_on_mismatch" in out


def test_check_json_shape(quorum_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["check", "--json", "--policy", str(POLICY), "--attestations", str(quorum_dir), str(DEB)]
    )
    assert code == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["artifact"] == {
        "path": str(DEB),
        "sha256": doc["artifact"]["sha256"],
        "name": "hello_1.0-1_amd64.deb",
    }
    assert doc["accepted"] is True and doc["reasons"] == []
    assert {"id", "operator", "status", "detail"} <= set(doc["rebuilders"][0])


def test_any_rejected_artifact_makes_exit_1(
    quorum_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = VECTORS / "debs/other/hello_1.0-1_amd64.deb"
    args = ["check", "--json", "--policy", str(POLICY), "--attestations", str(quorum_dir)]
    assert main([*args, str(DEB), str(other)]) == 1
    docs = json.loads(capsys.readouterr().out)
    assert [d["accepted"] for d in docs] == [True, False]


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(
            ["check", "--policy", "/nonexistent/policy.toml", str(DEB)], id="missing_policy"
        ),
        pytest.param(
            ["check", "--policy", str(POLICY), "--attestations", "/nonexistent", str(DEB)],
            id="missing_dir",
        ),
        pytest.param(
            ["check", "--policy", str(POLICY), "--attestations", ".", str(POLICY)], id="not_a_deb"
        ),
    ],
)
def test_usage_and_config_errors_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("verifier: ")


def test_argparse_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as e:
        main(["check"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["check", "--attestations", "x", "--coordinator", "http://x", str(DEB)])
    assert e.value.code == 2


def test_keygen_writes_0600_and_prints_keyid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k" / "signing.pem"
    pub = tmp_path / "k" / "signing.pub"
    assert main(["keygen", "--out", str(out), "--public-out", str(pub)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    printed = capsys.readouterr().out
    kid = keyid(load_private_key(out).public_key())
    assert f"keyid: {kid}" in printed
    assert pub.read_text() in printed
    assert main(["keygen", "--out", str(out)]) == 2  # never overwrites a key


HOOK_INPUTS = {
    "v1": (
        "/var/cache/apt/archives/a_1_amd64.deb\n/tmp/b_2_all.deb\n",
        ["/var/cache/apt/archives/a_1_amd64.deb", "/tmp/b_2_all.deb"],
    ),
    "v1_empty": ("", []),
    "v2": (
        "VERSION 2\nAPT::Architecture=amd64\nDPkg::Tools::Options::x::Version=2\n\n"
        "hello - < 1.0-1 /var/cache/apt/archives/hello_1.0-1_amd64.deb\n"
        "old 1.0 > - **REMOVE**\nhello - < 1.0-1 **CONFIGURE**\n",
        ["/var/cache/apt/archives/hello_1.0-1_amd64.deb"],
    ),
    "v3": (
        "VERSION 3\nAPT::Architecture=amd64\n\n"
        "hello - - none < 1.0-1 amd64 same /var/cache/apt/archives/hello_1.0-1_amd64.deb\n"
        "hello - - none < 1.0-1 amd64 same **CONFIGURE**\n",
        ["/var/cache/apt/archives/hello_1.0-1_amd64.deb"],
    ),
}


@pytest.mark.parametrize("name", sorted(HOOK_INPUTS))
def test_parse_hook_input(name: str) -> None:
    text, expected = HOOK_INPUTS[name]
    assert parse_hook_input(text) == [Path(p) for p in expected]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("VERSION 9\n\n", id="unknown_version"),
        pytest.param("VERSION 2\nAPT::X=1\n", id="no_blank_line"),
        pytest.param("VERSION 3\n\nhello - < 1.0 /x.deb\n", id="wrong_field_count"),
    ],
)
def test_bad_hook_input_is_refused(text: str) -> None:
    with pytest.raises(BadDataError):
        parse_hook_input(text)


def run_hook(monkeypatch: pytest.MonkeyPatch, stdin: bytes, argv: list[str]) -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    return main(["apt-hook", *argv])


def test_apt_hook_accepts_and_refuses(
    monkeypatch: pytest.MonkeyPatch, quorum_dir: Path, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    args = ["--policy", str(POLICY), "--attestations", str(quorum_dir),
            "--decision-log", str(tmp_path / "decisions.jsonl")]
    assert run_hook(monkeypatch, f"{DEB}\n".encode(), args) == 0
    other = VECTORS / "debs/other/hello_1.0-1_amd64.deb"
    assert run_hook(monkeypatch, f"{DEB}\n{other}\n".encode(), args) == 1
    err = capsys.readouterr().err
    assert "refusing to install: 1 of 2 packages" in err
    assert run_hook(monkeypatch, b"/nonexistent.deb\n", args) == 1
    assert run_hook(monkeypatch, b"VERSION 7\n\n", args) == 1


def test_terminal_escapes_from_a_peer_are_neutralized(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.unit.verifier._vectors import make_vectors
    from verifier.dsse import sign

    mv = make_vectors()
    stmt = mv.rebuild("rb-beta", (), failure="\x1b]0;pwned\x07\x1b[2Jbuild failed")
    d = tmp_path / "att"
    d.mkdir()
    (d / "failed.json").write_bytes(sign(stmt.to_bytes(), mv.private_key("rb-beta")).to_bytes())
    assert main(["check", "--policy", str(POLICY), "--attestations", str(d), str(DEB)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2Jbuild failed" in out
