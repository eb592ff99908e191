"""The coordinator's configuration file (docs/configuration.md), parsed into frozen dataclasses.

Every value is checked when the file is loaded, so the services below never see an invalid one::

    config = load_config(Path("/etc/repro-quorum/coordinator.toml"))
    config.rebuilders[0].keyid   # '3f2a...'

Relative paths (database, key files, password files) are relative to the file's directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from verifier.errors import BadDataError, ConfigError
from verifier.keys import Ed25519PublicKey, KeyId, keyid, load_public_key
from verifier.tomlconf import (
    MqttConfig,
    RebuilderIdentity,
    Table,
    in_file,
    parse_mqtt,
    read_toml,
    resolve,
)

__all__ = [
    "CoordinatorConfig",
    "Limits",
    "MqttConfig",
    "RebuilderConfig",
    "WitnessConfig",
    "load_config",
    "parse_config",
]

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
class RebuilderConfig(RebuilderIdentity):
    """A registered rebuilder: its identity (id as in MQTT topics, operator, public API URL),
    its key and its log's origin."""

    public_key: Ed25519PublicKey = field(compare=False, repr=False)
    keyid: KeyId = field(default=KeyId(""))  # computed from public_key when left empty
    log_origin: str = ""  # its transparency log's origin; "" = url without scheme + "/log"

    @property
    def origin(self) -> str:
        return self.log_origin or self.default_log_origin

    def __post_init__(self) -> None:
        super().__post_init__()
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


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"coordinator.listen {value!r} must be host:port", table="coordinator",
                          key="listen")
    return host.strip("[]"), int(port)


_REBUILDER_KEYS = frozenset({"id", "operator", "url", "public_key", "public_key_file",
                             "log_origin"})


def _rebuilder(raw: object, index: int, base: Path) -> RebuilderConfig:
    t = Table(f"rebuilder[{index}]", raw, _REBUILDER_KEYS)
    rid = t.text("id", "")
    pem: object = t.data.get("public_key")
    pem_file = t.data.get("public_key_file")
    if (pem is None) == (pem_file is None):
        raise t.error("public_key", f"(rebuilder {rid!r}): give exactly one of public_key, "
                      "public_key_file")
    try:
        if pem_file is not None:
            pem = resolve(base, t.text("public_key_file", max_len=4096)).read_bytes()
        if not isinstance(pem, (str, bytes)):
            raise t.error("public_key", f"(rebuilder {rid!r}) must be a PEM string")
        key = load_public_key(pem)
    except (OSError, BadDataError) as e:
        raise t.error("public_key", f"(rebuilder {rid!r}): cannot load its public key: {e}"
                      ) from e
    origin = t.text("log_origin", "", max_len=255)
    if origin and not _NAME.fullmatch(origin):
        raise t.error("log_origin", f"= {origin!r} (rebuilder {rid!r}) must match "
                      f"{_NAME.pattern}")
    try:
        return RebuilderConfig(
            id=rid,
            operator=t.text("operator", "", max_len=1024),
            url=_check_url(t.text("url", "", max_len=4096), f"rebuilder {rid} url"),
            public_key=key,
            log_origin=origin,
        )
    except ConfigError as e:
        raise ConfigError(f"{t.name}: {e}", table=t.name, key=e.key) from e


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:/-]{0,254}")


_WITNESS_KEYS = frozenset({"enabled", "name", "key_file", "state", "prefix",
                           "monitor_interval", "monitor_batch"})


def _witness(raw: object, base: Path) -> WitnessConfig:
    t = Table("witness", raw, _WITNESS_KEYS)
    d = WitnessConfig  # the defaults, written once: on the dataclass
    name = t.text("name", d.name, max_len=255)
    if name and not _NAME.fullmatch(name):
        raise t.error("name", f"= {name!r} must match {_NAME.pattern}")
    prefix = t.text("prefix", d.prefix, max_len=255)
    if not re.fullmatch(r"(/[A-Za-z0-9._-]+)+", prefix) or prefix.startswith("/v1"):
        raise t.error("prefix", f"= {prefix!r} must be a path like /witness")
    return WitnessConfig(
        enabled=t.boolean("enabled", d.enabled),
        name=name,
        key_file=resolve(base, t.text("key_file", str(d.key_file), max_len=4096)),
        state=resolve(base, t.text("state", str(d.state), max_len=4096)),
        prefix=prefix,
        monitor_interval=t.number("monitor_interval", d.monitor_interval, 1, 86400),
        monitor_batch=t.integer("monitor_batch", d.monitor_batch, 1, 1_000_000),
    )


_COORDINATOR_KEYS = frozenset({"listen", "public_url", "database", "catchup_interval",
                               "online_after", "verify_workers"})


def parse_config(data: dict[str, Any], base: Path) -> CoordinatorConfig:
    """Build a ``CoordinatorConfig`` from a parsed TOML document; ``base`` resolves paths."""
    unknown = set(data) - {"coordinator", "mqtt", "rebuilder", "witness"}
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}")
    c = Table("coordinator", data.get("coordinator", {}), _COORDINATOR_KEYS)
    d = CoordinatorConfig  # the defaults, written once: on the dataclass
    host, port = _listen(c.text("listen", f"{d.listen_host}:{d.listen_port}", max_len=300))
    rebuilders = data.get("rebuilder", [])
    if not isinstance(rebuilders, list):
        raise ConfigError("[[rebuilder]] must be an array of tables", table="rebuilder")
    return CoordinatorConfig(
        listen_host=host,
        listen_port=port,
        public_url=_check_url(
            c.text("public_url", f"http://{host}:{port}", max_len=4096), "public_url"
        ),
        database=resolve(base, c.text("database", str(d.database), max_len=4096)),
        catchup_interval=c.number("catchup_interval", d.catchup_interval, 0, 86400),
        online_after=c.number("online_after", d.online_after, 0, 7 * 86400),
        verify_workers=c.integer("verify_workers", d.verify_workers, -1, 64),
        mqtt=parse_mqtt(data.get("mqtt", {}), base),
        rebuilders=tuple(_rebuilder(r, i, base) for i, r in enumerate(rebuilders)),
        witness=_witness(data.get("witness", {}), base),
    )


def load_config(path: Path) -> CoordinatorConfig:
    """Read and validate a ``coordinator.toml``; raises ``ConfigError`` naming what is wrong."""
    data = read_toml(path, MAX_CONFIG_BYTES)
    try:
        return parse_config(data, path.parent.resolve())
    except ConfigError as e:
        raise in_file(e, path) from e
