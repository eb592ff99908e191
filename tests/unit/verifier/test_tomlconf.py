"""The typed-TOML helper: errors carry file, table and key; the writer round-trips any
string; the shared MqttConfig is validated at construction."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from coordinator.config import load_config as load_coordinator
from rebuilder.config import load_config as load_node
from verifier.errors import ConfigError
from verifier.tomlconf import MqttConfig, RebuilderIdentity, dumps, read_toml, toml_value

STRINGS = ["plain", "Gamma 😀 Systems", 'q"uote', "back\\slash", "new\nline", "\t\r\x7f",
           "'''", '"""', "\\u00e9", "é"]


@pytest.mark.parametrize("text", STRINGS)
def test_writer_round_trips_strings(text: str) -> None:
    assert tomllib.loads(f"v = {toml_value(text)}")["v"] == text
    assert tomllib.loads(dumps({"t": {"k": text, "l": [text]}})) == {"t": {"k": text,
                                                                         "l": [text]}}


@pytest.mark.parametrize(("loader", "text", "table", "key"), [
    (load_node, '[node]\nid = "rb-a"\noperator = "x"\n[mqtt]\nport = 0\n', "mqtt", "port"),
    (load_node, '[node]\nid = "rb-a"\noperator = "x"\n[build]\nparalel = 2\n', "build",
     "paralel"),
    (load_coordinator, "[mqtt]\nkeepalive = 1\n", "mqtt", "keepalive"),
    (load_coordinator, "[coordinator]\nonline_after = true\n", "coordinator", "online_after"),
    (load_coordinator, '[witness]\nprefix = "/v1/x"\n', "witness", "prefix"),
])
def test_errors_name_file_table_and_key(tmp_path: Path, loader: object, text: str, table: str,
                                        key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        loader(path)  # type: ignore[operator]
    assert (e.value.file, e.value.table, e.value.key) == (str(path), table, key)
    assert str(e.value).startswith(f"{path}: ")
    assert f"{table}." in str(e.value) or f"[{table}]" in str(e.value)


def test_read_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("a = ")
    with pytest.raises(ConfigError, match="not valid TOML") as e:
        read_toml(path, 1024)
    assert e.value.file == str(path)
    with pytest.raises(ConfigError, match="limit 1"):
        read_toml(path, 1)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"port": 0}, "port"), ({"port": 65536}, "port"), ({"keepalive": 4}, "keepalive"),
    ({"host": "a/b"}, "host"), ({"host": ""}, "host"), ({"username": "u" * 257}, "username"),
])
def test_mqtt_config_is_validated_at_construction(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        MqttConfig(**kwargs)  # type: ignore[arg-type]
    assert (e.value.table, e.value.key) == ("mqtt", key)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"id": "RB"}, "id"), ({"operator": " "}, "operator"), ({"operator": "o" * 201}, "operator"),
    ({"url": "ftp://x"}, "url"), ({"url": "http://"}, "url"),
])
def test_rebuilder_identity_is_validated(kwargs: dict[str, str], key: str) -> None:
    fields = {"id": "rb-a", "operator": "Alpha", "url": "http://h:1"} | kwargs
    with pytest.raises(ConfigError) as e:
        RebuilderIdentity(**fields)
    assert e.value.key == key
