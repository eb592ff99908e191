"""Finding every pinned build dependency before anything is bootstrapped (ARCHITECTURE §5.2).

A buildinfo pins the exact version of each ``Installed-Build-Depends`` entry. Each pin is looked
up, in order, in the configured suites (several per repository: ``bookworm``,
``bookworm-updates``, ``bookworm-security``, each with its own mirror and keyring) and then in a
snapshot archive implementing snapshot.debian.org's machine-readable API. A pin found nowhere
fails the rebuild at once, naming each one::

    libc6 (= 2.36-9+deb12u4): in no configured suite or snapshot

``resolve`` is the pure core (pins and what each source holds in, a ``Resolution`` out); the
rest is I/O: ``suite_versions`` reads a suite's Release and Packages (off the event loop, cached
by the Packages digest), ``SnapshotClient`` asks ``/mr/binary/<pkg>/<ver>/binfiles?fileinfo=1``
and downloads ``/file/<sha1>``, each file checked against its sha1, size and control fields,
kept in a package cache shared by the node's builds; mmdebstrap then installs them by path
inside the chroot (``environment.prepare_chroot``'s ``local_debs``).

The suites' Release files are read here only to learn which versions exist; their signatures
are checked by apt inside mmdebstrap under each suite's keyring, which is what installs them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp

from rebuilder.debian.buildinfo import Dependency
from rebuilder.debian.indexes import (
    MAX_PACKAGES_BYTES,
    MAX_RELEASE_BYTES,
    check_digest,
    decompress,
    packages_candidates,
    parse_release,
)
from rebuilder.fetch import fetch_bytes
from verifier.debian import canonical_deb_name
from verifier.errors import BadDataError, UnreachableError

__all__ = [
    "MAX_SNAPSHOT_JSON_BYTES",
    "PoolFiles",
    "Resolution",
    "SnapshotClient",
    "SnapshotFile",
    "SuiteSource",
    "pool_file",
    "resolve",
    "scan_packages",
    "suite_index",
    "suite_versions",
]

MAX_SNAPSHOT_JSON_BYTES = 4 * 1024 * 1024
MAX_DEB_BYTES = 1024 * 1024 * 1024
_SHA1 = re.compile(r"[0-9a-f]{40}")
_FIELD = re.compile(rb"^(Package|Version|Architecture):[ \t]*(\S+)[ \t]*$", re.MULTILINE)
_POOL_FIELD = re.compile(rb"^(Package|Version|Architecture|Filename|SHA256):[ \t]*(\S+)[ \t]*$",
                         re.MULTILINE)


@dataclass(frozen=True)
class SuiteSource:
    """One suite pins are looked up in and mmdebstrap installs from."""

    mirror: str  # e.g. http://deb.debian.org/debian
    suite: str  # e.g. bookworm-updates
    components: tuple[str, ...] = ("main",)
    keyring: Path | None = None  # apt's signed-by; None: the chroot's default keyring

    @property
    def label(self) -> str:
        return f"{self.mirror} {self.suite}"

    def apt_line(self) -> str:
        opts = f"[signed-by={self.keyring}] " if self.keyring else ""
        return f"deb {opts}{self.mirror} {self.suite} {' '.join(self.components)}"


@dataclass(frozen=True)
class SnapshotFile:
    """A .deb the snapshot archive has for one pin."""

    name: str  # file name, e.g. libc6_2.36-9+deb12u4_amd64.deb
    package: str
    version: str
    architecture: str
    sha1: str
    size: int | None


@dataclass(frozen=True)
class Resolution:
    """Where each pin was found (the first suite listing it, else the snapshot), or not."""

    suites: dict[Dependency, SuiteSource] = field(default_factory=dict)
    snapshot: dict[Dependency, SnapshotFile] = field(default_factory=dict)
    missing: tuple[Dependency, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing

    def error(self, limit: int = 20) -> str:
        """``name (= version): in no configured suite or snapshot`` per missing pin, the
        first ``limit`` of them (the log has every one)."""
        shown = "; ".join(f"{d}: in no configured suite or snapshot" for d in self.missing[:limit])
        more = len(self.missing) - limit
        return shown + (f"; and {more} more pins (see the log)" if more > 0 else "")

    def summary(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for s in self.suites.values():
            used[s.label] = used.get(s.label, 0) + 1
        if self.snapshot:
            used["snapshot"] = len(self.snapshot)
        return used


Available = frozenset[tuple[str, str, str]]  # (package, architecture, version)
# what a suite's index says of each (package, architecture, version): its pool path and sha256
PoolFiles = dict[tuple[str, str, str], tuple[str, str]]


def _candidates(dep: Dependency, arch: str) -> tuple[tuple[str, str, str], ...]:
    if dep.arch:
        return ((dep.name, dep.arch, dep.version),)
    return ((dep.name, arch, dep.version), (dep.name, "all", dep.version))


def pool_file(dep: Dependency, index: PoolFiles, arch: str) -> tuple[str, str]:
    """Pure: the pool path and sha256 ``index`` gives for ``dep`` (("", "") if it has none)."""
    return next((index[w] for w in _candidates(dep, arch) if w in index), ("", ""))


def resolve(
    deps: Iterable[Dependency],
    suites: Sequence[tuple[SuiteSource, Collection[tuple[str, str, str]]]],
    arch: str,
    snapshot: Mapping[Dependency, SnapshotFile | None] | None = None,
) -> Resolution:
    """Pure: each pin in the first suite that lists it, else in ``snapshot``, else missing."""
    r = Resolution()
    missing: list[Dependency] = []
    for dep in deps:
        wanted = _candidates(dep, arch)
        found = next((s for s, have in suites if any(w in have for w in wanted)), None)
        if found is not None:
            r.suites[dep] = found
            continue
        file = (snapshot or {}).get(dep)
        if file is not None:
            r.snapshot[dep] = file
        else:
            missing.append(dep)
    return Resolution(r.suites, r.snapshot, tuple(missing))


def scan_packages(data: bytes) -> Available:
    """(Package, Architecture, Version) of every paragraph of a Packages index: a line scan,
    a few seconds for Debian's largest, where a full deb822 parse takes a minute."""
    return frozenset(scan_pool_files(data))


