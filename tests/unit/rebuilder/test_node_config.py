"""Config parsing: what `rebuilder init` writes loads; each bad value names its key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from rebuilder.config import ConfigError, load_config, parse_config
from tests.unit.rebuilder.node_helpers import make_node


def test_init_writes_every_documented_key(tmp_path: Path) -> None:
    cfg = make_node(tmp_path, repo_url="http://127.0.0.1:8400/debian")
    text = (tmp_path / "node" / "config.toml").read_text()
    doc = tomllib.loads(text)
    assert set(doc["node"]) == {"id", "operator", "listen", "public_url", "state_dir",
                                "signing_key"}
    assert set(doc["mqtt"]) == {"enabled", "host", "port", "tls", "ca_file", "username",
                                "password_file", "keepalive"}
    assert set(doc["repository"][0]) == {"name", "base_url", "suite", "components",
                                         "architectures", "buildinfo_url", "poll_interval",
                                         "trusted", "max_index_entries", "max_index_mb"}
    assert set(doc["build"]) == {"environment", "mirror", "timeout", "max_disk_mb",
                                 "max_output_mb", "max_log_mb", "max_source_mb", "parallel",
                                 "max_memory_mb", "max_processes", "snapshot_url",
                                 "chroot_cache_mb"}
    assert set(doc["diffoscope"]) == {"enabled", "timeout", "max_report_mb"}
    assert cfg.node.state_dir == tmp_path / "node"
    assert cfg.node.signing_key == tmp_path / "node" / "keys" / "signing.pem"
    assert (cfg.node.signing_key.stat().st_mode & 0o777) == 0o600
    repo = cfg.repositories[0]
    assert repo.buildinfo_for("hello", "1:2.0-1", "amd64") == (
        "http://127.0.0.1:8400/debian/buildinfo/hello_2.0-1_amd64.buildinfo"
    )


def _base() -> dict[str, Any]:
    return {
        "node": {"id": "rb-a", "operator": "op", "listen": "127.0.0.1:8401",
                 "public_url": "http://127.0.0.1:8401"},
        "repository": [{"name": "r", "base_url": "http://h/debian", "suite": "stable"}],
    }


BAD: list[tuple[str, str, object, str]] = [
    ("node", "id", "RB_A", "node.id"),
    ("node", "id", "", "node.id"),
    ("node", "listen", "nohostport", "node.listen"),
    ("node", "listen", "127.0.0.1:70000", "node.listen"),
    ("node", "public_url", "ftp://x", "node.public_url"),
    ("node", "colour", "blue", "unknown key"),
    ("mqtt", "port", 0, "mqtt.port"),
    ("mqtt", "port", "1883", "mqtt.port"),
    ("mqtt", "keepalive", 1, "mqtt.keepalive"),
    ("mqtt", "tls", "yes", "mqtt.tls"),
    ("build", "parallel", 0, "build.parallel"),
    ("build", "parallel", 1000, "build.parallel"),
    ("build", "timeout", True, "build.timeout"),
    ("build", "max_memory_mb", 8, "build.max_memory_mb"),
    ("build", "max_processes", 0, "build.max_processes"),
    ("build", "environment", "docker", "build.environment"),
    ("diffoscope", "max_report_mb", 0, "diffoscope.max_report_mb"),
]


@pytest.mark.parametrize(("section", "key", "value", "needle"), BAD)
def test_bad_values_name_the_key(section: str, key: str, value: object, needle: str) -> None:
    doc = _base()
    doc.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        parse_config(doc, Path("/srv"))


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("buildinfo_url", "{base}/{secret}", "unknown placeholder"),
        ("buildinfo_url", "{base", "not a valid template"),
        ("poll_interval", 0, "poll_interval"),
        ("architectures", [], "architectures"),
        ("architectures", ["amd64", "amd64"], "twice"),
        ("components", ["main;rm"], "components"),
        ("base_url", "file:///etc", "base_url"),
        ("suite", "../../x", "suite"),
        ("trusted", "yes", "trusted"),
        ("require_signed_source", True, "needs uploader_keyring"),
        ("max_index_entries", 0, "max_index_entries"),
        ("max_index_mb", 10**9, "max_index_mb"),
    ],
)
def test_bad_repository_values(key: str, value: object, needle: str) -> None:
    doc = _base()
    doc["repository"][0][key] = value
    with pytest.raises(ConfigError, match=needle):
        parse_config(doc, Path("/srv"))


def test_signed_by_and_trusted_exclude_each_other() -> None:
    doc = _base()
    doc["repository"][0].update(signed_by="keys/archive.gpg", trusted=True)
    with pytest.raises(ConfigError, match="both signed_by and trusted"):
        parse_config(doc, Path("/srv"))
    del doc["repository"][0]["trusted"]
    repo = parse_config(doc, Path("/srv")).repositories[0]
    assert repo.signed_by == Path("/srv/keys/archive.gpg") and not repo.trusted


def test_duplicate_repository_name() -> None:
    doc = _base()
    doc["repository"].append(dict(doc["repository"][0]))
    with pytest.raises(ConfigError, match="used twice"):
        parse_config(doc, Path("/srv"))


def test_missing_required_key() -> None:
    doc = _base()
    del doc["node"]["operator"]
    with pytest.raises(ConfigError, match=r"node\.operator is required"):
        parse_config(doc, Path("/srv"))


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    p = tmp_path / "c.toml"
    p.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    p.write_bytes(b"#" * (300 * 1024))
    with pytest.raises(ConfigError, match="limit"):
        load_config(p)


def test_defaults_and_relative_paths() -> None:
    cfg = parse_config(_base(), Path("/srv/node"))
    assert cfg.node.state_dir == Path("/srv/node")
    assert cfg.node.db_path == Path("/srv/node/state.db")
    assert cfg.build.parallel == 1 and cfg.diffoscope.enabled
    assert cfg.mqtt.password_file is None
    assert cfg.repositories[0].architectures == ("amd64", "all")
