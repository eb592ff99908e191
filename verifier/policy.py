"""The verifier policy: which rebuilders to trust and how many must agree (ARCHITECTURE §4.4).

A policy is a TOML file; ``Policy.load(path)`` reads and validates it and refuses anything
ambiguous with a ``ConfigError`` naming the entry at fault::

    policy = Policy.load(Path("/etc/repro-quorum/policy.toml"))
    policy.threshold, [r.id for r in policy.rebuilders]

Every check lives in the constructors, so an invalid ``Policy`` cannot exist.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from verifier.errors import BadDataError, ConfigError
from verifier.keys import Ed25519PublicKey, KeyId, keyid, load_public_key
from verifier.statement import Digest
from verifier.tlog.inclusion import LogPolicy

__all__ = [
    "DEFAULT_DECISION_LOG",
    "DEFAULT_POLICY_PATH",
    "MODES",
    "Distrust",
    "Policy",
    "Scope",
    "TrustedRebuilder",
]

DEFAULT_POLICY_PATH = Path("/etc/repro-quorum/policy.toml")
MAX_POLICY_BYTES = 1024 * 1024
MAX_REBUILDERS = 256

# Rebuilder and operator ids (docs/verifier.md): lowercase ASCII letters, digits, ".", "_", "-",
# 1 to 63 characters, starting with a letter or digit. Compared exactly: "op-a", "OP-A", "op-a "
# and "op\u2010a" (a Unicode hyphen) would otherwise be four operators.
_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ID_GRAMMAR = (
    "lowercase ASCII letters, digits, '.', '_' and '-', 1-63 characters, first a letter or digit"
)
MAX_CLOCK_SKEW_MINUTES = 24 * 60
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOP_KEYS = frozenset(
    {
        "threshold",
        "require_distinct_operators",
        "reject_on_mismatch",
        "max_age_days",
        "max_clock_skew_minutes",
        "rebuilder",
        "log",  # [log], [[witness]], witness_threshold: verifier/tlog/inclusion.py (branch tlog)
        "witness",
        "witness_threshold",
        "distrust",
        "mode",
        "scope",
        "decision_log",
    }
)
_REBUILDER_KEYS = frozenset({"id", "operator", "url", "public_key", "public_key_file"})
_DISTRUST_KEYS = frozenset({"keyids", "digests"})
_SCOPE_KEYS = frozenset({"origins", "labels", "sites"})
MODES = ("enforce", "dry-run")
DEFAULT_DECISION_LOG = Path("/var/log/repro-quorum/decisions.jsonl")


class _UnknownKeys(ConfigError):
    """Keys the policy format does not have; ``table`` is "", "rebuilder" or "distrust"."""

    def __init__(self, where: str, unknown: list[str], allowed: frozenset[str], table: str,
                 index: int = 0) -> None:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(allowed), n=1, cutoff=0.6)
            if close:
                hints.append(f"did you mean {close[0]!r} for {k!r}?")
        super().__init__(
            f"policy: {where} {', '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else "")
        )
        self.key, self.table, self.index = unknown[0], table, index


_KEY_LINE = re.compile(r"""\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=(.*)""")


def _locate(text: str, error: ConfigError) -> int | None:
    """The line of ``text`` an error from ``Policy.from_dict`` is about, when it can be told:
    the unknown or invalid key, else the rebuilder entry or the table it names."""
    entries: list[tuple[int, str, int, str | None, str]] = []  # line, table, entry, key, value
    table, index, rebuilders = "", 0, 0
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[[rebuilder]]"):
            rebuilders += 1
            table, index = "rebuilder", rebuilders
            entries.append((n, table, index, None, ""))
        elif stripped.startswith("["):
            table, index = stripped.strip("[]").split("]")[0].strip(), 0
            entries.append((n, table, index, None, ""))
        elif m := _KEY_LINE.match(line):
            key = next(g for g in m.groups()[:3] if g)
            entries.append((n, table, index, key, m.group(4).strip().strip("\"'")))

    def find(table: str, index: int, key: str | None) -> int | None:
        return next((n for n, t, i, k, _ in entries if (t, i, k) == (table, index, key)), None)

    message = str(error).removeprefix("policy: ")
    if isinstance(error, _UnknownKeys):
        return find(error.table or "", error.index, error.key)
    if m := re.match(r"\[\[rebuilder\]\] #(\d+)", message):
        return find("rebuilder", int(m.group(1)), None)
    if m := re.match(r"rebuilder (?:id )?'([^']*)'", message):
        rest = message[m.end():]
        for n, t, i, k, v in entries:
            if t == "rebuilder" and k == "id" and v == m.group(1):
                named = [key for key in sorted(_REBUILDER_KEYS, key=len, reverse=True)
                         if re.search(rf"\b{key}\b", rest)]
                return (find("rebuilder", i, named[0]) if named else None) or n
        return None
    if message.startswith("[distrust]"):
        named = [key for key in _DISTRUST_KEYS if re.search(rf"\b{key[:-1]}", message)]
        return (find("distrust", 0, named[0]) if named else None) or find("distrust", 0, None)
    return next((find("", 0, k) for k in _TOP_KEYS if message.startswith(f"{k} ")), None)


def _refuse_world_writable(fd: int, path: Path) -> None:
    """Whoever can write the policy or a key file chooses what gets installed."""
    if os.fstat(fd).st_mode & stat.S_IWOTH:
        raise ConfigError(f"policy: {path} is writable by everyone; run chmod o-w {path}")


def _suggest_id(text: str) -> str:
    """A valid id close to ``text``, for the error message only (never applied silently)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-._")[:63]
    return slug or "operator-name"


