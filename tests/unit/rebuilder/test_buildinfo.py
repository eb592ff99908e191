"""Strict parsing of .buildinfo and .dsc: one named vector per malformation."""

from __future__ import annotations

import hashlib
import re

import pytest

from rebuilder.debian.buildinfo import (
    MAX_BUILDINFO_BYTES,
    MAX_DSC_BYTES,
    Dependency,
    parse_buildinfo,
    parse_dsc,
    validate_build_path,
    validate_file_name,
)
from verifier.errors import BadDataError

D1 = "a" * 64
D2 = "b" * 64

BUILDINFO = f"""Format: 1.0
Source: hello
Binary: hello
Architecture: amd64 all
Version: 1:2.10-3
Checksums-Sha256:
 {D1} 1234 hello_2.10-3_amd64.deb
 {D2} 99 hello-doc_2.10-3_all.deb
Build-Origin: Debian
Build-Architecture: amd64
Build-Date: Sat, 01 Jun 2024 12:00:00 +0000
Build-Path: /build/reproducible-path/hello-2.10
Installed-Build-Depends:
 autoconf (= 2.71-3),
 libc6:amd64 (= 2.36-9+deb12u4),
 gcc-12 (= 12.2.0-14)
Environment:
 DEB_BUILD_OPTIONS="parallel=2 nocheck"
 LANG="C.UTF-8"
 SOURCE_DATE_EPOCH="1717243200"
 QUOTED="a \\"b\\" c"
"""

DSC = f"""Format: 3.0 (quilt)
Source: hello
Version: 1:2.10-3
Checksums-Sha256:
 {D1} 1000 hello_2.10.orig.tar.gz
 {D2} 200 hello_2.10-3.debian.tar.xz
Files:
 0123456789abcdef0123456789abcdef 1000 hello_2.10.orig.tar.gz
 0123456789abcdef0123456789abcdef 200 hello_2.10-3.debian.tar.xz
"""


def test_valid_buildinfo() -> None:
    data = BUILDINFO.encode()
    info = parse_buildinfo(data)
    assert (info.source, info.version) == ("hello", "1:2.10-3")
    assert info.architectures == ("amd64", "all")
    assert info.build_path == "/build/reproducible-path/hello-2.10"
    assert info.checksum_of("hello_2.10-3_amd64.deb") == D1
    assert info.installed_build_depends == (
        Dependency("autoconf", None, "2.71-3"),
        Dependency("libc6", "amd64", "2.36-9+deb12u4"),
        Dependency("gcc-12", None, "12.2.0-14"),
    )
    env = dict(info.environment)
    assert env["DEB_BUILD_OPTIONS"] == "parallel=2 nocheck"
    assert env["QUOTED"] == 'a "b" c'
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert str(info.installed_build_depends[1]) == "libc6:amd64 (= 2.36-9+deb12u4)"
    assert info.installed_build_depends[2].purl == "pkg:deb/debian/gcc-12@12.2.0-14"


BINNMU_CHANGES = (
    "Binary-Only-Changes:\n"
    " hello (1:2.10-3+b1) sid; urgency=low, binary-only=yes\n"
    " .\n"
    "   * Binary-only non-maintainer upload for amd64; no source changes.\n"
    "   * Rebuild against libc6 2.36.\n"
    " .\n"
    "  -- Debian buildd <buildd@example.org>  Sat, 01 Jun 2024 12:00:00 +0000\n"
)


def _binnmu(changes: str | None = BINNMU_CHANGES) -> str:
    text = BUILDINFO.replace("Source: hello\n", "Source: hello (1:2.10-3)\n").replace(
        "Version: 1:2.10-3\n", "Version: 1:2.10-3+b1\n"
    )
    if changes is None:
        return text
    return text.replace("Checksums-Sha256:", changes + "Checksums-Sha256:")


def test_binnmu_source_field_gives_the_source_version() -> None:
    info = parse_buildinfo(_binnmu().encode())
    assert (info.source, info.version, info.binary_version) == ("hello", "1:2.10-3", "1:2.10-3+b1")
    assert info.is_binnmu
    assert info.binary_only_changes == (
        "hello (1:2.10-3+b1) sid; urgency=low, binary-only=yes\n\n"
        "  * Binary-only non-maintainer upload for amd64; no source changes.\n"
        "  * Rebuild against libc6 2.36.\n\n"
        " -- Debian buildd <buildd@example.org>  Sat, 01 Jun 2024 12:00:00 +0000\n"
    )
    plain = parse_buildinfo(BUILDINFO.encode())
    assert plain.binary_version == plain.version and not plain.is_binnmu


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        (None, "no Binary-Only-Changes"),
        (BINNMU_CHANGES.replace("hello (1:2.10-3+b1)", "evil (1:2.10-3+b1)"), "is for evil"),
        (BINNMU_CHANGES.replace("1:2.10-3+b1)", "1:2.10-3+b2)"), "is for hello 1:2.10-3+b2"),
        (BINNMU_CHANGES.replace(", binary-only=yes", ""), "not binary-only=yes"),
        (BINNMU_CHANGES.replace("  -- Debian", "  - Debian"), "no trailer"),
        (BINNMU_CHANGES.replace(" .\n  --", " hello (1.0) sid; urgency=low\n  --"),
         "more than one entry"),
        (BINNMU_CHANGES.replace("Rebuild", "Rebuild\x1b[2J"), "control characters"),
    ],
)
def test_bad_binnmu_is_refused(changes: str | None, words: str) -> None:
    with pytest.raises(BadDataError, match=re.escape(words)):
        parse_buildinfo(_binnmu(changes).encode())


