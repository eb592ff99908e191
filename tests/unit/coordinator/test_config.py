"""coordinator.toml parsing: valid files load, every invalid value is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import load_config
from tests.unit.coordinator.factory import Signer
from verifier.errors import ConfigError
from verifier.keys import keyid

A = Signer("rb-alpha")


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "coordinator.toml"
    p.write_text(text)
    return p


def test_full_config(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.pub").write_text(A.public_pem)
    pem = A.public_pem
    cfg = load_config(write(tmp_path, f"""
[coordinator]
listen = "127.0.0.1:8600"
public_url = "http://coord.example/"
database = "state/c.db"
catchup_interval = 5
online_after = 30
[mqtt]
host = "broker"
port = 1884
[[rebuilder]]
id = "rb-alpha"
operator = "alpha"
url = "http://127.0.0.1:8401/"
public_key_file = "keys/a.pub"
[[rebuilder]]
id = "rb-beta"
operator = "beta"
url = "http://127.0.0.1:8402"
public_key = \"\"\"{pem}\"\"\"
"""))
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 8600)
    assert cfg.public_url == "http://coord.example"
    assert cfg.database == tmp_path / "state" / "c.db"
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("broker", 1884)
    assert [r.id for r in cfg.rebuilders] == ["rb-alpha", "rb-beta"]
    assert cfg.rebuilders[0].url == "http://127.0.0.1:8401"
    assert cfg.rebuilders[0].keyid == keyid(A.key.public_key())


BAD = {
    "bad listen": '[coordinator]\nlisten = "nowhere"\n',
    "port as bool": "[mqtt]\nport = true\n",
    "unknown key": "[coordinator]\nlisten_port = 1\n",
    "unknown table": "[coordinatr]\n",
    "bad rebuilder id": '[[rebuilder]]\nid = "RB Alpha"\noperator = "x"\nurl = "http://a"\n'
    'public_key = "x"\n',
    "no key": '[[rebuilder]]\nid = "rb-a"\noperator = "x"\nurl = "http://a"\n',
    "garbage key": '[[rebuilder]]\nid = "rb-a"\noperator = "x"\nurl = "http://a"\n'
    'public_key = "-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----"\n',
    "ftp url": '[[rebuilder]]\nid = "rb-a"\noperator = "x"\nurl = "ftp://a"\npublic_key = "x"\n',
    "negative interval": "[coordinator]\ncatchup_interval = -1\n",
    "not toml": "[coordinator\n",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_invalid(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, BAD[name]))


def test_duplicate_ids(tmp_path: Path) -> None:
    entry = (
        '[[rebuilder]]\nid = "rb-a"\noperator = "x"\nurl = "http://a"\n'
        f'public_key = """{A.public_pem}"""\n'
    )
    with pytest.raises(ConfigError, match="share an id"):
        load_config(write(tmp_path, entry + entry))
