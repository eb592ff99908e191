"""What APT and dpkg know about a machine: installed packages, downloaded .debs, repositories.

Read-only, from the files themselves (no python-apt): dpkg's ``status`` file, APT's package cache
(``/var/cache/apt/archives``) and APT's lists (``/var/lib/apt/lists``: each repository's
``Packages`` indexes and its ``InRelease``/``Release``, which name its ``Origin`` and ``Label``).
``verifier audit`` uses them to find the .deb digest of each installed package; the APT hook uses
them to tell which repository a .deb came from, for the policy's ``[scope]``::

    lists = AptLists.read(Path("/var/lib/apt/lists"))
    lists.repository_of(sha256)            # RepositoryInfo(origin, label, site, suite) or None
    lists.find("hello", "2.10-3", "amd64")  # IndexEntry with its SHA256 and Source, or None

The index scanner reads only the fields it needs, a stanza at a time: a full Debian ``main``
index (60k packages) takes about a second, where a general deb822 parser takes many.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from verifier.debian import DebIdentity, parse_control
from verifier.errors import BadDataError

__all__ = [
    "DEFAULT_ADMINDIR",
    "DEFAULT_APT_CACHE",
    "DEFAULT_APT_LISTS",
    "AptLists",
    "IndexEntry",
    "InstalledPackage",
    "RepositoryInfo",
    "cached_deb",
    "read_installed",
]

DEFAULT_ADMINDIR = Path("/var/lib/dpkg")
DEFAULT_APT_CACHE = Path("/var/cache/apt/archives")
DEFAULT_APT_LISTS = Path("/var/lib/apt/lists")
MAX_INDEX_BYTES = 1024 * 1024 * 1024  # decompressed, per index file
MAX_STATUS_BYTES = 256 * 1024 * 1024
APT_HELPER = "/usr/lib/apt/apt-helper"
_COMPRESSED = frozenset({".gz", ".xz", ".bz2", ".lz4", ".zst"})

_FIELD = re.compile(rb"^(Package|Version|Architecture|Source|SHA256|Status):[ \t]*(.*?)[ \t]*$",
                    re.MULTILINE)
_RELEASE_FIELD = re.compile(rb"^(Origin|Label|Suite|Codename):[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    name: str
    version: str
    architecture: str
    source: str | None  # the control field: "name" or "name (version)"; None: same as the binary

    def identity(self) -> DebIdentity:
        """The identity the decision matches statements against (``BadDataError`` if odd)."""
        return parse_control(self.name, self.version, self.architecture, self.source)

    @property
    def cache_name(self) -> str:
        """The file name APT gives this package in its cache (an epoch's ':' as %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


@dataclass(frozen=True, slots=True)
class RepositoryInfo:
    site: str  # host (and port) the repository is reached at
    origin: str | None
    label: str | None
    suite: str | None


@dataclass(frozen=True, slots=True)
class IndexEntry:
    package: InstalledPackage
    sha256: str
    repository: RepositoryInfo


def _stanzas(data: bytes) -> Iterator[dict[bytes, bytes]]:
    for block in re.split(rb"\n[ \t]*\n", data):
        fields = {m.group(1): m.group(2) for m in _FIELD.finditer(block)}
        if fields:
            yield fields


def _package(fields: dict[bytes, bytes]) -> InstalledPackage | None:
    try:
        name = fields[b"Package"].decode("ascii")
        version = fields[b"Version"].decode("ascii")
        arch = fields[b"Architecture"].decode("ascii")
        source = fields[b"Source"].decode("ascii") if b"Source" in fields else None
    except (KeyError, UnicodeDecodeError):
        return None
    return InstalledPackage(name, version, arch, source)


def _read_capped(path: Path, limit: int) -> bytes:
    """A file's content, decompressed the way APT stored it (gz, xz, bz2, lz4, zst)."""
    if path.suffix not in _COMPRESSED:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    else:
        # APT's own helper knows every compression APT writes its lists with (lz4 on many
        # machines, which Python's standard library cannot read).
        with subprocess.Popen([APT_HELPER, "cat-file", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            data = proc.stdout.read(limit + 1)
            proc.kill()
        if proc.returncode not in (0, -9) or (proc.returncode == -9 and len(data) <= limit):
            raise BadDataError("apt index", f"{APT_HELPER} cat-file {path} failed")
    if len(data) > limit:
        raise BadDataError("apt index", f"{path} is over {limit} bytes")
    return data


def read_installed(admindir: Path = DEFAULT_ADMINDIR) -> list[InstalledPackage]:
    """Every package dpkg's status file says is installed (``install ok installed``)."""
    path = admindir / "status"
    try:
        data = _read_capped(path, MAX_STATUS_BYTES)
    except OSError as e:
        raise BadDataError("dpkg status", f"cannot read {path}: {e.strerror or e}") from e
    out = []
    for fields in _stanzas(data):
        if fields.get(b"Status", b"").split()[-1:] != [b"installed"]:
            continue
        pkg = _package(fields)
        if pkg is not None:
            out.append(pkg)
    return out


def cached_deb(package: InstalledPackage, cache: Path = DEFAULT_APT_CACHE) -> Path | None:
    path = cache / package.cache_name
    return path if path.is_file() else None


def _site(prefix: str) -> str:
    """The host (and port) of a lists file name; ``file:<path>`` for a local repository, whose
    name is its path with each ``/`` written ``_`` (a real ``_`` is ``%5f``)."""
    first = prefix.split("_", 1)[0]
    if first:
        return unquote(first)
    path = prefix.split("_dists_", 1)[0].removesuffix("_Packages").removesuffix("_.")
    return "file:" + unquote(path.replace("_", "/"))


def _repository(list_name: str, releases: dict[str, RepositoryInfo]) -> RepositoryInfo:
    """The repository of a lists file, from its name: ``<site>_<path>_dists_<suite>_...``."""
    head, sep, _ = list_name.partition("_dists_")
    if sep:
        suite_dir = list_name[len(head) + len("_dists_"):].split("_", 1)[0]
        info = releases.get(f"{head}_dists_{suite_dir}")
        if info is not None:
            return info
    return RepositoryInfo(site=_site(list_name), origin=None, label=None, suite=None)


class AptLists:
    """APT's downloaded indexes, read once."""

    def __init__(self, entries: list[IndexEntry]) -> None:
        self._by_digest: dict[str, list[IndexEntry]] = {}
        self._by_package: dict[tuple[str, str, str], list[IndexEntry]] = {}
        for e in entries:
            self._by_digest.setdefault(e.sha256, []).append(e)
            key = (e.package.name, e.package.version, e.package.architecture)
            self._by_package.setdefault(key, []).append(e)

    @classmethod
    def read(cls, lists: Path = DEFAULT_APT_LISTS) -> AptLists:
        if not lists.is_dir():
            return cls([])
        releases: dict[str, RepositoryInfo] = {}
        for path in sorted(lists.iterdir()):
            for suffix in ("_InRelease", "_Release"):
                if path.name.endswith(suffix):
                    prefix = path.name[: -len(suffix)]
                    if prefix in releases:
                        continue
                    try:
                        data = _read_capped(path, 64 * 1024 * 1024)
                    except OSError:
                        continue
                    # A clearsigned InRelease has an armour header first; no field matches it.
                    f: dict[bytes, str] = {}
                    for m in _RELEASE_FIELD.finditer(data):
                        f.setdefault(m.group(1), m.group(2).decode("utf-8", "replace"))
                    releases[prefix] = RepositoryInfo(
                        site=_site(prefix), origin=f.get(b"Origin"),
                        label=f.get(b"Label"), suite=f.get(b"Suite") or f.get(b"Codename"))
        entries: list[IndexEntry] = []
        for path in sorted(lists.iterdir()):
            stem = path.name
            for suffix in _COMPRESSED:
                stem = stem.removesuffix(suffix)
            if not stem.endswith("_Packages"):
                continue
            repo = _repository(stem, releases)
            try:
                data = _read_capped(path, MAX_INDEX_BYTES)
            except OSError as e:
                raise BadDataError("apt index", f"cannot read {path}: {e}") from e
            for fields in _stanzas(data):
                pkg = _package(fields)
                sha = fields.get(b"SHA256", b"").decode("ascii", "replace").lower()
                if pkg is not None and _HEX64.fullmatch(sha):
                    entries.append(IndexEntry(pkg, sha, repo))
        return cls(entries)

    def repository_of(self, sha256: str) -> list[RepositoryInfo]:
        return [e.repository for e in self._by_digest.get(sha256, [])]

    def find(self, name: str, version: str, arch: str) -> list[IndexEntry]:
        return list(self._by_package.get((name, version, arch), []))
