"""Debian, as the verifier sees it: the package grammar, the ``.deb`` identity, the ecosystem.

The Debian grammar is written here once and every layer uses it (the statement, the node's
index, buildinfo and API parsers, the coordinator's routes): package names (Policy §5.6.1),
versions (§5.6.12), architectures, the ``Source: name (version)`` field and ``.deb`` file names.
Each pattern is at least as strict as python-debian's ``Version`` and ``PkgRelation`` (a test
checks that whatever it accepts they read back unchanged), with bounds a hostile index cannot
stretch.

The verifier derives the expected subject name from the file's control data, never from its
path: ``{Package}_{Version without epoch}_{Architecture}.deb``::

    ident = read_deb_identity(Path("/var/cache/apt/archives/hello_2.10-3_amd64.deb"))
    ident.subject_name   # 'hello_2.10-3_amd64.deb'
    DEBIAN.package_problem("hello", "2.10-3", "amd64")   # None: valid
"""

from __future__ import annotations

import hashlib
import io
import lzma
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verifier.ecosystem import Ecosystem, register
from verifier.errors import BadDataError
from verifier.statement import Digest, PackageIdentity

__all__ = [
    "ARCHITECTURE",
    "BUILD_TYPE",
    "BUILD_TYPE_V1",
    "DEBIAN",
    "DEB_NAME",
    "PACKAGE_NAME",
    "PINNED_RELATION",
    "SOURCE_FIELD",
    "VERSION",
    "DebIdentity",
    "DebianEcosystem",
    "canonical_deb_name",
    "is_architecture",
    "is_package_name",
    "is_version",
    "parse_control",
    "parse_deb_name",
    "parse_source_field",
    "read_deb_identity",
    "sha256_file",
    "version_noepoch",
]

_CHUNK = 1024 * 1024

# --- the grammar -----------------------------------------------------------------------------
# Package names, source and binary (Policy §5.6.1): lowercase letters, digits, + - . , starting
# with a letter or digit; at most 100 (no archive name comes close). One character is allowed,
# as dpkg allows it (Policy asks for two; most layers here always took one).
_NAME_RE = r"[a-z0-9][a-z0-9+.-]{0,99}"
# Versions (Policy §5.6.12): [epoch:]upstream[-revision]. The epoch is 1-9 digits; the rest
# starts with a letter or digit and uses letters, digits and . + ~ - (no colon after the epoch
# and no underscore: both would make the .deb file name ambiguous); at most 100 characters, so
# that the longest canonical .deb name (100 + 100 + 32 + 6) fits a statement's 255-character
# subject name (bookworm's longest version has 52, its longest package name 75).
_UPSTREAM_RE = r"[A-Za-z0-9][A-Za-z0-9.+~-]{0,99}"
_VERSION_RE = rf"(?:[0-9]{{1,9}}:)?{_UPSTREAM_RE}"
# Architectures (dpkg-architecture: amd64, arm64, all, kfreebsd-amd64, ...); at most 32.
_ARCH_RE = r"[a-z0-9][a-z0-9-]{0,31}"

PACKAGE_NAME = re.compile(_NAME_RE)
VERSION = re.compile(_VERSION_RE)
ARCHITECTURE = re.compile(_ARCH_RE)
# ``Source: hello`` or, for a binary built from another version (a binNMU), ``hello (2.10-3)``
SOURCE_FIELD = re.compile(rf"({_NAME_RE})(?:\s+\(({_VERSION_RE})\))?")
# ``{package}_{version without epoch}_{architecture}.deb``
DEB_NAME = re.compile(rf"({_NAME_RE})_({_UPSTREAM_RE})_({_ARCH_RE})\.deb")
# One pinned relation of a buildinfo's Installed-Build-Depends: ``name[:arch] (= version)``;
# the version is then checked with VERSION on its own, so that a refusal can name it.
PINNED_RELATION = re.compile(
    rf"(?P<name>{_NAME_RE})(?::(?P<arch>{_ARCH_RE}))?\s*\(\s*=\s*(?P<version>[^\s()]+)\s*\)"
)

BUILD_TYPE = "https://repro-quorum.dev/buildtypes/debian-rebuild/v2"
# v1: the earlier verdict words (verifier.verdicts.read_v1); still read, never written
BUILD_TYPE_V1 = "https://repro-quorum.dev/buildtypes/debian-rebuild/v1"


def is_package_name(value: object) -> bool:
    return isinstance(value, str) and PACKAGE_NAME.fullmatch(value) is not None


def is_version(value: object) -> bool:
    return isinstance(value, str) and VERSION.fullmatch(value) is not None


def is_architecture(value: object) -> bool:
    return isinstance(value, str) and ARCHITECTURE.fullmatch(value) is not None


def version_noepoch(version: str) -> str:
    return version.split(":", 1)[1] if ":" in version else version


