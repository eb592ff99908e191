"""The verifier's own .deb control reader: the same identity python-debian reads (for real
dpkg-deb packages in every compression), and a clear refusal of every malformed archive."""

from __future__ import annotations

import gzip
import io
import lzma
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.unit.verifier._vectors import VECTORS
from verifier.debian import (
    MAX_CONTROL_FILE,
    _read_with_python_debian,
    parse_control_fields,
    read_deb_identity,
)
from verifier.errors import BadDataError

CONTROL = b"Package: hello\nVersion: 1:2.10-3\nArchitecture: amd64\nMaintainer: x <x@y>\n" \
          b"Source: hello-src (2.10-2)\nDescription: a\n more\n"


def _tar(members: dict[str, bytes | None], compress: str = "gz") -> bytes:
    """A tar of ``members`` (None: a directory), compressed as ``compress``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return {"gz": gzip.compress, "xz": lzma.compress, "": lambda b: b}[compress](raw)


def _ar(members: list[tuple[str, bytes]], magic: bytes = b"!<arch>\n") -> bytes:
    out = [magic]
    for name, data in members:
        out.append(f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode())
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def _deb(tmp_path: Path, members: list[tuple[str, bytes]], **kw: bytes) -> Path:
    path = tmp_path / "x.deb"
    path.write_bytes(_ar(members, **kw))
    return path


def _standard(control: bytes = CONTROL, compress: str = "gz") -> list[tuple[str, bytes]]:
    name = "control.tar" + (f".{compress}" if compress else "")
    return [("debian-binary", b"2.0\n"),
            (name, _tar({"./": None, "./control": control, "./md5sums": b""}, compress)),
            ("data.tar.gz", _tar({"./": None}))]


@pytest.mark.parametrize("compress", ["gz", "xz", ""])
def test_reads_what_python_debian_reads(tmp_path: Path, compress: str) -> None:
    path = _deb(tmp_path, _standard(compress=compress))
    ident = read_deb_identity(path)
    assert ident == _read_with_python_debian(path)
    assert (ident.package, ident.version, ident.source, ident.source_version) == (
        "hello", "1:2.10-3", "hello-src", "2.10-2")


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "none"])
def test_reads_real_dpkg_deb_packages(tmp_path: Path, compression: str) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is needed (apt-get install dpkg)")
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: real\nVersion: 3.1-2\nArchitecture: all\nMaintainer: t <t@e>\n"
        "Source: real-src\nDescription: d\n")
    (root / "usr/share/doc/real").mkdir(parents=True)
    (root / "usr/share/doc/real/README").write_text("r\n")
    out = tmp_path / "real.deb"
    subprocess.run(["dpkg-deb", f"-Z{compression}", "--root-owner-group", "--build", str(root),
                    str(out)], check=True, capture_output=True)
    ident = read_deb_identity(out)
    assert ident == _read_with_python_debian(out)  # zstd goes to python-debian (unzstd)
    assert (ident.package, ident.source, ident.source_version, ident.subject_name) == (
        "real", "real-src", "3.1-2", "real_3.1-2_all.deb")


@pytest.mark.parametrize("deb", sorted(VECTORS.glob("debs/**/*.deb")), ids=str)
def test_vectors_read_the_same(deb: Path) -> None:
    assert read_deb_identity(deb) == _read_with_python_debian(deb)


def _control_tar(members: dict[str, bytes | None]) -> tuple[str, bytes]:
    return ("control.tar.gz", _tar(members))


DEBIAN_BINARY = ("debian-binary", b"2.0\n")
DATA = ("data.tar.gz", _tar({"./": None}))


@pytest.mark.parametrize(
    ("members", "magic", "needle"),
    [
        ([], b"PK\x03\x04zip!", "no ar archive header"),
        ([], b"!<arch>\n", "no control member"),
        ([("debian-binary", b"3.0\n"), *_standard()[1:]], b"!<arch>\n", "format 2.x"),
        ([("debian-binary", b"2.0\n" + b" " * 100), *_standard()[1:]], b"!<arch>\n",
         "format 2.x"),
        ([DATA, *_standard()], b"!<arch>\n", "format 2.x"),
        ([DEBIAN_BINARY, DATA, *_standard()[1:2]], b"!<arch>\n", "'data.tar.gz' before"),
        ([DEBIAN_BINARY, DATA], b"!<arch>\n", "'data.tar.gz' before"),
        ([DEBIAN_BINARY, _control_tar({"./md5sums": b""}), DATA], b"!<arch>\n",
         "holds no control file"),
        ([DEBIAN_BINARY, _control_tar({"./control": None}), DATA], b"!<arch>\n",
         "not a regular file"),
        ([DEBIAN_BINARY, _control_tar({"./control": b"x" * (MAX_CONTROL_FILE + 1)}), DATA],
         b"!<arch>\n", "not a regular file of at most"),
        ([DEBIAN_BINARY, ("control.tar.gz", b"\x1f\x8b not really gzip"), DATA], b"!<arch>\n",
         "control archive is unreadable"),
        ([DEBIAN_BINARY, ("control.tar.xz", b"not xz"), DATA], b"!<arch>\n",
         "control archive is unreadable"),
        ([DEBIAN_BINARY, ("control.tar.gz", _tar({"./control": CONTROL})[:40]), DATA],
         b"!<arch>\n", "control archive is unreadable"),
        ([DEBIAN_BINARY, _control_tar({"./control": b"\xff\xfe"}), DATA], b"!<arch>\n",
         "not UTF-8"),
        ([DEBIAN_BINARY, _control_tar({"./control": CONTROL + b"Package: again\n"}), DATA],
         b"!<arch>\n", "field Package is given twice"),
        ([DEBIAN_BINARY, _control_tar({"./control": CONTROL + b"package: again\n"}), DATA],
         b"!<arch>\n", "field package is given twice"),
        ([DEBIAN_BINARY, _control_tar({"./control": b"Version: 1\nArchitecture: all\n"}),
          DATA], b"!<arch>\n", "lacks Package"),
        ([DEBIAN_BINARY, _control_tar({"./control": b" continued\nPackage: a\n"}), DATA],
         b"!<arch>\n", "continuation line before any field"),
        ([DEBIAN_BINARY, _control_tar({"./control": b"Package a\n"}), DATA], b"!<arch>\n",
         "is not a control field"),
        ([DEBIAN_BINARY, _control_tar({"./control": CONTROL.replace(
            b"Source: hello-src (2.10-2)", b"Source: (")}), DATA], b"!<arch>\n",
         "Source '(' is malformed"),
    ],
    ids=["not-ar", "empty-ar", "format-3", "huge-debian-binary", "debian-binary-not-first",
         "data-before-control", "no-control-member", "no-control-file", "control-is-a-dir",
         "control-too-large", "bad-gzip", "bad-xz", "truncated", "not-utf8", "duplicate",
         "duplicate-other-case", "missing-package", "continuation-first", "no-colon",
         "bad-source"],
)
def test_malformed_debs_are_refused_by_name(
    tmp_path: Path, members: list[tuple[str, bytes]], magic: bytes, needle: str
) -> None:
    path = _deb(tmp_path, members, magic=magic)
    with pytest.raises(BadDataError) as e:
        read_deb_identity(path)
    assert needle in str(e.value)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"!<arch>\n" + b"debian-binary   0           0     0     100644  4         X\n",
         "bad ar header"),
        (b"!<arch>\n" + b"debian-binary   0           0     0     100644  4x        `\n",
         "bad ar member size"),
        (b"!<arch>\n" + b"debian-bin", "no control member"),
    ],
    ids=["header-terminator", "size", "truncated-header"],
)
def test_broken_ar_headers_are_refused(tmp_path: Path, data: bytes, needle: str) -> None:
    path = tmp_path / "x.deb"
    path.write_bytes(data)
    with pytest.raises(BadDataError) as e:
        read_deb_identity(path)
    assert needle in str(e.value)


def test_field_names_are_case_insensitive_and_paragraph_ends_at_a_blank_line() -> None:
    fields = parse_control_fields("package: a\nVERSION: 1\nDescription: x\n y\n\nPackage: b\n",
                                  "t")
    assert fields == {"package": "a", "version": "1", "description": "x\n y"}


def test_members_starting_with_underscore_are_skipped(tmp_path: Path) -> None:
    std = _standard()
    path = _deb(tmp_path, [std[0], ("_gpgorigin", b"sig"), *std[1:]])
    assert read_deb_identity(path).package == "hello"