def scan_pool_files(data: bytes) -> PoolFiles:
    """``scan_packages`` with each entry's ``Filename`` and ``SHA256`` (empty when absent)."""
    out: PoolFiles = {}
    for para in data.split(b"\n\n"):
        fields = {k: v for k, v in _POOL_FIELD.findall(para)}
        p, v, a = fields.get(b"Package"), fields.get(b"Version"), fields.get(b"Architecture")
        if p and v and a:
            key = (p.decode("ascii", "replace"), a.decode("ascii", "replace"),
                   v.decode("ascii", "replace"))
            out[key] = (fields.get(b"Filename", b"").decode("ascii", "replace"),
                        fields.get(b"SHA256", b"").decode("ascii", "replace").lower())
    return out


def _scan_compressed(data: bytes, suffix: str) -> PoolFiles:
    return scan_pool_files(decompress(data, suffix, MAX_PACKAGES_BYTES))


_suite_cache: dict[tuple[str, str], PoolFiles] = {}  # (Packages URL, its sha256) -> versions
_SUITE_CACHE_ENTRIES = 16  # a handful of suites, each index only while it is current


async def suite_versions(
    session: aiohttp.ClientSession, suite: SuiteSource, arch: str, time_limit: float = 600.0
) -> Available:
    """Every (package, arch, version) a suite lists for ``arch`` (which includes ``all``)."""
    return frozenset(await suite_index(session, suite, arch, time_limit))


async def suite_index(
    session: aiohttp.ClientSession, suite: SuiteSource, arch: str, time_limit: float = 600.0
) -> PoolFiles:
    """``suite_versions`` with each entry's pool path and sha256 (the package cache checks
    the files it keeps against them)."""
    dists = f"{suite.mirror.rstrip('/')}/dists/{suite.suite}"
    release = parse_release(
        await fetch_bytes(session, f"{dists}/Release", MAX_RELEASE_BYTES, time_limit)
    )
    have: PoolFiles = {}
    for component in suite.components:
        for path, suffix in packages_candidates(component, arch):
            entry = release.entry(path)
            if entry is None:
                continue
            key = (f"{dists}/{path}", entry[0])
            cached = _suite_cache.get(key)
            if cached is None:
                data = await fetch_bytes(session, key[0], entry[1], time_limit)
                check_digest(data, entry, path)
                cached = await asyncio.to_thread(_scan_compressed, data, suffix)
                while len(_suite_cache) >= _SUITE_CACHE_ENTRIES:
                    _suite_cache.pop(next(iter(_suite_cache)))
                _suite_cache[key] = cached
            have.update(cached)
            break
        else:
            raise BadDataError(
                f"{suite.label}", f"Release lists no {component}/binary-{arch}/Packages index"
            )
    return have


