"""What an installer reads when the policy is wrong: the file, the line, the nearest key; and
`--policy` when there is no default policy."""

from __future__ import annotations

from pathlib import Path

import pytest

import verifier.cli
from tests.unit.verifier._vectors import make_vectors
from verifier.cli import main
from verifier.errors import ConfigError
from verifier.keys import public_key_pem
from verifier.policy import Policy

mv = make_vectors()
PEM = public_key_pem(mv.private_key("rb-a").public_key())
ENTRY = ('[[rebuilder]]\nid = "rb-a"\noperator = "a"\nurl = "http://127.0.0.1:1"\n'
         f'public_key = """{PEM}"""\n')


def refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        Policy.load(path)
    return str(e.value)


def test_misspelt_top_level_key(tmp_path: Path) -> None:
    msg = refusal(tmp_path, "# trust two\ntreshold = 2\n" + ENTRY)
    assert msg == (f"policy: {tmp_path / 'policy.toml'}, line 2: unknown top-level keys "
                   "treshold (did you mean 'threshold' for 'treshold'?)")


def test_misspelt_rebuilder_key_names_its_line(tmp_path: Path) -> None:
    second = ENTRY.replace('"rb-a"', '"rb-b"').replace("operator =", "operater =")
    msg = refusal(tmp_path, "threshold = 1\n" + ENTRY + second)
    assert msg.startswith(f"policy: {tmp_path / 'policy.toml'}, line 12: rebuilder 'rb-b' has "
                          "unknown keys operater (did you mean 'operator' for 'operater'?)")


def test_misspelt_distrust_key(tmp_path: Path) -> None:
    msg = refusal(tmp_path, "threshold = 1\n" + ENTRY + "\n[distrust]\nkeyid = []\n")
    assert "line 12: [distrust] has unknown keys keyid (did you mean 'keyids'" in msg


def test_bad_value_names_its_line(tmp_path: Path) -> None:
    msg = refusal(tmp_path, "threshold = 1\nreject_on_mismatch = -1\n" + ENTRY)
    assert msg.startswith(f"policy: {tmp_path / 'policy.toml'}, line 2: reject_on_mismatch")
    msg = refusal(tmp_path, "threshold = 1\n" + ENTRY.replace("http://127.0.0.1:1", "ftp://x"))
    assert ", line 5: rebuilder 'rb-a' url" in msg


def test_unrelated_unknown_key_gets_no_suggestion(tmp_path: Path) -> None:
    msg = refusal(tmp_path, "threshold = 1\ncolour = 2\n" + ENTRY)
    assert msg.endswith("line 2: unknown top-level keys colour")


def test_missing_default_policy_says_policy_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    default = tmp_path / "etc" / "policy.toml"
    monkeypatch.setattr(verifier.cli, "DEFAULT_POLICY_PATH", default)
    deb = tmp_path / "a.deb"
    deb.write_bytes(b"x")
    assert main(["check", str(deb)]) == 2
    err = capsys.readouterr().err
    assert err == (f"verifier: policy: there is no policy at {default} (the default); write one "
                   "there (docs/verifier.md) or name yours with --policy FILE\n")
