"""Typed TOML for every configuration file of repro-quorum, and the config types the packages
share (``MqttConfig``, ``RebuilderIdentity``).

Reading: ``read_toml`` refuses an oversized or invalid file naming it; ``Table`` gives typed,
bounded access to one table, and every error names the table and key (``mqtt.port = 0 is
outside 1..65535``; loaders prefix the file). Writing: ``dumps``/``write_toml`` (tomli-w) and
``toml_value`` for one value in a commented template, so any string (quotes, backslashes,
newlines, emoji) round-trips::

    t = Table("mqtt", doc.get("mqtt", {}), MQTT_KEYS)
    port = t.integer("port", MqttConfig.port, 1, 65535)
    write_toml(path, {"mqtt": {"host": "127.0.0.1", "port": port}})
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from verifier.errors import ConfigError

__all__ = [
    "MQTT_KEYS",
    "MqttConfig",
    "RebuilderIdentity",
    "Table",
    "dumps",
    "parse_mqtt",
    "read_toml",
    "toml_value",
    "write_toml",
]

_REQUIRED: Any = object()


def read_toml(path: Path, max_bytes: int) -> dict[str, Any]:
    """The parsed document at ``path``; ``ConfigError`` (with ``file``) naming what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}", file=str(path)) from e
    if len(raw) > max_bytes:
        raise ConfigError(f"{path} is {len(raw)} bytes, limit {max_bytes}", file=str(path))
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}", file=str(path)) from e


def in_file(e: ConfigError, path: Path) -> ConfigError:
    """``e`` again, its message prefixed with the file it is about (for ``raise ... from e``)."""
    return ConfigError(f"{path}: {e}", file=str(path), table=e.table, key=e.key)


def dumps(doc: Mapping[str, Any]) -> str:
    """``doc`` as TOML text (tomli-w, imported here: ``import verifier`` stays light)."""
    import tomli_w

    return tomli_w.dumps(_plain(doc))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def toml_value(value: str | int | bool | float | Path | Iterable[str]) -> str:
    """One value as TOML text, for a template that keeps its comments: ``toml_value('a"b')``
    is ``"a\\"b"``."""
    if not isinstance(value, (str, int, bool, float, Path)):
        value = list(value)
    return dumps({"v": value}).strip().removeprefix("v = ")


def write_toml(path: Path, doc: Mapping[str, Any], header: str = "") -> None:
    """Write ``doc`` (with ``header`` comment lines first), replacing ``path`` atomically."""
    text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    text += ("\n" if text else "") + dumps(doc)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Table:
    """Typed, bounded access to one TOML table; every error names ``<table>.<key>``."""

    def __init__(self, name: str, data: object, known: Iterable[str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{name}] must be a table", table=name)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"[{name}] has unknown key(s) {', '.join(unknown)}", table=name,
                              key=unknown[0])
        self.name = name
        self.data: Mapping[str, Any] = data

    def error(self, key: str, text: str) -> ConfigError:
        """A ``ConfigError`` about ``key`` of this table: ``text`` follows ``<table>.<key>``."""
        return ConfigError(f"{self.name}.{key} {text}", table=self.name, key=key)

    def _get(self, key: str, default: Any) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(key, "is required")
            return default
        return self.data[key]

    def text(self, key: str, default: Any = None, pattern: re.Pattern[str] | None = None,
             max_len: int = 1024) -> str:
        """A string; required when ``default`` is None."""
        v = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(v, str):
            raise self.error(key, f"must be a string, got {type(v).__name__}")
        if len(v) > max_len:
            raise self.error(key, f"is longer than {max_len} characters")
        if pattern is not None and not pattern.fullmatch(v):
            raise self.error(key, f"= {v!r} does not match {pattern.pattern}")
        return v

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):  # true is an int in Python
            raise self.error(key, f"must be an integer, got {type(v).__name__}")
        if not low <= v <= high:
            raise self.error(key, f"= {v} is outside {low}..{high}")
        return v

    def number(self, key: str, default: float, low: float, high: float) -> float:
        """An integer or a float (seconds), within ``low..high``."""
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(key, f"must be a number, got {type(v).__name__}")
        if not low <= v <= high:
            raise self.error(key, f"= {v} is outside {low:g}..{high:g}")
        return float(v)

    def boolean(self, key: str, default: bool) -> bool:
        v = self._get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, "must be true or false")
        return v

    def texts(self, key: str, default: Any, pattern: re.Pattern[str]) -> tuple[str, ...]:
        v = self._get(key, default)
        if not isinstance(v, list) or not v or len(v) > 64:
            raise self.error(key, "must be a non-empty list of at most 64 strings")
        for item in v:
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise self.error(key, f"item {item!r} does not match {pattern.pattern}")
        if len(set(v)) != len(v):
            raise self.error(key, "lists a value twice")
        return tuple(v)

    def path(self, key: str, default: str, base: Path) -> Path | None:
        """A path relative to ``base`` (absolute stays absolute); "" is None."""
        v = self.text(key, default, max_len=4096)
        return resolve(base, v) if v else None

    def url(self, key: str, default: Any = None) -> str:
        """An http(s) URL without query or fragment, trailing "/" removed."""
        return http_url(self.text(key, default, max_len=2048), f"{self.name}.{key}")


def resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def http_url(value: str, where: str) -> str:
    parts = urlsplit(value)
    key = where.rsplit(".", 1)[-1] if "." in where else None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} = {value!r} is not an http(s) URL", key=key)
    if parts.query or parts.fragment:
        raise ConfigError(f"{where} = {value!r} must not carry a query or fragment", key=key)
    return value.rstrip("/")


# --- shared types ----------------------------------------------------------------------------

MQTT_KEYS = frozenset({"enabled", "host", "port", "tls", "ca_file", "username", "password_file",
                       "keepalive"})
_MQTT_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")


@dataclass(frozen=True)
class MqttConfig:
    """[mqtt] of the node and of the coordinator (docs/configuration.md): the broker."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: Path | None = None
    username: str = ""
    password_file: Path | None = None  # the password is never inline
    keepalive: int = 30  # seconds

    def __post_init__(self) -> None:
        if not _MQTT_HOST.fullmatch(self.host):
            raise ConfigError(f"mqtt.host = {self.host!r} does not match {_MQTT_HOST.pattern}",
                              table="mqtt", key="host")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"mqtt.port = {self.port} is outside 1..65535", table="mqtt",
                              key="port")
        if not 5 <= self.keepalive <= 3600:
            raise ConfigError(f"mqtt.keepalive = {self.keepalive} is outside 5..3600",
                              table="mqtt", key="keepalive")
        if len(self.username) > 256:
            raise ConfigError("mqtt.username is longer than 256 characters", table="mqtt",
                              key="username")

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        return self.password_file.read_text(encoding="utf-8").strip()


def parse_mqtt(data: object, base: Path) -> MqttConfig:
    """``[mqtt]`` (absent: all defaults); relative paths are taken from ``base``."""
    m = Table("mqtt", {} if data is None else data, MQTT_KEYS)
    d = MqttConfig  # the defaults, written once: on the dataclass
    return MqttConfig(
        enabled=m.boolean("enabled", d.enabled),
        host=m.text("host", d.host, _MQTT_HOST),
        port=m.integer("port", d.port, 1, 65535),
        tls=m.boolean("tls", d.tls),
        ca_file=m.path("ca_file", "", base),
        username=m.text("username", d.username, max_len=256),
        password_file=m.path("password_file", "", base),
        keepalive=m.integer("keepalive", d.keepalive, 5, 3600),
    )


REBUILDER_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # in MQTT topics: no '/', '+', '#'
MAX_OPERATOR_CHARS = 200


@dataclass(frozen=True)
class RebuilderIdentity:
    """Who a rebuilder is, as its node says and the coordinator registers it: the id in its
    MQTT topics, the operator running it (free text) and its public API URL."""

    id: str
    operator: str
    url: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not REBUILDER_ID.fullmatch(self.id):
            raise ConfigError(f"rebuilder id {self.id!r} must match {REBUILDER_ID.pattern}",
                              key="id")
        if (not isinstance(self.operator, str) or not self.operator.strip()
                or len(self.operator) > MAX_OPERATOR_CHARS):
            raise ConfigError(
                f"rebuilder {self.id}: operator must be 1-{MAX_OPERATOR_CHARS} characters",
                key="operator")
        if not isinstance(self.url, str) or len(self.url) > 2048:
            raise ConfigError(f"rebuilder {self.id} url must be a URL string", key="url")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"rebuilder {self.id} url {self.url!r} is not an http(s) URL",
                              key="url")

    @property
    def default_log_origin(self) -> str:
        """Its transparency log's origin unless configured: the URL without scheme + /log."""
        return self.url.split("://", 1)[1].rstrip("/") + "/log"
