"""APT repository indexes: Release and Packages parsing, and grouping binaries into jobs.

Pure: bytes in, values out, every limit named. Parsing uses python-debian's deb822; every field
the watcher relies on is checked strictly, and any malformed paragraph rejects the whole index
(``BadDataError``), so a hostile index never queues a half-understood job::

    release = parse_release(release_bytes)
    entry = release.entry("main/binary-amd64/Packages.xz")       # (sha256, size) or None
    binaries = parse_packages(decompress(data, ".xz", MAX_PACKAGES_BYTES))
    jobs = group_jobs(binaries, repository_config)
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from debian import deb822

from rebuilder.config import RepositoryConfig
from rebuilder.outcome import BuildJob
from verifier.debian import canonical_deb_name
from verifier.errors import BadDataError
from verifier.statement import Digest

__all__ = [
    "MAX_PACKAGES_BYTES",
    "MAX_PARAGRAPHS",
    "MAX_RELEASE_BYTES",
    "Binary",
    "Release",
    "check_digest",
    "decompress",
    "group_jobs",
    "is_binnmu_version",
    "packages_candidates",
    "parse_packages",
    "parse_release",
    "parse_sources",
    "sources_candidates",
]

MAX_RELEASE_BYTES = 8 * 1024 * 1024
MAX_PACKAGES_BYTES = 256 * 1024 * 1024  # uncompressed; Debian's largest is ~100 MB
MAX_PARAGRAPHS = 500_000

_HEX64 = re.compile(r"[0-9a-f]{64}")
_PKG = re.compile(r"[a-z0-9][a-z0-9.+-]{0,99}")
_VERSION = re.compile(r"(?:[0-9]{1,9}:)?[A-Za-z0-9][A-Za-z0-9.+~-]{0,127}")
_ARCH = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_SOURCE = re.compile(r"([a-z0-9][a-z0-9.+-]{0,99})(?:\s+\(([^()\s]{1,128})\))?")
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~/-]{0,511}")
# "+" too: Debian's Release lists main/installer-amd64/20230607+deb12u15/...
_INDEX_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~/-]{0,255}")


@dataclass(frozen=True)
class Release:
    entries: dict[str, tuple[Digest, int]]  # path relative to dists/<suite>/ -> (sha256, size)

    def entry(self, path: str) -> tuple[Digest, int] | None:
        return self.entries.get(path)


def parse_release(data: bytes) -> Release:
    """The SHA256 file list of a Release file; other fields are not trusted for anything."""
    if len(data) > MAX_RELEASE_BYTES:
        raise BadDataError("Release", f"{len(data)} bytes, limit {MAX_RELEASE_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadDataError("Release", f"not UTF-8 text: {e}") from e
    if text.lstrip().startswith("-----BEGIN PGP"):
        raise BadDataError("Release", "is a clearsigned InRelease; fetch the plain Release")
    para = deb822.Release(text)
    if "SHA256" not in para:
        raise BadDataError("Release", "has no SHA256 field")
    entries: dict[str, tuple[Digest, int]] = {}
    try:
        raw_entries = para["SHA256"]
    except (ValueError, KeyError) as e:
        raise BadDataError("Release", f"SHA256 field is malformed: {e}") from e
    for item in raw_entries:
        sha, size, name = item.get("sha256", ""), item.get("size", ""), item.get("name", "")
        if not _HEX64.fullmatch(sha):
            raise BadDataError("Release", f"SHA256 entry {name!r} has a malformed digest")
        if not size.isdigit() or len(size) > 15:
            raise BadDataError("Release", f"SHA256 entry {name!r} has a malformed size")
        if not _INDEX_PATH.fullmatch(name) or ".." in name.split("/"):
            raise BadDataError("Release", f"SHA256 entry {name!r} is not a plain relative path")
        entries[name] = (Digest(sha), int(size))
    return Release(entries)


def packages_candidates(component: str, arch: str) -> list[tuple[str, str]]:
    """Index paths to try for one component and architecture, best compression first."""
    base = f"{component}/binary-{arch}/Packages"
    return [(base + ".xz", ".xz"), (base + ".gz", ".gz"), (base, "")]


def sources_candidates(component: str) -> list[tuple[str, str]]:
    base = f"{component}/source/Sources"
    return [(base + ".xz", ".xz"), (base + ".gz", ".gz"), (base, "")]


def check_digest(data: bytes, expected: tuple[Digest, int], what: str) -> None:
    sha, size = expected
    if len(data) != size:
        raise BadDataError(what, f"is {len(data)} bytes, Release says {size}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha:
        raise BadDataError(what, f"sha256 is {actual}, Release says {sha}")


def decompress(data: bytes, suffix: str, limit: int) -> bytes:
    """Decompress ``.xz``/``.gz``/plain data, refusing output over ``limit`` bytes."""
    if suffix == "":
        if len(data) > limit:
            raise BadDataError("Packages", f"{len(data)} bytes, limit {limit}")
        return data
    try:
        if suffix == ".xz":
            lz = lzma.LZMADecompressor()
            out = lz.decompress(data, max_length=limit + 1)
            if len(out) > limit:
                raise BadDataError("Packages", f"decompresses to more than {limit} bytes")
            if not lz.eof:
                raise BadDataError("Packages", "xz stream is truncated")
            return out
        if suffix == ".gz":
            z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out = z.decompress(data, limit + 1)
            if len(out) > limit or z.unconsumed_tail:
                raise BadDataError("Packages", f"decompresses to more than {limit} bytes")
            if not z.eof:
                raise BadDataError("Packages", "gzip stream is truncated")
            return out
    except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, EOFError) as e:
        raise BadDataError("Packages", f"{suffix} data is corrupt: {e}") from e
    raise ValueError(f"unknown compression {suffix!r}")


@dataclass(frozen=True)
class Binary:
    """One paragraph of a Packages index, the fields the watcher uses."""

    package: str
    version: str
    architecture: str
    source: str
    source_version: str
    filename: str  # pool path relative to the repository base
    sha256: Digest

    @property
    def deb_name(self) -> str:
        return canonical_deb_name(self.package, self.version, self.architecture)


def _field(para: deb822.Deb822, name: str, pattern: re.Pattern[str], n: int) -> str:
    value = para.get(name)
    if not isinstance(value, str):
        raise BadDataError("Packages", f"paragraph {n} has no {name} field")
    value = value.strip()
    if not pattern.fullmatch(value):
        raise BadDataError("Packages", f"paragraph {n}: {name} {value[:80]!r} is malformed")
    return value


def parse_packages(data: bytes) -> list[Binary]:
    """Every binary of a (decompressed) Packages index; any malformed paragraph rejects it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadDataError("Packages", f"not UTF-8 text: {e}") from e
    binaries: list[Binary] = []
    try:
        paragraphs = deb822.Packages.iter_paragraphs(text.splitlines(), use_apt_pkg=False)
        for n, para in enumerate(paragraphs, 1):
            if n > MAX_PARAGRAPHS:
                raise BadDataError("Packages", f"more than {MAX_PARAGRAPHS} paragraphs")
            if not para:
                continue
            package = _field(para, "Package", _PKG, n)
            version = _field(para, "Version", _VERSION, n)
            arch = _field(para, "Architecture", _ARCH, n)
            filename = _field(para, "Filename", _FILENAME, n)
            if ".." in filename.split("/"):
                raise BadDataError("Packages", f"paragraph {n}: Filename {filename!r} has '..'")
            sha = _field(para, "SHA256", _HEX64, n)
            source, source_version = package, version
            if "Source" in para:
                m = _SOURCE.fullmatch(para["Source"].strip())
                if not m:
                    raise BadDataError(
                        "Packages", f"paragraph {n}: Source {para['Source'][:80]!r} is malformed"
                    )
                source = m.group(1)
                source_version = m.group(2) or version
                if not _VERSION.fullmatch(source_version):
                    raise BadDataError(
                        "Packages", f"paragraph {n}: source version {source_version!r} is malformed"
                    )
            binaries.append(Binary(package, version, arch, source, source_version, filename,
                                   Digest(sha)))
    except (ValueError, KeyError) as e:  # deb822's own parse errors
        raise BadDataError("Packages", f"cannot be parsed: {e}") from e
    if text.strip() and not binaries:
        raise BadDataError("Packages", "holds text but no package paragraph")
    return binaries


_DIRECTORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~/-]{0,255}")
_CHECKSUM_LINE = re.compile(
    r"([0-9a-f]{64})\s+([0-9]{1,15})\s+([A-Za-z0-9][A-Za-z0-9._+~-]{0,254})"
)

SourceIndex = dict[tuple[str, str], tuple[str, Digest]]  # (source, version) -> (dsc path, sha256)


def parse_sources(data: bytes) -> SourceIndex:
    """(source, version) -> (pool path of the .dsc, its sha256) from a Sources index."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadDataError("Sources", f"not UTF-8 text: {e}") from e
    out: SourceIndex = {}
    try:
        for n, para in enumerate(deb822.Sources.iter_paragraphs(text.splitlines(),
                                                                use_apt_pkg=False), 1):
            if n > MAX_PARAGRAPHS:
                raise BadDataError("Sources", f"more than {MAX_PARAGRAPHS} paragraphs")
            if not para:
                continue
            name = _field(para, "Package", _PKG, n)
            version = _field(para, "Version", _VERSION, n)
            directory = _field(para, "Directory", _DIRECTORY, n)
            if ".." in directory.split("/"):
                raise BadDataError("Sources", f"paragraph {n}: Directory has '..'")
            raw = para.get("Checksums-Sha256")  # deb822.Sources splits it into dicts
            if not isinstance(raw, list) or not raw:
                raise BadDataError("Sources", f"paragraph {n} has no Checksums-Sha256")
            dsc = None
            for item in raw:
                line = f"{item.get('sha256', '')} {item.get('size', '')} {item.get('name', '')}"
                m = _CHECKSUM_LINE.fullmatch(line)
                if not m:
                    raise BadDataError("Sources", f"paragraph {n}: checksum line {line[:80]!r}")
                if m.group(3).endswith(".dsc"):
                    dsc = (f"{directory}/{m.group(3)}", Digest(m.group(1)))
            if dsc is None:
                raise BadDataError("Sources", f"paragraph {n} ({name}) lists no .dsc")
            out[(name, version)] = dsc
    except (ValueError, KeyError) as e:
        raise BadDataError("Sources", f"cannot be parsed: {e}") from e
    return out


def group_jobs(
    binaries: Iterable[Binary], repo: RepositoryConfig, sources: SourceIndex | None = None
) -> list[BuildJob]:
    """One job per (source, version built, build architecture) among the configured archs.

    The version built is the source version, except for a binNMU: a binary whose Version is
    its source version plus ``+b<N>`` (``hello 2.10-3+b1``, ``Source: hello (2.10-3)``) was
    built separately, from its own buildinfo, so it is its own job. (Other binaries whose
    version differs from the source's, such as gcc-defaults' ``cpp``, belong to the source's
    build.) An ``Architecture: all`` binary belongs to the build of architecture ``all``. When
    the Sources index names the source version's .dsc, the job carries its URL and sha256.
    """
    groups: dict[tuple[str, str, str, str], dict[str, tuple[Digest, str]]] = {}
    base = repo.base_url.rstrip("/")
    for b in binaries:
        if b.architecture not in repo.architectures:
            continue
        built = b.version if is_binnmu_version(b.version, b.source_version) else b.source_version
        key = (b.source, built, b.architecture, b.source_version)
        published = groups.setdefault(key, {})
        published[b.deb_name] = (b.sha256, f"{base}/{b.filename}")
    jobs = []
    for (source, version, arch, source_version), published in sorted(groups.items()):
        dsc = (sources or {}).get((source, source_version))
        jobs.append(BuildJob(
            source=source, version=version, architecture=arch, repository=repo.name,
            buildinfo_url=repo.buildinfo_for(source, version, arch), published=published,
            dsc_url=f"{base}/{dsc[0]}" if dsc else None, dsc_sha256=dsc[1] if dsc else None,
            source_version=source_version if version != source_version else None,
        ))
    return jobs


def is_binnmu_version(version: str, source_version: str) -> bool:
    """``2.10-3+b1`` of ``2.10-3``: the suffix sbuild's --make-binNMU appends."""
    suffix = version.removeprefix(source_version)
    return suffix != version and re.fullmatch(r"\+b[0-9]{1,6}", suffix) is not None
