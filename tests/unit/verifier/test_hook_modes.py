"""The APT hook's dry run, breakglass, scope and decision log (verifier/hook.py, docs/verifier.md).

In-process against the committed vectors (offline attestations), a real append-only log file and
real APT list files written the way APT names them.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.unit.verifier._vectors import VECTORS
from verifier.cli import main
from verifier.debian import sha256_file

DEB = VECTORS / "debs/hello_1.0-1_amd64.deb"
OTHER = VECTORS / "debs/other/hello_1.0-1_amd64.deb"  # no rebuilder reproduced this one


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    att = tmp_path / "att"
    att.mkdir()
    (att / "pool.intoto.jsonl").write_bytes(b"".join(
        (VECTORS / f"attestations/agree-{rid}.json").read_bytes() for rid in ("rb-alpha", "rb-beta")
    ) + b"\n")
    keys = tmp_path / "keys"
    shutil.copytree(VECTORS / "keys", keys)
    return {"dir": tmp_path, "att": att, "log": tmp_path / "log" / "decisions.jsonl"}


def _policy(env: dict[str, Path], extra: str = "") -> Path:
    text = (VECTORS / "policy.toml").read_text()
    path = env["dir"] / "policy.toml"
    # Top-level keys must come before the first table.
    path.write_text(extra + "\n" + text if extra and not extra.lstrip().startswith("[")
                    else text + "\n" + extra)
    return path


def _hook(monkeypatch: pytest.MonkeyPatch, env: dict[str, Path], policy: Path, stdin: str,
          *extra: str) -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    return main(["apt-hook", "--policy", str(policy), "--attestations", str(env["att"]),
                 "--decision-log", str(env["log"]), *extra])


def _records(env: dict[str, Path]) -> list[dict[str, object]]:
    return [json.loads(line) for line in env["log"].read_text().splitlines()]


def test_every_decision_is_recorded(monkeypatch: pytest.MonkeyPatch, env: dict[str, Path],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    policy = _policy(env)
    monkeypatch.delenv("REPRO_QUORUM_BREAKGLASS", raising=False)
    assert _hook(monkeypatch, env, policy, f"{DEB}\n") == 0
    assert _hook(monkeypatch, env, policy, f"{DEB}\n{OTHER}\n") == 1
    err = capsys.readouterr().err
    assert "refusing to install: 1 of 2 packages lack a rebuilder quorum" in err
    assert 'REPRO_QUORUM_BREAKGLASS="<reason>" apt-get' in err
    first, second = _records(env)
    assert first["outcome"] == "accepted" and first["mode"] == "enforce"
    [pkg] = first["packages"]  # type: ignore[misc]
    assert pkg["sha256"] == sha256_file(DEB) and pkg["name"] == "hello"
    assert pkg["agreeing"] == ["rb-alpha", "rb-beta"] and pkg["accepted"] is True
    assert second["outcome"] == "refused"
    assert [p["accepted"] for p in second["packages"]] == [True, False]  # type: ignore[attr-defined]
    assert second["user"] and isinstance(second["uid"], int)
    assert env["log"].stat().st_mode & 0o777 == 0o640


def test_dry_run_installs_and_says_what_it_would_refuse(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(env, 'mode = "dry-run"')
    assert _hook(monkeypatch, env, policy, f"{OTHER}\n") == 0
    err = capsys.readouterr().err
    assert "REJECTED hello_1.0-1_amd64.deb" in err
    assert 'dry run (mode = "dry-run" in' in err and "would refuse 1 of 1 packages" in err
    assert _records(env)[0]["outcome"] == "would-refuse"


def test_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    policy = _policy(env, 'mode = "permissive"')
    assert _hook(monkeypatch, env, policy, f"{OTHER}\n") == 2
    assert "mode 'permissive' must be one of enforce, dry-run" in capsys.readouterr().err


def test_breakglass_from_the_environment_is_audited(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(env)
    monkeypatch.setenv("REPRO_QUORUM_BREAKGLASS", "CVE fix, rebuilders lagging")
    monkeypatch.setenv("SUDO_USER", "alice")
    assert _hook(monkeypatch, env, policy, f"{OTHER}\n") == 0
    err = capsys.readouterr().err
    assert "BREAKGLASS: installing 1 of 1 packages without a rebuilder quorum" in err
    assert "'CVE fix, rebuilders lagging'" in err
    [rec] = _records(env)
    assert rec["outcome"] == "breakglass" and rec["user"] == "alice"
    assert rec["breakglass_reason"] == "CVE fix, rebuilders lagging"
    assert rec["packages"][0]["sha256"] == sha256_file(OTHER)  # type: ignore[index]


def test_breakglass_as_an_apt_option(monkeypatch: pytest.MonkeyPatch,
                                     env: dict[str, Path]) -> None:
    policy = _policy(env)
    monkeypatch.delenv("REPRO_QUORUM_BREAKGLASS", raising=False)
    stdin = ("VERSION 2\nAPT::Architecture=amd64\nRepro-Quorum::Breakglass=urgent fix\n\n"
             f"hello - < 1.0-1 {OTHER}\n")
    assert _hook(monkeypatch, env, policy, stdin) == 0
    assert _records(env)[0]["breakglass_reason"] == "urgent fix"


def test_breakglass_that_cannot_be_recorded_refuses(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(env)
    monkeypatch.setenv("REPRO_QUORUM_BREAKGLASS", "no log please")
    env["log"].parent.mkdir()
    env["log"].mkdir()  # a directory where the log file should be: appending fails
    assert _hook(monkeypatch, env, policy, f"{OTHER}\n") == 1
    assert "refusing the breakglass: it must be recorded" in capsys.readouterr().err


def test_empty_breakglass_reason_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                             env: dict[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REPRO_QUORUM_BREAKGLASS", "  ")
    assert _hook(monkeypatch, env, _policy(env), f"{OTHER}\n") == 1
    assert "REPRO_QUORUM_BREAKGLASS is set but empty" in capsys.readouterr().err


def _apt_lists(root: Path, origin: str, sha256: str) -> Path:
    """One repository's lists as APT writes them: <site>_<path>_dists_<suite>_..."""
    lists = root / "lists"
    lists.mkdir()
    prefix = "127.0.0.1:8080_debian_dists_stable"
    (lists / f"{prefix}_InRelease").write_text(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"
        f"Origin: {origin}\nLabel: {origin} label\nSuite: stable\nSHA256:\n"
        " 0000 1 main/binary-amd64/Packages\n-----BEGIN PGP SIGNATURE-----\n\nxx\n"
        "-----END PGP SIGNATURE-----\n")
    (lists / f"{prefix}_main_binary-amd64_Packages").write_text(
        "Package: hello\nVersion: 1.0-1\nArchitecture: amd64\n"
        f"Filename: pool/h.deb\nSHA256: {sha256}\n\n")
    return lists


