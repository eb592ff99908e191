"""``rebuilder init`` writes a config that loads back with every string as given (issue 12:
an emoji in the operator's name used to produce a config that did not load), or refuses the
value naming it; it never leaves a config that does not load."""

from __future__ import annotations

from pathlib import Path

import pytest

from rebuilder.cli import EXIT_ERROR, EXIT_OK, main
from rebuilder.config import load_config

HOSTILE = ["Gamma 😀 Systems", 'say "hi"', "back\\slash", "line\nbreak", "tab\tand '",
           "\\u0000 not an escape", '"""', "#not a comment"]


def _init(tmp_path: Path, **options: str) -> tuple[int, Path]:
    d = tmp_path / "node"
    argv = {"--dir": str(d), "--id": "rb-gamma", "--operator": "op",
            "--public-url": "http://127.0.0.1:8401", "--repository-url": "http://h/debian"}
    argv.update(options)
    return main(["init", *(x for kv in argv.items() for x in kv)]), d / "config.toml"


@pytest.mark.parametrize("value", HOSTILE)
def test_operator_round_trips(tmp_path: Path, value: str) -> None:
    rc, path = _init(tmp_path, **{"--operator": value})
    assert rc == EXIT_OK
    assert load_config(path).node.operator == value


@pytest.mark.parametrize("value", HOSTILE)
def test_signed_by_and_dir_round_trip(tmp_path: Path, value: str) -> None:
    keyring = tmp_path / f"k{value}.gpg"
    rc, path = _init(tmp_path / value.replace("\n", "_"), **{"--signed-by": str(keyring)})
    assert rc == EXIT_OK
    config = load_config(path)
    assert config.repositories[0].signed_by == keyring
    assert config.node.state_dir == tmp_path / value.replace("\n", "_") / "node"


@pytest.mark.parametrize("value", ["http://h/a\\b", 'http://h/"x"', "http://h/😀"])
def test_urls_round_trip(tmp_path: Path, value: str) -> None:
    rc, path = _init(tmp_path, **{"--public-url": value, "--repository-url": value})
    assert rc == EXIT_OK
    config = load_config(path)
    assert config.node.public_url == value
    assert config.repositories[0].base_url == value


# Options with a grammar refuse what does not fit it, naming the option or key, and write nothing.
@pytest.mark.parametrize(("option", "needle"), [
    ("--id", "--id"),
    ("--mqtt-host", "mqtt.host"),
    ("--suite", "suite"),
    ("--repository-name", "name"),
    ("--architectures", "architectures"),
    ("--listen", "--listen"),
    ("--public-url", "public_url"),
])
@pytest.mark.parametrize("value", HOSTILE)
def test_constrained_options_refuse_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, needle: str, value: str
) -> None:
    rc, path = _init(tmp_path, **{option: value})
    assert rc == EXIT_ERROR
    assert needle in capsys.readouterr().err
    assert not path.exists()
