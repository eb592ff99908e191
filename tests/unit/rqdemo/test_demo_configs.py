"""The demo's configuration files are written as TOML documents, not by interpolating strings:
hostile operator names and paths come back as they were given (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import load_config as load_coordinator_config
from rebuilder.cli import main as rebuilder_main
from rebuilder.config import load_config as load_node_config
from rqdemo.demo import Node, use_account, write_coordinator_config
from verifier.keys import generate_private_key, save_private_key

HOSTILE = ["Gamma 😀 Systems", 'say "hi"\\', "line\nbreak"]


@pytest.mark.parametrize("text", HOSTILE)
def test_coordinator_config_keeps_operator_and_password_path(tmp_path: Path, text: str) -> None:
    node = Node("rb-gamma", text, 8401, tmp_path / "rb-gamma")
    save_private_key(generate_private_key(), node.dir / "keys" / "signing.pem")
    password = tmp_path / f"pw {text.replace(chr(10), '_')}"
    password.write_text("secret\n")
    config = load_coordinator_config(
        write_coordinator_config(tmp_path, [node], 1883, 8500, password))
    assert config.rebuilders[0].operator == text
    assert config.mqtt.password_file == password
    assert config.mqtt.password() == "secret"


@pytest.mark.parametrize("text", HOSTILE)
def test_use_account_fills_in_the_node_mqtt_table(tmp_path: Path, text: str) -> None:
    d = tmp_path / "node"
    assert rebuilder_main(["init", "--dir", str(d), "--id", "rb-a", "--operator", text,
                           "--public-url", "http://127.0.0.1:8401"]) == 0
    password = tmp_path / f"pw {text.replace(chr(10), '_')}"
    use_account(d / "config.toml", "rb-a", password)
    config = load_node_config(d / "config.toml")
    assert (config.mqtt.username, config.mqtt.password_file) == ("rb-a", password)
    assert config.node.operator == text
