"""The node's ``config.toml``, parsed into typed, frozen, bounded dataclasses.

Every key of docs/configuration.md is read here and nowhere else; a bad value raises
``ConfigError`` naming the key, what was seen and what is allowed::

    config = load_config(Path("/var/lib/rebuilder/config.toml"))
    config.node.id, config.build.parallel, config.repositories[0].suite
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from verifier.errors import ConfigError
from verifier.tlog.note import ALG_COSIGNATURE_V1, NoteError, NoteVerifier
from verifier.tomlconf import (
    REBUILDER_ID,
    MqttConfig,
    RebuilderIdentity,
    http_url,
    in_file,
    parse_mqtt,
    read_toml,
)
from verifier.tomlconf import Table as _Section

__all__ = [
    "BuildConfig",
    "BuildSuite",
    "Config",
    "ConfigError",
    "DiffoscopeConfig",
    "LogConfig",
    "MqttConfig",
    "NodeConfig",
    "RepositoryConfig",
    "WitnessConfig",
    "load_config",
    "parse_config",
    "parse_listen",
]

MAX_CONFIG_BYTES = 256 * 1024
NODE_ID = REBUILDER_ID  # one grammar: the node's id is what the coordinator registers
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SUITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
_ARCH = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# buildinfo_url placeholders (docs/configuration.md, "Finding the buildinfo")
TEMPLATE_FIELDS = frozenset({"base", "source", "version", "version_noepoch", "arch", "pool_prefix"})
DEFAULT_BUILDINFO_URL = "{base}/buildinfo/{source}_{version_noepoch}_{arch}.buildinfo"


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
    def identity(self) -> RebuilderIdentity:
        """The node as the coordinator registers it: id, operator, public URL."""
        return RebuilderIdentity(self.id, self.operator, self.public_url)

    @property
    def builder_id(self) -> str:
        """The URI naming this node in its attestations' ``runDetails.builder.id``."""
        return f"{self.public_url.rstrip('/')}/v1/node"


@dataclass(frozen=True)
class BuildSuite:
    """One suite the repository's builds install pinned dependencies from (mmdebstrap mode)."""

    suite: str
    mirror: str
    components: tuple[str, ...] = ("main",)
    keyring: Path | None = None


@dataclass(frozen=True)
class RepositoryConfig:
    name: str
    base_url: str
    suite: str
    components: tuple[str, ...]
    architectures: tuple[str, ...]
    buildinfo_url: str
    poll_interval: int
    # Authentication (docs/configuration.md): the keyring InRelease/Release.gpg must verify
    # under (APT's Signed-By), or trusted = true for an unsigned repository (loudly logged).
    signed_by: Path | None = None
    trusted: bool = False
    uploader_keyring: Path | None = None  # .dsc signatures (Debian: debian-keyring)
    require_signed_source: bool = False
    max_index_entries: int = 200_000  # per Packages/Sources index
    max_index_mb: int = 256  # decompressed, per index
    # where pins are looked up, in order; empty: the repository itself (base_url, suite)
    build_suites: tuple[BuildSuite, ...] = ()

    @property
    def label(self) -> str:
        """What an attestation's ``externalParameters.repository`` says: URL and suite."""
        return f"{self.base_url} {self.suite}"

    def buildinfo_for(self, source: str, version: str, arch: str) -> str:
        """The first candidate of ``buildinfo_candidates``."""
        return self.buildinfo_candidates(source, version, arch)[0]

    def buildinfo_candidates(self, source: str, version: str, arch: str) -> tuple[str, ...]:
        """Where the buildinfo of ``source`` at ``version`` (what was built: the binNMU's own
        version for a binNMU) built for job architecture ``arch`` may be, in the order tried.

        Debian names it ``<source>_<version without epoch>_<arch>.buildinfo``, where dpkg's
        ``<arch>`` is the host architecture whenever the build included the arch-dependent
        stage, even for a source with only ``Architecture: all`` packages, and ``all`` only for
        an arch-independent-only build (``-A``, as Debian's buildds do). So an ``all`` job tries
        ``all`` first, then each configured build architecture in config order; any other job
        tries its own architecture only.
        """
        noepoch = version.split(":", 1)[1] if ":" in version else version
        archs = [arch]
        if arch == "all":
            archs += [a for a in self.architectures if a != "all"]
        urls = (
            self.buildinfo_url.format(
                base=self.base_url.rstrip("/"),
                source=source,
                version=version,
                version_noepoch=noepoch,
                arch=a,
                pool_prefix=source[:4] if source.startswith("lib") else source[:1],
            )
            for a in archs
        )
        return tuple(dict.fromkeys(urls))  # a template without {arch} gives one URL


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
    max_memory_mb: int = 8192
    max_processes: int = 4096
    snapshot_url: str | None = None  # snapshot.debian.org's API for pins in no build suite
    chroot_cache_mb: int = 20480  # mmdebstrap chroot cache cap (LRU); 0 = none