def _int(value: object, name: str, minimum: int) -> int:
    # bool is a subclass of int: `threshold = true` must not read as 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"policy: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"policy: {name} must be at least {minimum}, got {value}")
    return value


def _path(value: object, name: str, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"policy: {name} must be a path")
    return base_dir / value  # an absolute path stays as it is


@dataclass(frozen=True, slots=True)
class TrustedRebuilder:
    """One ``[[rebuilder]]`` entry: who runs it, where to ask, which key signs for it."""

    id: str
    operator: str
    url: str
    public_key: Ed25519PublicKey = field(compare=False, repr=False)
    keyid: KeyId = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise ConfigError(f"policy: rebuilder id {self.id!r} must be {ID_GRAMMAR}")
        if not isinstance(self.operator, str) or not self.operator.strip():
            raise ConfigError(f"policy: rebuilder {self.id!r} has an empty operator")
        if not _ID.fullmatch(self.operator):
            raise ConfigError(
                f"policy: rebuilder {self.id!r} operator {self.operator!r} must be {ID_GRAMMAR}"
                f" (operators are compared exactly), e.g. {_suggest_id(self.operator)!r}"
            )
        if not isinstance(self.url, str):
            raise ConfigError(f"policy: rebuilder {self.id!r} url must be a string")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc or len(self.url) > 2048:
            raise ConfigError(
                f"policy: rebuilder {self.id!r} url {self.url!r} is not an http(s) URL"
            )
        if not isinstance(self.public_key, Ed25519PublicKey):
            raise ConfigError(f"policy: rebuilder {self.id!r} public key is not Ed25519")
        object.__setattr__(self, "keyid", keyid(self.public_key))

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @classmethod
    def from_dict(cls, d: object, index: int, base_dir: Path) -> TrustedRebuilder:
        where = f"[[rebuilder]] #{index + 1}"
        if not isinstance(d, dict):
            raise ConfigError(f"policy: {where} is not a table")
        rid = d.get("id")
        if isinstance(rid, str):
            where = f"rebuilder {rid!r}"
        unknown = sorted(set(d) - _REBUILDER_KEYS)
        if unknown:
            raise _UnknownKeys(f"{where} has unknown keys", unknown, _REBUILDER_KEYS,
                               "rebuilder", index + 1)
        for required in ("id", "operator", "url"):
            if required not in d:
                raise ConfigError(f"policy: {where} lacks {required!r}")
        has_inline, has_file = "public_key" in d, "public_key_file" in d
        if has_inline == has_file:
            raise ConfigError(
                f"policy: {where} needs exactly one of public_key and public_key_file"
            )
        if has_inline:
            pem = d["public_key"]
            if not isinstance(pem, str):
                raise ConfigError(f"policy: {where} public_key must be a PEM string")
            source = "public_key"
        else:
            name = d["public_key_file"]
            if not isinstance(name, str) or not name:
                raise ConfigError(f"policy: {where} public_key_file must be a path")
            path = base_dir / name
            source = f"public_key_file {path}"
            try:
                with path.open("rb") as f:
                    _refuse_world_writable(f.fileno(), path)
                    pem = f.read(64 * 1024).decode("ascii")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"policy: {where} cannot read {source}: {e}") from e
        try:
            key = load_public_key(pem)
        except BadDataError as e:
            raise ConfigError(f"policy: {where} {source} is unusable: {e.reason}") from e
        return cls(id=rid, operator=d["operator"], url=d["url"], public_key=key)  # type: ignore[arg-type]  # types checked in __post_init__


