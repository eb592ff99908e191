"""The identity of a ``.deb`` read from its own control data, and streaming sha256.

The verifier derives the expected subject name from the file's control data, never from its
path: ``{Package}_{Version without epoch}_{Architecture}.deb``::

    ident = read_deb_identity(Path("/var/cache/apt/archives/hello_2.10-3_amd64.deb"))
    ident.subject_name   # 'hello_2.10-3_amd64.deb'
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from verifier.errors import BadDataError
from verifier.statement import Digest, PackageIdentity

__all__ = ["DebIdentity", "canonical_deb_name", "read_deb_identity", "sha256_file"]

_CHUNK = 1024 * 1024
_SOURCE_FIELD = re.compile(r"^([a-z0-9][a-z0-9.+-]*)(?:\s+\(([^()\s]+)\))?$")


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
    upstream = version.split(":", 1)[1] if ":" in version else version
    return f"{package}_{upstream}_{architecture}.deb"


@dataclass(frozen=True, slots=True)
class DebIdentity:
    package: str
    version: str
    architecture: str
    source: str
    source_version: str
    # the canonical subject name, derived once: every decision compares it with each subject
    subject_name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = canonical_deb_name(self.package, self.version, self.architecture)
        object.__setattr__(self, "subject_name", name)

    def built_by(self, rebuilt: PackageIdentity) -> bool:
        """True when ``rebuilt`` (an attestation's package) is the source build of this binary.

        Source name and version must match; an ``Architecture: all`` binary is produced by a
        build of any architecture, an architecture-specific one only by a build of that one.
        """
        return (
            rebuilt.ecosystem == "debian"
            and rebuilt.name == self.source
            and rebuilt.version == self.source_version
            and (self.architecture == "all" or rebuilt.architecture == self.architecture)
        )


def parse_control(package: str, version: str, architecture: str, source: str | None) -> DebIdentity:
    """Build a ``DebIdentity`` from control fields; ``Source`` may carry ``(version)``."""
    src_name, src_version = package, version
    if source:
        m = _SOURCE_FIELD.match(source.strip())
        if not m:
            raise BadDataError("deb", f"Source field {source!r} is malformed")
        src_name = m.group(1)
        src_version = m.group(2) or version
    return DebIdentity(package, version, architecture, src_name, src_version)


def read_deb_identity(path: Path) -> DebIdentity:
    """Read Package, Version, Architecture and Source from a .deb's control member."""
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