def test_binary_only_changes_without_binnmu_version_is_refused() -> None:
    text = BUILDINFO.replace("Checksums-Sha256:", BINNMU_CHANGES + "Checksums-Sha256:")
    with pytest.raises(BadDataError, match="without a binNMU version"):
        parse_buildinfo(text.encode())


def test_clearsigned_buildinfo_payload_is_parsed() -> None:
    signed = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
        + BUILDINFO
        + "-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n"
    )
    assert parse_buildinfo(signed.encode()).source == "hello"


def test_build_path_is_optional() -> None:
    text = BUILDINFO.replace("Build-Path: /build/reproducible-path/hello-2.10\n", "")
    assert parse_buildinfo(text.encode()).build_path is None


BAD_BUILDINFO = {
    "missing-source": ("Source: hello\n", "", "missing field Source"),
    "missing-checksums": (
        f"Checksums-Sha256:\n {D1} 1234 hello_2.10-3_amd64.deb\n"
        f" {D2} 99 hello-doc_2.10-3_all.deb\n",
        "",
        "missing field Checksums-Sha256",
    ),
    "missing-installed-build-depends": (
        "Installed-Build-Depends:\n autoconf (= 2.71-3),\n libc6:amd64 (= 2.36-9+deb12u4),\n"
        " gcc-12 (= 12.2.0-14)\n",
        "",
        "missing field Installed-Build-Depends",
    ),
    "format-2": ("Format: 1.0", "Format: 2.0", "Format"),
    "uppercase-digest": (D1, D1.upper(), "not a lowercase sha256"),
    "short-digest": (f"{D1} 1234", f"{D1[:10]} 1234", "not a lowercase sha256"),
    "size-not-number": ("1234 hello_2.10-3_amd64.deb", "12x4 hello_2.10-3_amd64.deb", "size"),
    "checksum-line-two-words": (
        "1234 hello_2.10-3_amd64.deb",
        "hello_2.10-3_amd64.deb",
        "not 'sha256",
    ),
    "traversal-output-name": ("hello_2.10-3_amd64.deb", "../../hello_2.10-3_amd64.deb", "plain"),
    "hidden-output-name": ("hello_2.10-3_amd64.deb", ".hello.deb", "plain file name"),
    "duplicate-output": ("hello-doc_2.10-3_all.deb", "hello_2.10-3_amd64.deb", "twice"),
    "dependency-without-version": ("autoconf (= 2.71-3)", "autoconf", "not 'package (= version)'"),
    "dependency-range": (
        "autoconf (= 2.71-3)",
        "autoconf (>= 2.71-3)",
        "not 'package (= version)'",
    ),
    "dependency-alternatives": ("autoconf (= 2.71-3)", "autoconf (= 1) | foo (= 2)", "package"),
    "dependency-bad-version": ("gcc-12 (= 12.2.0-14)", "gcc-12 (= 12.2.0-14;rm)", "package"),
    "source-uppercase": ("Source: hello\n", "Source: Hello\n", "source package name"),
    "version-with-space": ("Version: 1:2.10-3\n", "Version: 1:2.10 3\n", "not a Debian version"),
    "architecture-bad": ("Architecture: amd64 all", "Architecture: amd64 ../x", "Architecture"),
    "architecture-source-only": ("Architecture: amd64 all", "Architecture: source", "no binary"),
    "env-unquoted": ('LANG="C.UTF-8"', "LANG=C.UTF-8", "Environment line"),
    "env-twice": ('LANG="C.UTF-8"', 'LANG="C.UTF-8"\n LANG="C"', "twice"),
    "env-bad-name": ('LANG="C.UTF-8"', 'LA-NG="C"', "Environment line"),
    "build-path-relative": ("/build/reproducible-path/hello-2.10", "build/hello", "absolute"),
    "build-path-dotdot": ("/build/reproducible-path/hello-2.10", "/build/../etc", "normalised"),
    "build-path-usr": ("/build/reproducible-path/hello-2.10", "/usr/lib/x", "system directory"),
    "build-path-proc": ("/build/reproducible-path/hello-2.10", "/proc/self", "system directory"),
    "build-path-tmp": ("/build/reproducible-path/hello-2.10", "/tmp/build", "system directory"),
    "build-path-root-only": ("/build/reproducible-path/hello-2.10", "/build", "normalised"),
    "build-path-double-slash": ("/build/reproducible-path/hello-2.10", "/build//x", "normalised"),
    "garbage-line": (
        "Build-Origin: Debian\n",
        "Build-Origin: Debian\nthis is not deb822\n",
        "line",
    ),
    "duplicate-field": ("Build-Origin: Debian\n", "Build-Origin: Debian\nBuild-Origin: X\n", ""),
}


