"""APT repository indexes: Release and Packages parsing, and grouping binaries into jobs.

Bytes in, values out, every limit named; no network. Parsing uses python-debian's deb822 (with
apt's own C++ paragraph splitter, python3-apt's ``apt_pkg``, when it is importable: 2x faster on
Debian's real index). Every field the watcher relies on is checked strictly, and any malformed
paragraph rejects the whole index (``BadDataError``), so a hostile index never queues a
half-understood job. The index readers stream: decompression goes to a temporary file and stops
at ``IndexLimits.max_bytes``, parsing stops at ``max_entries``; they block, so the watcher runs
them in a worker thread::

    release = parse_release(signed_release_text)                 # gpgv's output (rebuilder.openpgp)
    check_release(release, "bookworm", now, newest_accepted)     # Suite, Valid-Until, rollback
    entry = release.entry("main/binary-amd64/Packages.xz")       # (sha256, size) or None
    binaries = read_packages(data, ".xz", IndexLimits(), entry)  # digest checked, then parsed
    jobs = group_jobs(binaries, repository_config)
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import lzma
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import IO, Any

from debian import deb822

from rebuilder.config import RepositoryConfig
from rebuilder.outcome import BuildJob, ReleaseRef
from verifier.debian import ARCHITECTURE as _ARCH
from verifier.debian import PACKAGE_NAME as _PKG
from verifier.debian import VERSION as _VERSION
from verifier.debian import canonical_deb_name, parse_source_field
from verifier.errors import BadDataError
from verifier.statement import Digest

__all__ = [
    "HAVE_APT_PKG",
    "MAX_PACKAGES_BYTES",
    "MAX_PARAGRAPHS",
    "MAX_RELEASE_BYTES",
    "Binary",
    "IndexLimits",
    "Release",
    "check_digest",
    "check_release",
    "decompress",
    "group_jobs",
    "is_binnmu_version",
    "packages_candidates",
    "packages_from",
    "parse_packages",
    "parse_release",
    "parse_sources",
    "read_packages",
    "read_sources",
    "sources_candidates",
    "sources_from",
    "spool_index",
]

MAX_RELEASE_BYTES = 8 * 1024 * 1024
MAX_PACKAGES_BYTES = 256 * 1024 * 1024  # uncompressed; Debian's largest is ~100 MB
MAX_PARAGRAPHS = 200_000  # default cap per index; Debian's largest (sid main amd64) is ~66k
MAX_CLOCK_SKEW = timedelta(minutes=10)
# apt's own C++ deb822 parser (python3-apt), 25x faster than python-debian's on Debian's index
# (docs/rebuild-pipeline.md has the figures); python-debian's is the fallback.
try:
    _APT_PKG: Any = importlib.import_module("apt_pkg")
except ImportError:
    _APT_PKG = None
HAVE_APT_PKG = _APT_PKG is not None

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~/-]{0,511}")
_INDEX_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~/-]{0,255}")  # Debian has "20230607+deb12u15/"


@dataclass(frozen=True)
class IndexLimits:
    """Caps on one Packages/Sources index (``[[repository]]`` ``max_index_entries``/``_mb``)."""

    max_entries: int = MAX_PARAGRAPHS
    max_bytes: int = MAX_PACKAGES_BYTES  # decompressed


@dataclass(frozen=True)
class Release:
    entries: dict[str, tuple[Digest, int]]  # path relative to dists/<suite>/ -> (sha256, size)
    date: datetime | None = None
    valid_until: datetime | None = None
    suite: str | None = None
    codename: str | None = None
    # "No-Support-for-Architecture-all: Packages": binary-<arch> lists the arch:all packages,
    # binary-all is only for clients that want it (Debian; APT then skips binary-all)
    all_in_arch_indexes: bool = False

    def entry(self, path: str) -> tuple[Digest, int] | None:
        return self.entries.get(path)


def _release_date(para: deb822.Release, name: str) -> datetime | None:
    value = para.get(name)
    if value is None:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError) as e:
        raise BadDataError("Release", f"{name} {value[:80]!r} is not an RFC 2822 date") from e
    if when.tzinfo is None:
        raise BadDataError("Release", f"{name} {value[:80]!r} has no time zone")
    return when


def check_release(
    release: Release, suite: str, now: datetime, newest: datetime | None, what: str = "Release"
) -> None:
    """The checks APT makes on a verified Release, and the rollback check APT does not make.

    ``suite`` is the configured one: it must be the Release's Suite or Codename when it has
    either (a Release signed for another suite is not this one's). ``Valid-Until`` must be in
    the future; ``Date`` must not be in the future (beyond a clock skew) nor older than
    ``newest``, the Date of the newest Release this node already accepted for the repository
    (a mirror replaying an old, validly signed state: rollback or freeze).
    """
    named = (release.suite, release.codename)
    if "/" not in suite and named != (None, None) and suite not in named:
        raise BadDataError(what, f"is for Suite {release.suite!r} / Codename "
                                 f"{release.codename!r}, the repository is configured for "
                                 f"{suite!r}")
    if release.valid_until is not None and release.valid_until < now:
        raise BadDataError(what, f"expired: Valid-Until {release.valid_until.isoformat()} is "
                                 f"before now ({now.isoformat(timespec='seconds')}); the mirror "
                                 "serves a stale (possibly frozen) repository state")
    if release.date is None:
        if newest is not None:
            raise BadDataError(what, "has no Date, and this node already accepted one dated "
                                     f"{newest.isoformat()}")
        return
    if release.date > now + MAX_CLOCK_SKEW:
        raise BadDataError(what, f"Date {release.date.isoformat()} is in the future "
                                 f"(now {now.isoformat(timespec='seconds')})")
    if newest is not None and release.date < newest:
        raise BadDataError(what, f"Date {release.date.isoformat()} is older than the newest "
                                 f"Release this node already accepted ({newest.isoformat()}): "
                                 "refusing a rollback to an older repository state")


def parse_release(data: bytes) -> Release:
    """The SHA256 file list, Date, Valid-Until, Suite and Codename of a Release file.

    ``data`` must be what the signature covers (gpgv's output for an InRelease), never the
    clearsigned file itself."""
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
    suite, codename = para.get("Suite"), para.get("Codename")
    no_all = para.get("No-Support-for-Architecture-all", "").strip() == "Packages"
    return Release(entries, _release_date(para, "Date"), _release_date(para, "Valid-Until"),
                   suite.strip() if suite else None, codename.strip() if codename else None,
                   no_all)


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


def _field(para: dict[str, str], name: str, pattern: re.Pattern[str], n: int) -> str:
    value = para.get(name)
    if value is None:
        raise BadDataError("Packages", f"paragraph {n} has no {name} field")
    if pattern.fullmatch(value) is None:  # apt's parser strips; python-debian's may not
        value = value.strip()
        if pattern.fullmatch(value) is None:
            raise BadDataError("Packages", f"paragraph {n}: {name} {value[:80]!r} is malformed")
    return value


_PACKAGES_FIELDS = ["Package", "Version", "Architecture", "Filename", "SHA256", "Source"]
_SOURCES_FIELDS = ["Package", "Version", "Directory", "Checksums-Sha256"]
_CHUNK = 1 << 20


def _apt_sections(f: IO[bytes], fields: list[str]) -> Iterator[dict[str, str]]:
    # bytes=False: apt_pkg decodes as UTF-8; every field used is then checked against an
    # ASCII pattern, so nothing undecodable can pass
    for section in _APT_PKG.TagFile(f):
        get = section.get
        yield {k: v for k in fields if (v := get(k)) is not None}


def _deb822_sections(f: IO[bytes], fields: list[str]) -> Iterator[dict[str, str]]:
    for para in deb822.Deb822.iter_paragraphs(f, fields=fields, use_apt_pkg=False):
        yield dict(para)


def _paragraphs(f: IO[bytes], fields: list[str], what: str,
                max_entries: int) -> Iterator[tuple[int, dict[str, str]]]:
    """Numbered paragraphs (only ``fields``) of a decompressed index file, at most
    ``max_entries``; apt's own parser when python3-apt is importable, else python-debian's."""
    sections = _apt_sections(f, fields) if _APT_PKG is not None else _deb822_sections(f, fields)
    try:
        for n, para in enumerate(sections, 1):
            if n > max_entries:
                raise BadDataError(what, f"has more than {max_entries} entries (max_index_entries)"
                                         "; index refused, previous state kept")
            if para:
                yield n, para
    except UnicodeDecodeError as e:
        raise BadDataError(what, f"not UTF-8 text: {e}") from e
    except (ValueError, KeyError, SystemError) as e:  # deb822's and apt_pkg's parse errors
        raise BadDataError(what, f"cannot be parsed: {e!r}") from e


def _spool(data: bytes, suffix: str, limit: int, what: str, out: IO[bytes]) -> bool:
    """Decompress ``data`` into ``out`` chunk by chunk, refusing more than ``limit`` bytes.

    Returns whether any non-blank byte was seen."""
    if suffix == ".xz":
        stream: IO[bytes] = lzma.LZMAFile(io.BytesIO(data))  # noqa: SIM115  # closed below
    elif suffix == ".gz":
        stream = gzip.GzipFile(fileobj=io.BytesIO(data))  # type: ignore[assignment]  # an IO
    elif suffix == "":
        stream = io.BytesIO(data)
    else:
        raise ValueError(f"unknown compression {suffix!r}")
    total, nonblank = 0, False
    try:
        with stream:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise BadDataError(what, f"decompresses to more than {limit} bytes "
                                             "(max_index_mb); index refused, previous state kept")
                nonblank = nonblank or bool(chunk.strip())
                out.write(chunk)
    except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, EOFError, OSError) as e:
        raise BadDataError(what, f"{suffix} data is corrupt or truncated: {e}") from e
    out.flush()
    out.seek(0)
    return nonblank


def spool_index(data: bytes, suffix: str, limits: IndexLimits,
                expected: tuple[Digest, int] | None, what: str) -> tuple[IO[bytes], bool]:
    """Check ``data`` against its Release entry and decompress it into a temporary file
    (rewound; the caller closes it), within ``limits.max_bytes``. Blocking; the decompression
    releases the GIL, so several indexes can be spooled at once in threads. Also returns
    whether any non-blank byte was seen."""
    if expected is not None:
        check_digest(data, expected, what)
    f = tempfile.TemporaryFile(prefix="rq-index-")  # noqa: SIM115  # returned open
    try:
        return f, _spool(data, suffix, limits.max_bytes, what, f)
    except BaseException:
        f.close()
        raise


def packages_from(f: IO[bytes], nonblank: bool, limits: IndexLimits,
                  what: str = "Packages") -> list[Binary]:
    """Every binary of a spooled Packages index; any malformed paragraph rejects it."""
    binaries = _packages(f, limits.max_entries, what)
    if nonblank and not binaries:
        raise BadDataError(what, "holds text but no package paragraph")
    return binaries


def read_packages(data: bytes, suffix: str, limits: IndexLimits,
                  expected: tuple[Digest, int] | None, what: str = "Packages") -> list[Binary]:
    """Check ``data`` against its Release entry, then stream-parse it; blocking."""
    f, nonblank = spool_index(data, suffix, limits, expected, what)
    with f:
        return packages_from(f, nonblank, limits, what)


def parse_packages(data: bytes, limits: IndexLimits | None = None) -> list[Binary]:
    """Every binary of a (decompressed) Packages index; any malformed paragraph rejects it."""
    return read_packages(data, "", limits or IndexLimits(), None)


def _packages(f: IO[bytes], max_entries: int, what: str) -> list[Binary]:
    binaries: list[Binary] = []
    for n, para in _paragraphs(f, _PACKAGES_FIELDS, what, max_entries):
        package = _field(para, "Package", _PKG, n)
        version = _field(para, "Version", _VERSION, n)
        arch = _field(para, "Architecture", _ARCH, n)
        filename = _field(para, "Filename", _FILENAME, n)
        if ".." in filename.split("/"):
            raise BadDataError(what, f"paragraph {n}: Filename {filename!r} has '..'")
        sha = _field(para, "SHA256", _HEX64, n)
        source, source_version = package, version
        if "Source" in para:
            # the one Debian grammar (verifier.debian): name, and version if given
            source, source_version = parse_source_field(para["Source"], version,
                                                        f"{what} paragraph {n}")
        binaries.append(Binary(package, version, arch, source, source_version, filename,
                               Digest(sha)))
    return binaries


_DIRECTORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~/-]{0,255}")
_CHECKSUM_LINE = re.compile(
    r"([0-9a-f]{64})\s+([0-9]{1,15})\s+([A-Za-z0-9][A-Za-z0-9._+~-]{0,254})"
)

SourceIndex = dict[tuple[str, str], tuple[str, Digest]]  # (source, version) -> (dsc path, sha256)


def read_sources(data: bytes, suffix: str, limits: IndexLimits,
                 expected: tuple[Digest, int] | None, what: str = "Sources") -> SourceIndex:
    """Check ``data`` against its Release entry, then stream-parse it; blocking."""
    f, _ = spool_index(data, suffix, limits, expected, what)
    with f:
        return sources_from(f, limits, what)


def sources_from(f: IO[bytes], limits: IndexLimits, what: str = "Sources") -> SourceIndex:
    """(source, version) -> (pool path of the .dsc, its sha256) of a spooled Sources index."""
    return _sources(f, limits.max_entries, what)


def parse_sources(data: bytes, limits: IndexLimits | None = None) -> SourceIndex:
    """(source, version) -> (pool path of the .dsc, its sha256) from a Sources index."""
    return read_sources(data, "", limits or IndexLimits(), None)


def _sources(f: IO[bytes], max_entries: int, what: str) -> SourceIndex:
    out: SourceIndex = {}
    for n, para in _paragraphs(f, _SOURCES_FIELDS, what, max_entries):
        name = _field(para, "Package", _PKG, n)
        version = _field(para, "Version", _VERSION, n)
        directory = _field(para, "Directory", _DIRECTORY, n)
        if ".." in directory.split("/"):
            raise BadDataError(what, f"paragraph {n}: Directory has '..'")
        raw = para.get("Checksums-Sha256")
        lines = [ln.strip() for ln in raw.splitlines() if ln.strip()] if raw else []
        if not lines:
            raise BadDataError(what, f"paragraph {n} has no Checksums-Sha256")
        dsc = None
        for line in lines:
            m = _CHECKSUM_LINE.fullmatch(line)
            if not m:
                raise BadDataError(what, f"paragraph {n}: checksum line {line[:80]!r}")
            if m.group(3).endswith(".dsc"):
                dsc = (f"{directory}/{m.group(3)}", Digest(m.group(1)))
        if dsc is None:
            raise BadDataError(what, f"paragraph {n} ({name}) lists no .dsc")
        out[(name, version)] = dsc
    return out


def group_jobs(
    binaries: Iterable[Binary], repo: RepositoryConfig, sources: SourceIndex | None = None,
    release: ReleaseRef | None = None,
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
            release=release,
            source_version=source_version if version != source_version else None,
        ))
    return jobs


def is_binnmu_version(version: str, source_version: str) -> bool:
    """``2.10-3+b1`` of ``2.10-3``: the suffix sbuild's --make-binNMU appends."""
    suffix = version.removeprefix(source_version)
    return suffix != version and re.fullmatch(r"\+b[0-9]{1,6}", suffix) is not None
