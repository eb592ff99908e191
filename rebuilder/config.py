"""The node's ``config.toml``, parsed into typed, frozen, bounded dataclasses.

Every key of docs/configuration.md is read here and nowhere else; a bad value raises
``ConfigError`` naming the key, what was seen and what is allowed::

    config = load_config(Path("/var/lib/rebuilder/config.toml"))
    config.node.id, config.build.parallel, config.repositories[0].suite
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from verifier.errors import ConfigError

__all__ = [
    "BuildConfig",
    "Config",
    "ConfigError",
    "DiffoscopeConfig",
    "MqttConfig",
    "NodeConfig",
    "RepositoryConfig",
    "load_config",
    "parse_config",
    "parse_listen",
]

MAX_CONFIG_BYTES = 256 * 1024
NODE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SUITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
_ARCH = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
TEMPLATE_FIELDS = frozenset({"base", "source", "version", "version_noepoch", "arch"})


@dataclass(frozen=True)
class NodeConfig:
    id: str
    operator: str
    listen_host: str
    listen_port: int
    public_url: str
    state_dir: Path
    signing_key: Path
    # workers take no job while the state filesystem has less free (docs/configuration.md)
    min_free_mb: int = 256

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def builds_dir(self) -> Path:
        return self.state_dir / "builds"

    @property
    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def builder_id(self) -> str:
        """The URI naming this node in its attestations' ``runDetails.builder.id``."""
        return f"{self.public_url.rstrip('/')}/v1/node"


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: Path | None = None
    username: str = ""
    password_file: Path | None = None
    keepalive: int = 30

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        return self.password_file.read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class RepositoryConfig:
    name: str
    base_url: str
    suite: str
    components: tuple[str, ...]
    architectures: tuple[str, ...]
    buildinfo_url: str
    poll_interval: int

    @property
    def label(self) -> str:
        """What an attestation's ``externalParameters.repository`` says: URL and suite."""
        return f"{self.base_url} {self.suite}"

    def buildinfo_for(self, source: str, version: str, arch: str) -> str:
        noepoch = version.split(":", 1)[1] if ":" in version else version
        return self.buildinfo_url.format(
            base=self.base_url.rstrip("/"),
            source=source,
            version=version,
            version_noepoch=noepoch,
            arch=arch,
        )


@dataclass(frozen=True)
class BuildConfig:
    environment: Literal["host", "mmdebstrap"] = "host"
    mirror: str = "http://deb.debian.org/debian"
    timeout: int = 3600
    max_disk_mb: int = 10240
    max_output_mb: int = 2048
    max_log_mb: int = 50
    max_source_mb: int = 2048
    parallel: int = 1


@dataclass(frozen=True)
class DiffoscopeConfig:
    enabled: bool = True
    timeout: int = 600
    max_report_mb: int = 20


@dataclass(frozen=True)
class Config:
    node: NodeConfig
    mqtt: MqttConfig
    repositories: tuple[RepositoryConfig, ...]
    build: BuildConfig
    diffoscope: DiffoscopeConfig
    path: Path | None = None

    def repository(self, name: str) -> RepositoryConfig | None:
        for r in self.repositories:
            if r.name == name:
                return r
        return None


class _Section:
    """Typed, bounded access to one TOML table; every error names ``section.key``."""

    def __init__(self, name: str, data: object, known: set[str]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{name}] must be a table")
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"[{name}] has unknown key(s) {', '.join(unknown)}")
        self.name = name
        self.data: Mapping[str, Any] = data

    def _get(self, key: str, default: Any) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(f"{self.name}.{key} is required")
            return default
        return self.data[key]

    def text(self, key: str, default: Any = None, pattern: re.Pattern[str] | None = None,
            max_len: int = 1024) -> str:
        v = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(v, str):
            raise ConfigError(f"{self.name}.{key} must be a string, got {type(v).__name__}")
        if len(v) > max_len:
            raise ConfigError(f"{self.name}.{key} is longer than {max_len} characters")
        if pattern is not None and not pattern.fullmatch(v):
            raise ConfigError(f"{self.name}.{key} = {v!r} does not match {pattern.pattern}")
        return v

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.name}.{key} must be an integer, got {type(v).__name__}")
        if not low <= v <= high:
            raise ConfigError(f"{self.name}.{key} = {v} is outside {low}..{high}")
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self._get(key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.name}.{key} must be true or false")
        return v

    def texts(self, key: str, default: Any, pattern: re.Pattern[str]) -> tuple[str, ...]:
        v = self._get(key, default)
        if not isinstance(v, list) or not v or len(v) > 64:
            raise ConfigError(f"{self.name}.{key} must be a non-empty list of at most 64 strings")
        for item in v:
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise ConfigError(
                    f"{self.name}.{key} item {item!r} does not match {pattern.pattern}"
                )
        if len(set(v)) != len(v):
            raise ConfigError(f"{self.name}.{key} lists a value twice")
        return tuple(v)


_REQUIRED = object()


def _http_url(value: str, where: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} = {value!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where} = {value!r} must not carry a query or fragment")
    return value.rstrip("/")


def parse_listen(value: str, where: str = "node.listen") -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", value)
    if not m:
        raise ConfigError(f"{where} = {value!r} is not host:port")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where} = {value!r}: port outside 1..65535")
    return host, port


