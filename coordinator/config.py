"""The coordinator's configuration file (docs/configuration.md), parsed into frozen dataclasses.

Every value is checked when the file is loaded, so the services below never see an invalid one::

    config = load_config(Path("/etc/repro-quorum/coordinator.toml"))
    config.rebuilders[0].keyid   # '3f2a...'

Relative paths (database, key files, password files) are relative to the file's directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from verifier.errors import BadDataError, ConfigError
from verifier.keys import Ed25519PublicKey, KeyId, keyid, load_public_key

__all__ = [
    "CoordinatorConfig",
    "Limits",
    "MqttConfig",
    "RebuilderConfig",
    "WitnessConfig",
    "load_config",
    "parse_config",
]

REBUILDER_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
MAX_CONFIG_BYTES = 1024 * 1024
MAX_REBUILDERS = 256


@dataclass(frozen=True)
class Limits:
    """Named bounds on what the coordinator accepts from rebuilders and the network."""

    max_envelope_bytes: int = 1024 * 1024  # one MQTT message / one envelope
    max_status_bytes: int = 4096  # one status message
    max_catchup_response_bytes: int = 64 * 1024 * 1024  # one catch-up page
    catchup_page_limit: int = 1000  # limit= asked of a node
    catchup_max_pages: int = 200  # pages per rebuilder per round
    catchup_timeout: float = 30.0  # seconds per catch-up HTTP request
    max_report_bytes: int = 20 * 1024 * 1024  # a proxied diffoscope report
    max_log_bytes: int = 50 * 1024 * 1024
    report_timeout: float = 20.0
    ingest_queue: int = 20_000  # received, not yet verified messages
    max_queued_bytes: int = 256 * 1024 * 1024  # and their size together
    ingest_batch: int = 500  # messages verified and stored per transaction


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
        return self.password_file.read_text().strip()


@dataclass(frozen=True)
class RebuilderConfig:
    """A registered rebuilder: its id (as in MQTT topics), operator, key and public API URL."""

    id: str
    operator: str
    url: str
    public_key: Ed25519PublicKey = field(compare=False, repr=False)
    keyid: KeyId = field(default=KeyId(""))  # computed from public_key when left empty
    log_origin: str = ""  # its transparency log's origin; "" = url without scheme + "/log"

    @property
    def origin(self) -> str:
        return self.log_origin or self.url.split("://", 1)[1].rstrip("/") + "/log"

    def __post_init__(self) -> None:
        if not REBUILDER_ID.fullmatch(self.id):
            raise ConfigError(f"rebuilder id {self.id!r} must match {REBUILDER_ID.pattern}")
        if not self.operator or len(self.operator) > 200:
            raise ConfigError(f"rebuilder {self.id}: operator must be 1-200 characters")
        _check_url(self.url, f"rebuilder {self.id} url")
        if not self.keyid:
            object.__setattr__(self, "keyid", keyid(self.public_key))


@dataclass(frozen=True)
class WitnessConfig:
    """[witness]: the coordinator's C2SP tlog-witness (ARCHITECTURE §4.9)."""

    enabled: bool = True
    name: str = ""  # "" = public_url without scheme + "/witness"
    key_file: Path = Path("witness.pem")  # created (0600) on first start when missing
    state: Path = Path("witness.db")
    prefix: str = "/witness"  # POST <prefix>/add-checkpoint
    monitor_interval: float = 60.0  # seconds between reads of every registered log
    monitor_batch: int = 4096  # entry bundles (of 256) the monitor reads per log per round