@dataclass(frozen=True, slots=True)
class Distrust:
    """Withdrawn keys and artifacts that must never pass."""

    keyids: frozenset[KeyId] = frozenset()
    digests: frozenset[Digest] = frozenset()

    def __post_init__(self) -> None:
        for k in self.keyids:
            if not isinstance(k, str) or not _HEX64.fullmatch(k):
                raise ConfigError(f"policy: [distrust] keyid {k!r} is not a lowercase hex sha256")
        for d in self.digests:
            if not isinstance(d, str) or not _HEX64.fullmatch(d):
                raise ConfigError(
                    f"policy: [distrust] digest {d!r} is not a lowercase hex sha256"
                )

    @classmethod
    def from_dict(cls, d: object) -> Distrust:
        if not isinstance(d, dict):
            raise ConfigError("policy: [distrust] is not a table")
        unknown = sorted(set(d) - _DISTRUST_KEYS)
        if unknown:
            raise _UnknownKeys("[distrust] has unknown keys", unknown, _DISTRUST_KEYS, "distrust")

        def strings(name: str) -> list[str]:
            v = d.get(name, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"policy: [distrust] {name} must be a list of strings")
            # "sha256:<hex>" is accepted as well as bare hex; upper case is normalized.
            return [x.strip().lower().removeprefix("sha256:") for x in v]

        return cls(
            keyids=frozenset(KeyId(k) for k in strings("keyids")),
            digests=frozenset(Digest(x) for x in strings("digests")),
        )