def _path(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def _template(value: str, where: str) -> str:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as e:
        raise ConfigError(f"{where} = {value!r} is not a valid template: {e}") from e
    bad = fields - TEMPLATE_FIELDS
    if bad:
        raise ConfigError(
            f"{where} uses unknown placeholder(s) {sorted(bad)}; allowed: {sorted(TEMPLATE_FIELDS)}"
        )
    probe = value.format(base="http://h", source="s", version="1", version_noepoch="1", arch="a")
    _http_url(probe, where)
    return value


def parse_config(data: Mapping[str, Any], base_dir: Path, path: Path | None = None) -> Config:
    """Validate a parsed TOML document; relative paths are taken from ``base_dir``."""
    unknown = sorted(set(data) - {"node", "mqtt", "repository", "build", "diffoscope"})
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}")
    n = _Section("node", data.get("node"), {"id", "operator", "listen", "public_url",
                                            "state_dir", "signing_key", "min_free_mb"})
    host, port = parse_listen(n.text("listen", "127.0.0.1:8401"))
    state_dir = _path(base_dir, n.text("state_dir", "."))
    node = NodeConfig(
        id=n.text("id", pattern=NODE_ID),
        operator=n.text("operator", max_len=200),
        listen_host=host,
        listen_port=port,
        public_url=_http_url(n.text("public_url", f"http://{host}:{port}"), "node.public_url"),
        state_dir=state_dir,
        signing_key=_path(base_dir, n.text("signing_key", "keys/signing.pem")),
        min_free_mb=n.integer("min_free_mb", 256, 0, 10_000_000),
    )
    if not node.operator.strip():
        raise ConfigError("node.operator must not be empty")

    m = _Section("mqtt", data.get("mqtt", {}), {"enabled", "host", "port", "tls", "ca_file",
                                                "username", "password_file", "keepalive"})
    ca = m.text("ca_file", "")
    pw = m.text("password_file", "")
    mqtt = MqttConfig(
        enabled=m.boolean("enabled", True),
        host=m.text("host", "127.0.0.1", re.compile(r"[A-Za-z0-9.:-]{1,253}")),
        port=m.integer("port", 1883, 1, 65535),
        tls=m.boolean("tls", False),
        ca_file=_path(base_dir, ca) if ca else None,
        username=m.text("username", "", max_len=256),
        password_file=_path(base_dir, pw) if pw else None,
        keepalive=m.integer("keepalive", 30, 5, 3600),
    )

    raw_repos = data.get("repository", [])
    if not isinstance(raw_repos, list) or len(raw_repos) > 64:
        raise ConfigError("[[repository]] must be an array of at most 64 tables")
    repos: list[RepositoryConfig] = []
    for i, raw in enumerate(raw_repos):
        r = _Section(f"repository[{i}]", raw, {"name", "base_url", "suite", "components",
                                               "architectures", "buildinfo_url",
                                               "poll_interval"})
        repo = RepositoryConfig(
            name=r.text("name", pattern=_REPO_NAME),
            base_url=_http_url(r.text("base_url", max_len=2048), f"repository[{i}].base_url"),
            suite=r.text("suite", pattern=_SUITE),
            components=r.texts("components", ["main"], _COMPONENT),
            architectures=r.texts("architectures", ["amd64", "all"], _ARCH),
            buildinfo_url=_template(
                r.text("buildinfo_url", "{base}/buildinfo/{source}_{version}_{arch}.buildinfo",
                      max_len=2048),
                f"repository[{i}].buildinfo_url",
            ),
            poll_interval=r.integer("poll_interval", 300, 1, 7 * 86400),
        )
        if any(x.name == repo.name for x in repos):
            raise ConfigError(f"repository[{i}].name {repo.name!r} is used twice")
        repos.append(repo)

    b = _Section("build", data.get("build", {}), {"environment", "mirror", "timeout",
                                                  "max_disk_mb", "max_output_mb", "max_log_mb",
                                                  "max_source_mb", "parallel"})
    env = b.text("environment", "host")
    if env not in ("host", "mmdebstrap"):
        raise ConfigError(f"build.environment = {env!r} must be 'host' or 'mmdebstrap'")
    build = BuildConfig(
        environment=env,  # type: ignore[arg-type]  # checked just above
        mirror=_http_url(b.text("mirror", "http://deb.debian.org/debian"), "build.mirror"),
        timeout=b.integer("timeout", 3600, 10, 7 * 86400),
        max_disk_mb=b.integer("max_disk_mb", 10240, 16, 10_000_000),
        max_output_mb=b.integer("max_output_mb", 2048, 1, 1_000_000),
        max_log_mb=b.integer("max_log_mb", 50, 1, 10_000),
        max_source_mb=b.integer("max_source_mb", 2048, 1, 1_000_000),
        parallel=b.integer("parallel", 1, 1, 64),
    )
    d = _Section("diffoscope", data.get("diffoscope", {}), {"enabled", "timeout",
                                                            "max_report_mb"})
    diffoscope = DiffoscopeConfig(
        enabled=d.boolean("enabled", True),
        timeout=d.integer("timeout", 600, 5, 86400),
        max_report_mb=d.integer("max_report_mb", 20, 1, 10_000),
    )
    return Config(node, mqtt, tuple(repos), build, diffoscope, path)


def load_config(path: Path) -> Config:
    path = path.absolute()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {len(raw)} bytes, limit {MAX_CONFIG_BYTES}")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    try:
        return parse_config(data, path.parent, path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