@dataclass(frozen=True)
class CoordinatorConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8500
    public_url: str = "http://127.0.0.1:8500"
    database: Path = Path("coordinator.db")
    catchup_interval: float = 60.0
    online_after: float = 120.0
    verify_workers: int = -1  # processes checking signatures; 0: none, -1: automatic
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    rebuilders: tuple[RebuilderConfig, ...] = ()
    limits: Limits = field(default_factory=Limits)
    witness: WitnessConfig = field(default_factory=WitnessConfig)

    @property
    def witness_name(self) -> str:
        return self.witness.name or self.public_url.split("://", 1)[1].rstrip("/") + "/witness"

    def __post_init__(self) -> None:
        ids = [r.id for r in self.rebuilders]
        if len(set(ids)) != len(ids):
            raise ConfigError("two [[rebuilder]] entries share an id")
        if len(ids) > MAX_REBUILDERS:
            raise ConfigError(f"{len(ids)} rebuilders, limit {MAX_REBUILDERS}")
        if not 0 < self.catchup_interval <= 86400:
            raise ConfigError("catchup_interval must be between 0 and 86400 seconds")
        if not 0 < self.online_after <= 7 * 86400:
            raise ConfigError("online_after must be between 0 and 604800 seconds")
        _check_url(self.public_url, "public_url")
        if not -1 <= self.verify_workers <= 64:
            raise ConfigError("verify_workers must be -1 (one per CPU), 0 (none) or up to 64")

    def workers(self) -> int:
        """How many verification processes to start by default: one per CPU from 2 CPUs up
        (measured on a 2-core machine: 3,046-3,208/s against 2,056-2,218/s in-process; on a
        machine already saturated by other work, in-process can win: set verify_workers = 0)."""
        if self.verify_workers >= 0:
            return self.verify_workers
        cpus = os.cpu_count() or 1
        return 0 if cpus < 2 else min(cpus, 8)

    def rebuilder(self, rebuilder_id: str) -> RebuilderConfig | None:
        for r in self.rebuilders:
            if r.id == rebuilder_id:
                return r
        return None


def _check_url(url: object, what: str) -> str:
    if not isinstance(url, str) or len(url) > 2048:
        raise ConfigError(f"{what} must be a URL string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} {url!r} is not an http(s) URL")
    return url.rstrip("/")


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = table.get(key, default)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; do not accept true for a port number.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ConfigError(f"{key} must be of type {kind}, got {value!r}")
    return value


def _path(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen {value!r} must be host:port")
    return host.strip("[]"), int(port)


def _mqtt(table: dict[str, Any], base: Path) -> MqttConfig:
    known = {"enabled", "host", "port", "tls", "ca_file", "username", "password_file", "keepalive"}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"[mqtt] has unknown keys {sorted(unknown)}")
    port = _get(table, "port", int, 1883)
    if not 0 < port < 65536:
        raise ConfigError("[mqtt] port out of range")
    keepalive = _get(table, "keepalive", int, 30)
    if not 5 <= keepalive <= 3600:
        raise ConfigError("[mqtt] keepalive must be 5-3600 seconds")
    ca = _get(table, "ca_file", str, "")
    pw = _get(table, "password_file", str, "")
    return MqttConfig(
        enabled=_get(table, "enabled", bool, True),
        host=_get(table, "host", str, "127.0.0.1"),
        port=port,
        tls=_get(table, "tls", bool, False),
        ca_file=_path(base, ca) if ca else None,
        username=_get(table, "username", str, ""),
        password_file=_path(base, pw) if pw else None,
        keepalive=keepalive,
    )


def _rebuilder(table: object, base: Path) -> RebuilderConfig:
    if not isinstance(table, dict):
        raise ConfigError("[[rebuilder]] entries must be tables")
    rid = _get(table, "id", str, "")
    pem = table.get("public_key")
    pem_file = table.get("public_key_file")
    if (pem is None) == (pem_file is None):
        raise ConfigError(f"rebuilder {rid!r}: give exactly one of public_key, public_key_file")
    try:
        if pem_file is not None:
            if not isinstance(pem_file, str):
                raise ConfigError(f"rebuilder {rid!r}: public_key_file must be a path string")
            pem = _path(base, pem_file).read_bytes()
        if not isinstance(pem, (str, bytes)):
            raise ConfigError(f"rebuilder {rid!r}: public_key must be a PEM string")
        key = load_public_key(pem)
    except (OSError, BadDataError) as e:
        raise ConfigError(f"rebuilder {rid!r}: cannot load its public key: {e}") from e
    origin = _get(table, "log_origin", str, "")
    if origin and not _NAME.fullmatch(origin):
        raise ConfigError(f"rebuilder {rid!r}: log_origin {origin!r} must match {_NAME.pattern}")
    return RebuilderConfig(
        id=rid,
        operator=_get(table, "operator", str, ""),
        url=_check_url(_get(table, "url", str, ""), f"rebuilder {rid} url"),
        public_key=key,
        log_origin=origin,
    )


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:/-]{0,254}")