def parse_source_field(value: str, version: str, what: str = "deb") -> tuple[str, str]:
    """(source name, source version) of a ``Source`` field; without ``(version)`` the source
    version is the binary's ``version``. ``BadDataError`` naming ``what`` when malformed."""
    m = SOURCE_FIELD.fullmatch(value.strip())
    if m:
        return m.group(1), m.group(2) or version
    name, _, rest = value.strip().partition(" ")
    if not is_package_name(name):
        why = f"{name[:100]!r} is not a source package name"
    elif rest.strip().startswith("(") and rest.strip().endswith(")"):
        why = f"{rest.strip()[1:-1][:140]!r} is not a Debian version"
    else:
        why = "expected 'name' or 'name (version)'"
    raise BadDataError(what, f"Source {value[:160]!r} is malformed: {why}")


def parse_deb_name(file_name: str) -> tuple[str, str, str] | None:
    """(package, version without epoch, architecture) of a canonical ``.deb`` file name."""
    m = DEB_NAME.fullmatch(file_name)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def sha256_file(path: Path) -> Digest:
    """Streaming sha256 of a file in constant memory."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return Digest(h.hexdigest())


def canonical_deb_name(package: str, version: str, architecture: str) -> str:
    """``{Package}_{Version without epoch}_{Architecture}.deb``."""
    return f"{package}_{version_noepoch(version)}_{architecture}.deb"


@dataclass(frozen=True, slots=True)
class DebIdentity:
    package: str
    version: str
    architecture: str
    source: str
    source_version: str
    # the canonical subject name, derived once: every decision compares it with each subject
    subject_name: str = field(init=False, repr=False, compare=False)

    ecosystem = "debian"

    def __post_init__(self) -> None:
        name = canonical_deb_name(self.package, self.version, self.architecture)
        object.__setattr__(self, "subject_name", name)

    def built_by(self, rebuilt: PackageIdentity) -> bool:
        """True when ``rebuilt`` (an attestation's package) is the source build of this binary.

        Source name and version must match; an ``Architecture: all`` binary is produced by a
        build of any architecture, an architecture-specific one only by a build of that one.
        """
        return (
            rebuilt.ecosystem == DebianEcosystem.name
            and rebuilt.name == self.source
            and rebuilt.version == self.source_version
            and (self.architecture == "all" or rebuilt.architecture == self.architecture)
        )


def parse_control(package: str, version: str, architecture: str, source: str | None) -> DebIdentity:
    """Build a ``DebIdentity`` from control fields; ``Source`` may carry ``(version)``.

    Each field must be in the Debian grammar (``BadDataError`` naming it otherwise)."""
    if not is_package_name(package):
        raise BadDataError("deb", f"Package {package[:120]!r} is not a Debian package name")
    if not is_version(version):
        raise BadDataError("deb", f"Version {version[:160]!r} is not a Debian version")
    if not is_architecture(architecture):
        raise BadDataError("deb", f"Architecture {architecture[:60]!r} is not a Debian"
                                  " architecture")
    src_name, src_version = parse_source_field(source, version) if source else (package, version)
    return DebIdentity(package, version, architecture, src_name, src_version)


# A control archive is small (control, md5sums, maintainer scripts); a hostile .deb must not make
# the verifier read or inflate more than this. The control file itself is a few kilobytes.
MAX_CONTROL_MEMBER = 256 * 1024 * 1024
MAX_CONTROL_FILE = 4 * 1024 * 1024
_AR_MAGIC = b"!<arch>\n"
_TAR_MODES = {b"control.tar": "r|", b"control.tar.gz": "r|gz", b"control.tar.xz": "r|xz"}


class _Bounded(io.RawIOBase):
    """The bytes of one ar member, read from the open .deb: never past its end."""

    def __init__(self, f: io.BufferedReader, size: int) -> None:
        self._f, self._left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(memoryview(b)[: self._left]) if self._left else 0
        if n is None:
            return 0
        self._left -= n
        return n


def _control_member(f: io.BufferedReader, path: Path) -> tuple[bytes, int]:
    """Position ``f`` at the control archive of the .deb; its ar name and size.

    The layout dpkg requires: ``debian-binary`` (format 2.x) first, then ``control.tar*``,
    members whose name starts with ``_`` allowed in between.
    """
    if f.read(8) != _AR_MAGIC:
        raise BadDataError("deb", f"{path} is not a Debian package (no ar archive header)")
    first = True
    while True:
        header = f.read(60)
        if len(header) < 60:
            raise BadDataError("deb", f"{path} is not a readable Debian package: no control"
                               " member")
        if header[58:60] != b"`\n":
            raise BadDataError("deb", f"{path} is not a readable Debian package: bad ar header")
        name = header[:16].rstrip(b" ").removesuffix(b"/")
        try:
            size = int(header[48:58].decode("ascii"))
        except ValueError:
            raise BadDataError("deb", f"{path} is not a readable Debian package: bad ar member"
                               " size") from None
        if first:
            if name != b"debian-binary" or size > 64 or not f.read(size).startswith(b"2."):
                raise BadDataError("deb", f"{path} is not a Debian package of format 2.x")
            first = False
        elif name.startswith(b"control.tar"):
            return name, size
        elif name.startswith(b"_"):
            f.seek(size, 1)
        else:
            raise BadDataError("deb", f"{path} is not a readable Debian package: member"
                               f" {name.decode('ascii', 'replace')!r} before the control one")
        if size % 2:
            f.seek(1, 1)


def _control_file(path: Path) -> bytes | None:
    """The ``control`` file's bytes, or None for a compression only python-debian reads."""
    with path.open("rb") as f:
        name, size = _control_member(f, path)
        mode = _TAR_MODES.get(name)
        if mode is None:
            return None
        if size > MAX_CONTROL_MEMBER:
            raise BadDataError("deb", f"{path}: the control archive is over"
                               f" {MAX_CONTROL_MEMBER} bytes")
        raw = io.BufferedReader(_Bounded(f, size), 64 * 1024)
        try:
            with tarfile.open(fileobj=raw, mode=mode) as tar:  # type: ignore[call-overload]
                for member in tar:
                    if member.name not in ("./control", "control"):
                        continue
                    if not member.isfile() or member.size > MAX_CONTROL_FILE:
                        raise BadDataError("deb", f"{path}: the control file is not a regular"
                                           f" file of at most {MAX_CONTROL_FILE} bytes")
                    data = tar.extractfile(member)
                    assert data is not None  # a regular file
                    return bytes(data.read())
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
            raise BadDataError("deb", f"{path}: the control archive is unreadable: {e}") from e
    raise BadDataError("deb", f"{path}: the control archive holds no control file")


def parse_control_fields(text: str, where: str) -> dict[str, str]:
    """The fields of a deb822 control paragraph, keyed by lower-case name (dpkg's rules:
    names are case-insensitive, a continuation line starts with a space or tab, a field given
    twice is an error)."""
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the paragraph
            continue
        if line[0] in " \t":
            if last is None:
                raise BadDataError("deb", f"{where}: a continuation line before any field")
            fields[last] += "\n" + line
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or " " in name:
            raise BadDataError("deb", f"{where}: {line[:60]!r} is not a control field")
        key = name.lower()
        if key in fields:
            raise BadDataError("deb", f"{where}: field {name} is given twice")
        fields[key], last = value.strip(), key
    return fields


def read_deb_identity(path: Path) -> DebIdentity:
    """Read Package, Version, Architecture and Source from a .deb's control member."""
    try:
        data = _control_file(path)
    except OSError as e:
        raise BadDataError("deb", f"{path} is not a readable Debian package: {e}") from e
    if data is None:  # zstd, bzip2: python-debian's readers (it calls unzstd)
        return _read_with_python_debian(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadDataError("deb", f"{path}: the control file is not UTF-8") from e
    control = parse_control_fields(text, str(path))
    missing = [f for f in ("Package", "Version", "Architecture") if not control.get(f.lower())]
    if missing:
        raise BadDataError("deb", f"{path} control data lacks {', '.join(missing)}")
    return parse_control(
        control["package"], control["version"], control["architecture"], control.get("source")
    )


def _read_with_python_debian(path: Path) -> DebIdentity:
    from debian import arfile, debfile  # imported late: python-debian is slow to import

    try:
        deb = debfile.DebFile(str(path))
        try:
            control = deb.debcontrol()
        finally:
            deb.close()  # python-debian keeps the file open otherwise (a ResourceWarning)
    except (debfile.DebError, arfile.ArError, OSError, ValueError, KeyError, EOFError) as e:
        raise BadDataError("deb", f"{path} is not a readable Debian package: {e}") from e
    missing = [f for f in ("Package", "Version", "Architecture") if not control.get(f)]
    if missing:
        raise BadDataError("deb", f"{path} control data lacks {', '.join(missing)}")
    return parse_control(
        control["Package"], control["Version"], control["Architecture"], control.get("Source")
    )


class DebianEcosystem(Ecosystem):
    """Debian: source packages rebuilt from their buildinfo, ``.deb`` files installed."""

    name = "debian"
    build_type = BUILD_TYPE
    legacy_build_types = frozenset({BUILD_TYPE_V1})

    def lookup_problem(self, name: object, version: object) -> str | None:
        # source name and source version
        if not is_package_name(name):
            return (f"package name {name!r:.120} is not a Debian source package name"
                    " (lowercase letters, digits and + - ., at most 100 characters)")
        if not is_version(version):
            return (f"package version {version!r:.160} is not a Debian version"
                    " ([epoch:]upstream[-revision], at most 100 characters after the epoch)")
        return None

    def package_problem(self, name: object, version: object, architecture: object) -> str | None:
        # the statement's package: source name, source version, build architecture
        if (problem := self.lookup_problem(name, version)) is not None:
            return problem
        if not is_architecture(architecture):
            return f"package architecture {architecture!r:.60} is not a Debian architecture"
        return None

    def subject_name(self, name: str, version: str, architecture: str) -> str:
        return canonical_deb_name(name, version, architecture)

    def read_identity(self, path: Path) -> DebIdentity:
        return read_deb_identity(path)


DEBIAN = register(DebianEcosystem())