@dataclass(frozen=True)
class DiffoscopeConfig:
    enabled: bool = True
    timeout: int = 600
    max_report_mb: int = 20


@dataclass(frozen=True)
class WitnessConfig:
    """A witness this node submits its checkpoints to (C2SP tlog-witness)."""

    name: str
    key: str  # vkey with signature type 0x04
    url: str  # submission prefix; POST <url>/add-checkpoint


@dataclass(frozen=True)
class LogConfig:
    """[log] and [[witness]]: the node's transparency log (ARCHITECTURE §4.9)."""

    origin: str = ""  # "" = the public URL without scheme + "/log"
    checkpoint_interval: int = 10
    witnesses: tuple[WitnessConfig, ...] = ()


@dataclass(frozen=True)
class Config:
    node: NodeConfig
    mqtt: MqttConfig
    repositories: tuple[RepositoryConfig, ...]
    build: BuildConfig
    diffoscope: DiffoscopeConfig
    path: Path | None = None
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def log_origin(self) -> str:
        """The checkpoint origin (and log key name) of this node's log."""
        if self.log.origin:
            return self.log.origin
        return self.node.public_url.split("://", 1)[1].rstrip("/") + "/log"

    @property
    def log_url(self) -> str:
        """The public URL prefix the log's tiles and checkpoint are served under."""
        return self.node.public_url.rstrip("/") + "/log"

    @property
    def log_dir(self) -> Path:
        return self.node.state_dir / "log"

    def repository(self, name: str) -> RepositoryConfig | None:
        for r in self.repositories:
            if r.name == name:
                return r
        return None


_http_url = http_url



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
    probe = value.format(base="http://h", source="s", version="1", version_noepoch="1", arch="a",
                         pool_prefix="s")
    _http_url(probe, where)
    return value


def parse_config(data: Mapping[str, Any], base_dir: Path, path: Path | None = None) -> Config:
    """Validate a parsed TOML document; relative paths are taken from ``base_dir``."""
    unknown = sorted(set(data) - {"node", "mqtt", "repository", "build", "diffoscope", "log",
                                  "witness"})
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
        min_free_mb=n.integer("min_free_mb", NodeConfig.min_free_mb, 0, 10_000_000),
    )
    if not node.operator.strip():
        raise ConfigError("node.operator must not be empty")

    mqtt = parse_mqtt(data.get("mqtt", {}), base_dir)

    raw_repos = data.get("repository", [])
    if not isinstance(raw_repos, list) or len(raw_repos) > 64:
        raise ConfigError("[[repository]] must be an array of at most 64 tables")
    repos: list[RepositoryConfig] = []
    for i, raw in enumerate(raw_repos):
        r = _Section(f"repository[{i}]", raw, {"name", "base_url", "suite", "components",
                                               "architectures", "buildinfo_url",
                                               "poll_interval", "signed_by", "trusted",
                                               "uploader_keyring", "require_signed_source",
                                               "max_index_entries", "max_index_mb",
                                               "build_suite"})
        signed_by = r.text("signed_by", "", max_len=4096)
        uploaders = r.text("uploader_keyring", "", max_len=4096)
        raw_suites = raw.get("build_suite", [])
        if not isinstance(raw_suites, list) or len(raw_suites) > 16:
            raise ConfigError(f"repository[{i}].build_suite must be at most 16 tables")
        suites = []
        for k, rs in enumerate(raw_suites):
            where = f"repository[{i}].build_suite[{k}]"
            s = _Section(where, rs, {"suite", "mirror", "components", "keyring"})
            keyring = s.text("keyring", "")
            suites.append(BuildSuite(
                suite=s.text("suite", pattern=_SUITE),
                mirror=_http_url(s.text("mirror", max_len=2048), f"{where}.mirror"),
                components=s.texts("components", ["main"], _COMPONENT),
                keyring=_path(base_dir, keyring) if keyring else None,
            ))
        repo = RepositoryConfig(
            name=r.text("name", pattern=_REPO_NAME),
            base_url=_http_url(r.text("base_url", max_len=2048), f"repository[{i}].base_url"),
            suite=r.text("suite", pattern=_SUITE),
            components=r.texts("components", ["main"], _COMPONENT),
            architectures=r.texts("architectures", ["amd64", "all"], _ARCH),
            buildinfo_url=_template(
                r.text("buildinfo_url", DEFAULT_BUILDINFO_URL, max_len=2048),
                f"repository[{i}].buildinfo_url",
            ),
            poll_interval=r.integer("poll_interval", 300, 1, 7 * 86400),
            signed_by=_path(base_dir, signed_by) if signed_by else None,
            trusted=r.boolean("trusted", False),
            uploader_keyring=_path(base_dir, uploaders) if uploaders else None,
            require_signed_source=r.boolean("require_signed_source", False),
            max_index_entries=r.integer("max_index_entries", RepositoryConfig.max_index_entries,
                                        1, 10_000_000),
            max_index_mb=r.integer("max_index_mb", RepositoryConfig.max_index_mb, 1, 65536),
            build_suites=tuple(suites),
        )
        if repo.signed_by is not None and repo.trusted:
            raise ConfigError(f"repository[{i}] sets both signed_by and trusted = true: an "
                              "unsigned repository has no keyring; choose one")
        if repo.require_signed_source and repo.uploader_keyring is None:
            raise ConfigError(f"repository[{i}].require_signed_source = true needs "
                              "uploader_keyring (the keyring .dsc signatures must verify under)")
        if any(x.name == repo.name for x in repos):
            raise ConfigError(f"repository[{i}].name {repo.name!r} is used twice")
        repos.append(repo)

    b = _Section("build", data.get("build", {}), {"environment", "mirror", "timeout",
                                                  "max_disk_mb", "max_output_mb", "max_log_mb",
                                                  "max_source_mb", "parallel",
                                                  "max_memory_mb", "max_processes",
                                                  "snapshot_url", "chroot_cache_mb"})
    snapshot = b.text("snapshot_url", "", max_len=2048)
    env = b.text("environment", BuildConfig.environment)
    if env not in ("host", "mmdebstrap"):
        raise ConfigError(f"build.environment = {env!r} must be 'host' or 'mmdebstrap'")
    build = BuildConfig(
        environment=env,  # type: ignore[arg-type]  # checked just above
        mirror=_http_url(b.text("mirror", BuildConfig.mirror), "build.mirror"),
        timeout=b.integer("timeout", BuildConfig.timeout, 10, 7 * 86400),
        max_disk_mb=b.integer("max_disk_mb", BuildConfig.max_disk_mb, 16, 10_000_000),
        max_output_mb=b.integer("max_output_mb", BuildConfig.max_output_mb, 1, 1_000_000),
        max_log_mb=b.integer("max_log_mb", BuildConfig.max_log_mb, 1, 10_000),
        max_source_mb=b.integer("max_source_mb", BuildConfig.max_source_mb, 1, 1_000_000),
        parallel=b.integer("parallel", BuildConfig.parallel, 1, 64),
        max_memory_mb=b.integer("max_memory_mb", BuildConfig.max_memory_mb, 64, 16_000_000),
        max_processes=b.integer("max_processes", BuildConfig.max_processes, 16, 4_000_000),
        snapshot_url=_http_url(snapshot, "build.snapshot_url") if snapshot else None,
        chroot_cache_mb=b.integer("chroot_cache_mb", BuildConfig.chroot_cache_mb, 0, 100_000_000),
    )
    d = _Section("diffoscope", data.get("diffoscope", {}), {"enabled", "timeout",
                                                            "max_report_mb"})
    diffoscope = DiffoscopeConfig(
        enabled=d.boolean("enabled", DiffoscopeConfig.enabled),
        timeout=d.integer("timeout", DiffoscopeConfig.timeout, 5, 86400),
        max_report_mb=d.integer("max_report_mb", DiffoscopeConfig.max_report_mb, 1, 10_000),
    )
    return Config(node, mqtt, tuple(repos), build, diffoscope, path, _log_config(data))


_ORIGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:/-]{0,254}")
_WITNESS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:/-]{0,254}")


def _log_config(data: Mapping[str, Any]) -> LogConfig:
    lg = _Section("log", data.get("log", {}), {"origin", "checkpoint_interval"})
    origin = lg.text("origin", "", max_len=255)
    if origin and not _ORIGIN.fullmatch(origin):
        raise ConfigError(f"log.origin = {origin!r} does not match {_ORIGIN.pattern}")
    raw = data.get("witness", [])
    if not isinstance(raw, list) or len(raw) > 16:
        raise ConfigError("[[witness]] must be an array of at most 16 tables")
    witnesses: list[WitnessConfig] = []
    for i, w in enumerate(raw):
        ws = _Section(f"witness[{i}]", w, {"name", "key", "url"})
        wc = WitnessConfig(
            name=ws.text("name", pattern=_WITNESS_NAME),
            key=ws.text("key", max_len=1024),
            url=_http_url(ws.text("url", max_len=2048), f"witness[{i}].url"),
        )
        try:
            v = NoteVerifier.from_vkey(wc.key)
        except NoteError as e:
            raise ConfigError(f"witness[{i}].key: {e.reason}") from e
        if v.alg != ALG_COSIGNATURE_V1 or v.name != wc.name:
            raise ConfigError(f"witness[{i}].key must be a type 0x04 vkey named {wc.name!r}")
        if any(x.name == wc.name for x in witnesses):
            raise ConfigError(f"witness[{i}].name {wc.name!r} is used twice")
        witnesses.append(wc)
    return LogConfig(origin=origin,
                     checkpoint_interval=lg.integer("checkpoint_interval", 10, 1, 86400),
                     witnesses=tuple(witnesses))


def load_config(path: Path) -> Config:
    path = path.absolute()
    data = read_toml(path, MAX_CONFIG_BYTES)
    try:
        return parse_config(data, path.parent, path)
    except ConfigError as e:
        raise in_file(e, path) from e