def _witness(table: object, base: Path) -> WitnessConfig:
    if not isinstance(table, dict):
        raise ConfigError("[witness] must be a table")
    known = {"enabled", "name", "key_file", "state", "prefix", "monitor_interval",
             "monitor_batch"}
    if set(table) - known:
        raise ConfigError(f"[witness] has unknown keys {sorted(set(table) - known)}")
    name = _get(table, "name", str, "")
    if name and not _NAME.fullmatch(name):
        raise ConfigError(f"[witness] name {name!r} must match {_NAME.pattern}")
    prefix = _get(table, "prefix", str, "/witness")
    if not re.fullmatch(r"(/[A-Za-z0-9._-]+)+", prefix) or prefix.startswith("/v1"):
        raise ConfigError(f"[witness] prefix {prefix!r} must be a path like /witness")
    interval = float(_get(table, "monitor_interval", (int, float), 60))
    if not 1 <= interval <= 86400:
        raise ConfigError("[witness] monitor_interval must be 1-86400 seconds")
    batch = _get(table, "monitor_batch", int, 4096)
    if isinstance(batch, bool) or not 1 <= batch <= 1_000_000:
        raise ConfigError("[witness] monitor_batch must be 1-1000000 entry bundles")
    return WitnessConfig(
        enabled=_get(table, "enabled", bool, True),
        name=name,
        key_file=_path(base, _get(table, "key_file", str, "witness.pem")),
        state=_path(base, _get(table, "state", str, "witness.db")),
        prefix=prefix,
        monitor_interval=interval,
        monitor_batch=batch,
    )


def parse_config(data: dict[str, Any], base: Path) -> CoordinatorConfig:
    """Build a ``CoordinatorConfig`` from a parsed TOML document; ``base`` resolves paths."""
    unknown = set(data) - {"coordinator", "mqtt", "rebuilder", "witness"}
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}")
    c = data.get("coordinator", {})
    if not isinstance(c, dict):
        raise ConfigError("[coordinator] must be a table")
    known = {
        "listen",
        "public_url",
        "database",
        "catchup_interval",
        "online_after",
        "verify_workers",
    }
    if set(c) - known:
        raise ConfigError(f"[coordinator] has unknown keys {sorted(set(c) - known)}")
    host, port = _listen(_get(c, "listen", str, "127.0.0.1:8500"))
    mqtt = data.get("mqtt", {})
    if not isinstance(mqtt, dict):
        raise ConfigError("[mqtt] must be a table")
    rebuilders = data.get("rebuilder", [])
    if not isinstance(rebuilders, list):
        raise ConfigError("[[rebuilder]] must be an array of tables")
    return CoordinatorConfig(
        listen_host=host,
        listen_port=port,
        public_url=_check_url(
            _get(c, "public_url", str, f"http://{host}:{port}"), "public_url"
        ),
        database=_path(base, _get(c, "database", str, "coordinator.db")),
        catchup_interval=float(_get(c, "catchup_interval", (int, float), 60)),
        online_after=float(_get(c, "online_after", (int, float), 120)),
        verify_workers=_get(c, "verify_workers", int, -1),
        mqtt=_mqtt(mqtt, base),
        rebuilders=tuple(_rebuilder(r, base) for r in rebuilders),
        witness=_witness(data.get("witness", {}), base),
    )


def load_config(path: Path) -> CoordinatorConfig:
    """Read and validate a ``coordinator.toml``; raises ``ConfigError`` naming what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is over {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    return parse_config(data, path.parent.resolve())
