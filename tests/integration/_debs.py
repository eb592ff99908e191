"""Made-up but well-formed .debs (debian-binary, control.tar.gz, data.tar.gz), byte-for-byte
reproducible, for tests and benchmarks that need many."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

__all__ = ["make_deb"]


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members:
        out.append(f"{name:<16}{1700000000:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n"
                   .encode())
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def make_deb(path: Path, name: str, version: str, arch: str) -> None:
    """A minimal well-formed .deb: debian-binary, control.tar.gz, data.tar.gz."""
    control = (f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
               f"Maintainer: bench <bench@example.invalid>\nDescription: made up\n").encode()
    data = _tar_gz({f"./usr/share/doc/{name}/README": f"{name} {version}\n".encode()})
    path.write_bytes(_ar([("debian-binary", b"2.0\n"),
                          ("control.tar.gz", _tar_gz({"./control": control})),
                          ("data.tar.gz", data)]))