def _bad(url: str, reason: str) -> BadDataError:
    return BadDataError(f"snapshot {url}", reason)


class SnapshotClient:
    """snapshot.debian.org's machine-readable API (or any server implementing it).

    ``lookup``: ``GET <base>/mr/binary/<package>/<version>/binfiles?fileinfo=1`` (404: the
    archive never had that version); ``download``: ``GET <base>/file/<sha1>`` into the node's
    package cache, kept only once its sha1, size and control fields match.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, cache_dir: Path,
                 time_limit: float = 600.0) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self.cache_dir = cache_dir
        self.time_limit = time_limit

    async def lookup(self, dep: Dependency, arch: str) -> SnapshotFile | None:
        url = (f"{self.base}/mr/binary/{quote(dep.name, safe='')}/"
               f"{quote(dep.version, safe='')}/binfiles?fileinfo=1")
        try:
            raw = await fetch_bytes(self.session, url, MAX_SNAPSHOT_JSON_BYTES, self.time_limit)
        except UnreachableError as e:
            if getattr(e, "status", None) == 404 or e.reason == "HTTP 404":
                return None
            raise
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise _bad(url, f"is not JSON: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("result"), list):
            raise _bad(url, "has no result list")
        fileinfo = doc.get("fileinfo") or {}
        if not isinstance(fileinfo, dict):
            raise _bad(url, "fileinfo is not an object")
        wanted = [dep.arch] if dep.arch else [arch, "all"]
        for want in wanted:
            for item in doc["result"]:
                if not isinstance(item, dict) or item.get("architecture") != want:
                    continue
                sha1 = item.get("hash")
                if not isinstance(sha1, str) or not _SHA1.fullmatch(sha1):
                    raise _bad(url, f"hash {str(sha1)[:50]!r} is not a sha1")
                name, size = self._file_name(fileinfo.get(sha1), dep, want, url)
                return SnapshotFile(name, dep.name, dep.version, want, sha1, size)
        return None

    @staticmethod
    def _file_name(info: object, dep: Dependency, arch: str, url: str) -> tuple[str, int | None]:
        name, size = canonical_deb_name(dep.name, dep.version, arch), None
        if isinstance(info, list) and info and isinstance(info[0], dict):
            given = info[0].get("name")
            if isinstance(given, str) and given != name:
                raise _bad(url, f"file name {given[:80]!r} is not {name}")
            s = info[0].get("size")
            if isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_DEB_BYTES:
                size = s
        return name, size

    async def download(self, f: SnapshotFile) -> Path:
        """The cached, verified file (downloaded once per node, shared by every build)."""
        dest = self.cache_dir / f"{f.sha1}.deb"
        if await asyncio.to_thread(dest.is_file):
            return dest
        url = f"{self.base}/file/{f.sha1}"
        limit = f.size if f.size is not None else MAX_DEB_BYTES
        data = await fetch_bytes(self.session, url, limit, self.time_limit)
        if f.size is not None and len(data) != f.size:
            raise _bad(url, f"is {len(data)} bytes, the archive says {f.size}")
        actual = hashlib.sha1(data).hexdigest()  # noqa: S324  # the archive names files by sha1
        if actual != f.sha1:
            raise _bad(url, f"sha1 is {actual}, asked for {f.sha1}")
        await asyncio.to_thread(self._store, data, dest, f, url)
        return dest

    @staticmethod
    def _store(data: bytes, dest: Path, f: SnapshotFile, url: str) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        try:
            out = subprocess.run(["dpkg-deb", "-f", str(tmp), "Package", "Version",
                                  "Architecture"], capture_output=True, timeout=60, check=False)
            fields = {k.decode(): v.decode() for k, v in _FIELD.findall(out.stdout)}
            want = {"Package": f.package, "Version": f.version, "Architecture": f.architecture}
            if out.returncode != 0 or fields != want:
                raise _bad(url, f"control fields {fields or out.stderr[-200:]!r}, expected {want}")
            tmp.rename(dest)
        finally:
            tmp.unlink(missing_ok=True)