@pytest.mark.parametrize("name", sorted(BAD_BUILDINFO))
def test_malformed_buildinfo_is_rejected(name: str) -> None:
    old, new, message = BAD_BUILDINFO[name]
    assert old in BUILDINFO
    with pytest.raises(BadDataError) as e:
        parse_buildinfo(BUILDINFO.replace(old, new, 1).encode())
    assert e.value.what == "buildinfo"
    assert message in e.value.reason


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("oversized", BUILDINFO.encode() + b" " * MAX_BUILDINFO_BYTES, "limit"),
        ("not-utf8", BUILDINFO.encode().replace(b"hello", b"h\xffllo", 1), "not UTF-8"),
        ("nul-byte", BUILDINFO.encode().replace(b"Build-Origin", b"Build-\x00Origin"), "NUL"),
        ("two-paragraphs", (BUILDINFO + "\nSource: other\n").encode(), "exactly one paragraph"),
        ("empty", b"", "exactly one paragraph"),
    ],
)
def test_hostile_buildinfo_bytes(name: str, data: bytes, message: str) -> None:
    with pytest.raises(BadDataError, match=message):
        parse_buildinfo(data)


def test_valid_dsc() -> None:
    dsc = parse_dsc(DSC.encode())
    assert dsc.source == "hello"
    assert [f.name for f in dsc.files] == ["hello_2.10.orig.tar.gz", "hello_2.10-3.debian.tar.xz"]
    assert dsc.files[0].size == 1000


BAD_DSC = {
    "traversal": ("hello_2.10.orig.tar.gz", "../../../etc/passwd", "not a plain file name"),
    "absolute": ("hello_2.10.orig.tar.gz", "/etc/passwd", "not a plain file name"),
    "subdir": ("hello_2.10.orig.tar.gz", "sub/hello.tar.gz", "not a plain file name"),
    "dotfile": ("hello_2.10.orig.tar.gz", ".hello.tar.gz", "not a plain file name"),
    "dotdot-inside": ("hello_2.10.orig.tar.gz", "hello..tar.gz", "not a plain file name"),
    "missing-checksums": (
        f"Checksums-Sha256:\n {D1} 1000 hello_2.10.orig.tar.gz\n"
        f" {D2} 200 hello_2.10-3.debian.tar.xz\n",
        "",
        "missing field Checksums-Sha256",
    ),
    "bad-digest": (D2, "z" * 64, "lowercase sha256"),
    "files-disagree": (
        "0123456789abcdef0123456789abcdef 200 hello_2.10-3.debian.tar.xz",
        "0123456789abcdef0123456789abcdef 200 other.tar.xz",
        "different files",
    ),
    "source-bad": ("Source: hello", "Source: hel/lo", "source package name"),
}


@pytest.mark.parametrize("name", sorted(BAD_DSC))
def test_malformed_dsc_is_rejected(name: str) -> None:
    old, new, message = BAD_DSC[name]
    assert old in DSC
    with pytest.raises(BadDataError) as e:
        parse_dsc(DSC.replace(old, new).encode())
    assert e.value.what == "dsc"
    assert message in e.value.reason


def test_oversized_dsc() -> None:
    with pytest.raises(BadDataError, match="limit"):
        parse_dsc(DSC.encode() + b"#" * MAX_DSC_BYTES)


@pytest.mark.parametrize("name", ["a", "hello_1.0.tar.xz", "x+y~z_1:2"[:5], "libfoo-1.2.deb"])
def test_plain_file_names(name: str) -> None:
    assert validate_file_name(name, "t") == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/a", "a\nb", "a b", "-rf", "x" * 256, "é"])
def test_odd_file_names(name: str) -> None:
    with pytest.raises(BadDataError):
        validate_file_name(name, "t")


@pytest.mark.parametrize("path", ["/build/x", "/build/reproducible-path/hello-1.0", "/srv/b/c"])
def test_build_paths(path: str) -> None:
    assert validate_build_path(path) == path
