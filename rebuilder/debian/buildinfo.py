"""Strict parsing of the two Debian documents a rebuild starts from: ``.buildinfo`` and ``.dsc``.

Both arrive from outside and are hostile until checked. ``parse_buildinfo(data)`` and
``parse_dsc(data)`` take bytes and return frozen values, or raise ``BadDataError`` naming the
field that was wrong. No I/O here. python-debian splits the deb822 paragraphs; every field the
rebuild relies on is then validated by hand (deb-buildinfo(5), dsc(5))::

    info = parse_buildinfo(Path("hello_1.0_amd64.buildinfo").read_bytes())
    info.installed_build_depends[0]   # Dependency(name='autoconf', arch=None, version='2.71-3')
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

from verifier.debian import ARCHITECTURE as _ARCH
from verifier.debian import PACKAGE_NAME as _PKG
from verifier.debian import PINNED_RELATION as _DEPENDENCY
from verifier.debian import VERSION as _VERSION
from verifier.debian import parse_source_field, version_noepoch
from verifier.errors import BadDataError
from verifier.statement import Digest

__all__ = [
    "MAX_BUILDINFO_BYTES",
    "MAX_DSC_BYTES",
    "Buildinfo",
    "Dependency",
    "Dsc",
    "FileEntry",
    "parse_buildinfo",
    "parse_dsc",
    "validate_build_path",
    "validate_file_name",
    "version_noepoch",
]

MAX_BUILDINFO_BYTES = 4 * 1024 * 1024  # the largest Debian buildinfo files are a few hundred KiB
MAX_DSC_BYTES = 1024 * 1024
MAX_FILES = 1000  # entries in Checksums-Sha256 (outputs of one build, files of one source)
MAX_DEPENDS = 20_000
MAX_ENV = 200
MAX_BINNMU_CHANGES = 64 * 1024  # one changelog entry

# Package names, versions, architectures and relations: the one Debian grammar
# (verifier.debian).
_HEX64 = re.compile(r"[0-9a-f]{64}")
# A file name from a hostile document: one plain path component, no leading dot, no separators.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_-]*")
_ENV_LINE = re.compile(r'(?P<name>[A-Za-z_][A-Za-z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+~-]*")
# Top-level directories a build path may not live under: they are the sandbox's system binds
# or kernel file systems, so a build there would shadow or break them.
_RESERVED_TOP = frozenset(
    {
        "bin",
        "boot",
        "dev",
        "etc",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "proc",
        "root",
        "run",
        "sbin",
        "sys",
        "usr",
        "var",
        "nonexistent",
    }
)
# Environment variables a buildinfo may not set: the sandbox owns them (PATH, HOME) or they
# change which code runs rather than how it builds.
ENV_DENYLIST = frozenset({"PATH", "HOME", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "TMPDIR"})


def validate_file_name(name: str, where: str) -> str:
    """A plain basename: no directory part, no ``..``, no leading dot, no control characters."""
    if len(name) > 255 or not _FILE_NAME.fullmatch(name) or ".." in name:
        raise BadDataError(where, f"file name {name!r} is not a plain file name")
    return name


def validate_build_path(path: str) -> str:
    """An absolute, normalised path of at least two components outside the system directories."""
    if not path.startswith("/") or len(path) > 1024:
        raise BadDataError("buildinfo", f"Build-Path {path!r} is not an absolute path")
    parts = path[1:].split("/")
    if len(parts) < 2 or any(not _PATH_COMPONENT.fullmatch(p) or p in (".", "..") for p in parts):
        raise BadDataError(
            "buildinfo", f"Build-Path {path!r} must be a normalised path like /build/<dir>"
        )
    if parts[0] in _RESERVED_TOP or parts[0] == "tmp":
        raise BadDataError("buildinfo", f"Build-Path {path!r} lies under a system directory")
    return path


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str
    size: int
    sha256: Digest


@dataclass(frozen=True, slots=True)
class Dependency:
    """One ``Installed-Build-Depends`` entry: ``name[:arch] (= version)``."""

    name: str
    arch: str | None
    version: str

    def __str__(self) -> str:
        arch = f":{self.arch}" if self.arch else ""
        return f"{self.name}{arch} (= {self.version})"

    @property
    def purl(self) -> str:
        arch = f"?arch={self.arch}" if self.arch else ""
        return f"pkg:deb/debian/{self.name}@{self.version}{arch}"


@dataclass(frozen=True, slots=True)
class Buildinfo:
    source: str
    version: str  # the source version (Source's "(version)" for a binNMU, else Version)
    architectures: tuple[str, ...]  # the Architecture field's words, e.g. ("amd64", "all")
    build_architecture: str | None
    checksums: tuple[FileEntry, ...]  # the outputs the original build produced
    installed_build_depends: tuple[Dependency, ...]
    environment: tuple[tuple[str, str], ...]
    build_path: str | None
    sha256: Digest  # of the raw buildinfo bytes
    # A binNMU: the Version field (the source version plus a suffix such as "+b1") and the
    # Binary-Only-Changes changelog entry, decoded; else binary_version == version and None.
    binary_version: str = ""
    binary_only_changes: str | None = None

    def __post_init__(self) -> None:
        if not self.binary_version:
            object.__setattr__(self, "binary_version", self.version)

    @property
    def is_binnmu(self) -> bool:
        return self.binary_only_changes is not None

    @property
    def binary_architectures(self) -> tuple[str, ...]:
        return tuple(a for a in self.architectures if a != "source")

    def checksum_of(self, name: str) -> Digest | None:
        for f in self.checksums:
            if f.name == name:
                return f.sha256
        return None


@dataclass(frozen=True, slots=True)
class Dsc:
    source: str
    version: str
    files: tuple[FileEntry, ...]
    sha256: Digest


def _single_paragraph(data: bytes, what: str, limit: int) -> dict[str, str]:
    from debian import deb822  # imported late: python-debian is slow to import

    if len(data) > limit:
        raise BadDataError(what, f"{len(data)} bytes, limit {limit}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadDataError(what, f"not UTF-8 at byte {e.start}") from e
    if "\x00" in text:
        raise BadDataError(what, "contains a NUL byte")
    raw = text.encode("utf-8")
    if raw.lstrip().startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
        # The signature is not checked (the digest is pinned by the repository instead);
        # only the signed payload is parsed.
        try:
            _, payload, _ = deb822.Deb822.split_gpg_and_payload(iter(raw.splitlines(keepends=True)))
        except (EOFError, ValueError) as e:
            raise BadDataError(what, f"malformed PGP clear-signed wrapper: {e}") from e
        lines = [ln.decode("utf-8") if isinstance(ln, bytes) else ln for ln in payload]
        text = "\n".join(ln.rstrip("\n") for ln in lines) + "\n"
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            seen = set()  # a new paragraph; more than one is refused below
            continue
        if line[0].isspace() or line.startswith("#"):
            continue
        if ":" not in line:
            raise BadDataError(
                what, f"line {n} is neither a field nor a continuation: {line[:60]!r}"
            )
        name = line.split(":", 1)[0].lower()
        if name in seen:
            raise BadDataError(what, f"field {name[:60]!r} appears twice")
        seen.add(name)
    paragraphs = [
        p for p in deb822.Deb822.iter_paragraphs(io.StringIO(text), use_apt_pkg=False) if p
    ]
    if len(paragraphs) != 1:
        raise BadDataError(what, f"expected exactly one paragraph, found {len(paragraphs)}")
    fields = {k.lower(): str(v) for k, v in paragraphs[0].items()}
    if len(fields) != len(paragraphs[0]):
        raise BadDataError(what, "a field appears twice")
    return fields


def _require(fields: dict[str, str], name: str, what: str) -> str:
    value = fields.get(name.lower(), "").strip()
    if not value:
        raise BadDataError(what, f"missing field {name}")
    return value


def _checksums(value: str, what: str, field: str) -> tuple[FileEntry, ...]:
    entries: list[FileEntry] = []
    seen: set[str] = set()
    for line in value.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise BadDataError(what, f"{field} line {line[:80]!r} is not 'sha256 size name'")
        digest, size, name = parts
        if not _HEX64.fullmatch(digest):
            raise BadDataError(what, f"{field} digest {digest[:70]!r} is not a lowercase sha256")
        if not size.isdigit() or len(size) > 15:
            raise BadDataError(what, f"{field} size {size[:20]!r} is not a number")
        validate_file_name(name, what)
        if name in seen:
            raise BadDataError(what, f"{field} lists {name} twice")
        seen.add(name)
        entries.append(FileEntry(name, int(size), Digest(digest)))
        if len(entries) > MAX_FILES:
            raise BadDataError(what, f"{field} lists more than {MAX_FILES} files")
    if not entries:
        raise BadDataError(what, f"{field} lists no file")
    return tuple(entries)


def _dependencies(value: str) -> tuple[Dependency, ...]:
    deps: list[Dependency] = []
    for item in value.replace("\n", " ").split(","):
        item = item.strip()
        if not item:
            continue
        m = _DEPENDENCY.fullmatch(item)
        if not m:
            raise BadDataError(
                "buildinfo",
                f"Installed-Build-Depends entry {item[:80]!r} is not 'package (= version)'",
            )
        if not _VERSION.fullmatch(m["version"]):
            raise BadDataError(
                "buildinfo", f"version {m['version'][:80]!r} of package {m['name']} is invalid"
            )
        deps.append(Dependency(m["name"], m["arch"], m["version"]))
        if len(deps) > MAX_DEPENDS:
            raise BadDataError("buildinfo", f"more than {MAX_DEPENDS} Installed-Build-Depends")
    return tuple(deps)


def _unquote(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def _environment(value: str) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {}
    for line in value.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        m = _ENV_LINE.fullmatch(line)
        if not m:
            raise BadDataError("buildinfo", f'Environment line {line[:80]!r} is not NAME="value"')
        if m["name"] in env:
            raise BadDataError("buildinfo", f"Environment sets {m['name']} twice")
        env[m["name"]] = _unquote(m["value"])
        if len(env) > MAX_ENV:
            raise BadDataError("buildinfo", f"Environment has more than {MAX_ENV} variables")
    return tuple(env.items())


def _source_and_version(fields: dict[str, str], what: str) -> tuple[str, str]:
    source = _require(fields, "Source", what)
    version = _require(fields, "Version", what)
    # A buildinfo's Source may carry "(version)" for binNMUs; the source version is that one.
    if not _VERSION.fullmatch(version):
        raise BadDataError(what, f"Version {version[:80]!r} is not a Debian version")
    return parse_source_field(source, version, what)


_CHANGELOG_HEADER = re.compile(
    rf"(?P<source>{_PKG.pattern}) \((?P<version>[^()\s]+)\) [^;\n]+;(?P<options>[^\n]*)"
)


def _binary_only_changes(value: str, source: str, version: str) -> str:
    """The Binary-Only-Changes field decoded to the changelog entry sbuild --make-binNMU
    wrote (deb822: one leading space per line, ``.`` for an empty line), checked to be one
    binary-only entry for ``source`` at ``version``."""
    if len(value) > MAX_BINNMU_CHANGES:
        raise BadDataError("buildinfo", f"Binary-Only-Changes is over {MAX_BINNMU_CHANGES} bytes")
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", value):
        raise BadDataError("buildinfo", "Binary-Only-Changes holds control characters")
    lines = value.split("\n")
    if lines and not lines[0].strip():
        lines = lines[1:]
    out = []
    for line in lines:
        if not line.startswith(" "):
            raise BadDataError("buildinfo", "Binary-Only-Changes is not a continuation field")
        line = line[1:]
        out.append("" if line == "." else line)
    if not out:
        raise BadDataError("buildinfo", "Binary-Only-Changes is empty")
    m = _CHANGELOG_HEADER.fullmatch(out[0])
    if not m:
        raise BadDataError("buildinfo", f"Binary-Only-Changes header {out[0][:80]!r} is malformed")
    if (m["source"], m["version"]) != (source, version):
        raise BadDataError(
            "buildinfo",
            f"Binary-Only-Changes is for {m['source']} {m['version']}, the buildinfo for"
            f" {source} {version}",
        )
    if "binary-only=yes" not in m["options"].replace(" ", ""):
        raise BadDataError("buildinfo", "Binary-Only-Changes entry is not binary-only=yes")
    if not any(ln.startswith(" -- ") for ln in out[1:]):
        raise BadDataError("buildinfo", "Binary-Only-Changes entry has no trailer line")
    if any(_CHANGELOG_HEADER.fullmatch(ln) for ln in out[1:]):
        raise BadDataError("buildinfo", "Binary-Only-Changes holds more than one entry")
    return "\n".join(out).rstrip("\n") + "\n"


def parse_buildinfo(data: bytes) -> Buildinfo:
    """Parse and validate a .buildinfo (deb-buildinfo(5)); raise ``BadDataError`` if malformed."""
    fields = _single_paragraph(data, "buildinfo", MAX_BUILDINFO_BYTES)
    fmt = _require(fields, "Format", "buildinfo")
    if not re.fullmatch(r"1\.[0-9]+", fmt):
        raise BadDataError("buildinfo", f"Format {fmt[:20]!r} is not 1.x")
    source, version = _source_and_version(fields, "buildinfo")
    binary_version = _require(fields, "Version", "buildinfo")
    changes_field = fields.get("binary-only-changes")
    changes = None
    if changes_field is not None:
        if binary_version == version:
            raise BadDataError(
                "buildinfo", "Binary-Only-Changes without a binNMU version (Source has none)"
            )
        changes = _binary_only_changes(changes_field, source, binary_version)
    elif binary_version != version:
        raise BadDataError(
            "buildinfo",
            f"Version {binary_version} differs from the source version {version} but there is"
            " no Binary-Only-Changes to rebuild it from",
        )
    if changes is not None and not binary_version.startswith(version):
        raise BadDataError(
            "buildinfo", f"binNMU version {binary_version} does not extend {version}"
        )
    archs = tuple(_require(fields, "Architecture", "buildinfo").split())
    for a in archs:
        if not _ARCH.fullmatch(a):
            raise BadDataError("buildinfo", f"Architecture {a[:40]!r} is invalid")
    if not [a for a in archs if a != "source"]:
        raise BadDataError("buildinfo", "Architecture names no binary architecture")
    build_arch = fields.get("build-architecture", "").strip() or None
    if build_arch is not None and not _ARCH.fullmatch(build_arch):
        raise BadDataError("buildinfo", f"Build-Architecture {build_arch[:40]!r} is invalid")
    checksums = _checksums(
        _require(fields, "Checksums-Sha256", "buildinfo"), "buildinfo", "Checksums-Sha256"
    )
    deps = _dependencies(_require(fields, "Installed-Build-Depends", "buildinfo"))
    env = _environment(fields.get("environment", ""))
    build_path = fields.get("build-path", "").strip() or None
    if build_path is not None:
        validate_build_path(build_path)
    return Buildinfo(
        source=source,
        version=version,
        architectures=archs,
        build_architecture=build_arch,
        checksums=checksums,
        installed_build_depends=deps,
        environment=env,
        build_path=build_path,
        sha256=Digest(hashlib.sha256(data).hexdigest()),
        binary_version=binary_version,
        binary_only_changes=changes,
    )


def parse_dsc(data: bytes) -> Dsc:
    """Parse and validate a source control file (dsc(5)); only its Checksums-Sha256 is used."""
    fields = _single_paragraph(data, "dsc", MAX_DSC_BYTES)
    _require(fields, "Format", "dsc")
    source = _require(fields, "Source", "dsc")
    if not _PKG.fullmatch(source):
        raise BadDataError("dsc", f"Source {source[:80]!r} is not a source package name")
    version = _require(fields, "Version", "dsc")
    if not _VERSION.fullmatch(version):
        raise BadDataError("dsc", f"Version {version[:80]!r} is not a Debian version")
    files = _checksums(_require(fields, "Checksums-Sha256", "dsc"), "dsc", "Checksums-Sha256")
    # The Files (md5) field must name the same files: dpkg-source checks it too.
    md5_names = {
        ln.split()[-1] for ln in fields.get("files", "").strip().splitlines() if ln.strip()
    }
    if md5_names and md5_names != {f.name for f in files}:
        raise BadDataError("dsc", "Files and Checksums-Sha256 name different files")
    for name in md5_names:
        validate_file_name(name, "dsc")
    return Dsc(source, version, files, Digest(hashlib.sha256(data).hexdigest()))