@pytest.mark.parametrize(("origin", "checked"), [("Debian", True), ("Elsewhere", False)])
def test_scope_checks_only_listed_origins(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, Path], capsys: pytest.CaptureFixture[str],
    origin: str, checked: bool,
) -> None:
    monkeypatch.delenv("REPRO_QUORUM_BREAKGLASS", raising=False)
    lists = _apt_lists(env["dir"], origin, sha256_file(OTHER))
    policy = _policy(env, '[scope]\norigins = ["Debian"]\n')
    code = _hook(monkeypatch, env, policy, f"{OTHER}\n", "--apt-lists", str(lists))
    err = capsys.readouterr().err
    [rec] = _records(env)
    if checked:
        assert code == 1 and rec["outcome"] == "refused"
    else:
        assert code == 0 and rec["outcome"] == "accepted"
        assert "not checked:" in err
        assert "from 127.0.0.1:8080 (Origin Elsewhere, Label Elsewhere label), outside [scope]" \
            in err
        assert rec["packages"][0]["checked"] is False  # type: ignore[index]


def test_local_deb_is_outside_a_scope(monkeypatch: pytest.MonkeyPatch, env: dict[str, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("REPRO_QUORUM_BREAKGLASS", raising=False)
    (env["dir"] / "empty").mkdir()
    policy = _policy(env, '[scope]\nsites = ["deb.debian.org"]\n')
    assert _hook(monkeypatch, env, policy, f"{OTHER}\n", "--apt-lists",
                 str(env["dir"] / "empty")) == 0
    assert "in no repository APT knows (a local .deb?), outside [scope]" in capsys.readouterr().err


def test_empty_scope_is_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert _hook(monkeypatch, env, _policy(env, "[scope]\n"), f"{OTHER}\n") == 2
    assert "[scope] lists no origins, labels or sites" in capsys.readouterr().err