@dataclass(frozen=True, slots=True)
class Scope:
    """``[scope]``: check only packages from these repositories (APT's Origin, Label, or the
    site a repository is reached at); anything else, a local .deb included, is not checked."""

    origins: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    sites: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not (self.origins or self.labels or self.sites):
            raise ConfigError("policy: [scope] lists no origins, labels or sites; remove it to"
                              " check every package")

    def covers(self, origin: str | None, label: str | None, site: str) -> bool:
        return (origin in self.origins) or (label in self.labels) or (site in self.sites)

    def describe(self) -> str:
        parts = [f"{what} {', '.join(sorted(v))}" for what, v in
                 (("origins", self.origins), ("labels", self.labels), ("sites", self.sites)) if v]
        return "; ".join(parts)

    @classmethod
    def from_dict(cls, d: object) -> Scope:
        if not isinstance(d, dict):
            raise ConfigError("policy: [scope] is not a table")
        unknown = sorted(set(d) - _SCOPE_KEYS)
        if unknown:
            raise ConfigError(f"policy: [scope] has unknown keys {', '.join(unknown)}")
        out: dict[str, frozenset[str]] = {}
        for name in _SCOPE_KEYS:
            v = d.get(name, [])
            if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                raise ConfigError(f"policy: [scope] {name} must be a list of non-empty strings")
            out[name] = frozenset(v)
        return cls(**out)


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated verifier policy. ``load`` / ``from_toml`` / ``from_dict`` build one."""

    threshold: int
    rebuilders: tuple[TrustedRebuilder, ...]
    require_distinct_operators: bool = True
    reject_on_mismatch: int = 1
    max_age_days: int = 0
    max_clock_skew_minutes: int = 10  # how far in the future a finishedOn may be
    distrust: Distrust = Distrust()
    mode: str = "enforce"  # "dry-run": the APT hook reports what it would refuse, refuses nothing
    scope: Scope | None = None  # None: every package is checked
    decision_log: Path = DEFAULT_DECISION_LOG  # the APT hook's append-only record
    source: str = field(default="<policy>", compare=False)
    log: LogPolicy = field(default_factory=LogPolicy)

    def __post_init__(self) -> None:
        _int(self.threshold, "threshold", 1)
        _int(self.reject_on_mismatch, "reject_on_mismatch", 0)
        _int(self.max_age_days, "max_age_days", 0)
        if self.mode not in MODES:
            raise ConfigError(f"policy: mode {self.mode!r} must be one of {', '.join(MODES)}")
        _int(self.max_clock_skew_minutes, "max_clock_skew_minutes", 0)
        if self.max_clock_skew_minutes > MAX_CLOCK_SKEW_MINUTES:
            raise ConfigError(
                f"policy: max_clock_skew_minutes {self.max_clock_skew_minutes} is over a day"
                f" ({MAX_CLOCK_SKEW_MINUTES}); a clock that far off should be fixed, not allowed"
            )
        if not isinstance(self.require_distinct_operators, bool):
            raise ConfigError("policy: require_distinct_operators must be true or false")
        if not self.rebuilders:
            raise ConfigError("policy: no [[rebuilder]] entries")
        if len(self.rebuilders) > MAX_REBUILDERS:
            raise ConfigError(f"policy: {len(self.rebuilders)} rebuilders, limit {MAX_REBUILDERS}")
        seen_ids: set[str] = set()
        seen_keys: dict[KeyId, str] = {}
        for r in self.rebuilders:
            if r.id in seen_ids:
                raise ConfigError(f"policy: rebuilder id {r.id!r} is listed twice")
            seen_ids.add(r.id)
            if r.keyid in seen_keys:
                raise ConfigError(
                    f"policy: rebuilder {r.id!r} has the same public key as"
                    f" {seen_keys[r.keyid]!r} (keyid {r.keyid}); one key must count once"
                )
            seen_keys[r.keyid] = r.id
        if self.threshold > len(self.rebuilders):
            raise ConfigError(
                f"policy: threshold {self.threshold} is above the number of rebuilders"
                f" ({len(self.rebuilders)}); no decision could ever pass"
            )
        operators = {r.operator for r in self.rebuilders}
        if self.require_distinct_operators and self.threshold > len(operators):
            raise ConfigError(
                f"policy: threshold {self.threshold} needs {self.threshold} distinct operators"
                f" but the rebuilders belong to only {len(operators)}"
                f" ({', '.join(sorted(operators))}); add rebuilders of other operators or set"
                " require_distinct_operators = false"
            )

    def rebuilder(self, rebuilder_id: str) -> TrustedRebuilder | None:
        for r in self.rebuilders:
            if r.id == rebuilder_id:
                return r
        return None

    @property
    def keys(self) -> Mapping[KeyId, TrustedRebuilder]:
        return {r.keyid: r for r in self.rebuilders}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: Path, source: str = "<policy>") -> Policy:
        unknown = sorted(set(d) - _TOP_KEYS)
        if unknown:
            raise _UnknownKeys("unknown top-level keys", unknown, _TOP_KEYS, "")
        if "threshold" not in d:
            raise ConfigError("policy: threshold is missing")
        raw_rebuilders = d.get("rebuilder", [])
        if not isinstance(raw_rebuilders, list):
            raise ConfigError("policy: rebuilder must be an array of tables ([[rebuilder]])")
        if len(raw_rebuilders) > MAX_REBUILDERS:
            raise ConfigError(f"policy: {len(raw_rebuilders)} rebuilders, limit {MAX_REBUILDERS}")
        rebuilders = tuple(
            TrustedRebuilder.from_dict(r, i, base_dir) for i, r in enumerate(raw_rebuilders)
        )
        return cls(
            threshold=d["threshold"],
            rebuilders=rebuilders,
            require_distinct_operators=d.get("require_distinct_operators", True),
            reject_on_mismatch=d.get("reject_on_mismatch", 1),
            max_age_days=d.get("max_age_days", 0),
            max_clock_skew_minutes=d.get("max_clock_skew_minutes", 10),
            distrust=Distrust.from_dict(d.get("distrust", {})),
            mode=d.get("mode", "enforce"),
            scope=Scope.from_dict(d["scope"]) if "scope" in d else None,
            decision_log=_path(d.get("decision_log", str(DEFAULT_DECISION_LOG)), "decision_log",
                               base_dir),
            source=source,
            log=LogPolicy.from_dict(d.get("log", {}), d.get("witness", []),
                                    d.get("witness_threshold", 0), base_dir),
        )

    @classmethod
    def from_toml(cls, text: str, base_dir: Path, source: str = "<policy>") -> Policy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:  # its message names the line and column
            raise ConfigError(f"policy: {source} is not valid TOML: {e}") from e
        try:
            return cls.from_dict(data, base_dir, source)
        except ConfigError as e:
            # Name the file and the line: "policy: /etc/.../policy.toml, line 3: ..."
            line = _locate(text, e)
            place = ", ".join(p for p in (
                source if source != "<policy>" else "", f"line {line}" if line else ""
            ) if p)
            if not place:
                raise
            raise ConfigError(f"policy: {place}: {str(e).removeprefix('policy: ')}") from e

    @classmethod
    def load(cls, path: Path) -> Policy:
        """Read a policy file; ``public_key_file`` paths are relative to its directory."""
        try:
            with path.open("rb") as f:
                _refuse_world_writable(f.fileno(), path)
                data = f.read(MAX_POLICY_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"policy: cannot read {path}: {e.strerror or e}") from e
        if len(data) > MAX_POLICY_BYTES:
            raise ConfigError(f"policy: {path} is over {MAX_POLICY_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"policy: {path} is not UTF-8") from e
        return cls.from_toml(text, path.parent, str(path))
