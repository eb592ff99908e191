"""Release/Packages parsing and grouping into jobs; one named vector per hostile index."""

from __future__ import annotations

import gzip
import hashlib
import lzma
from pathlib import Path

import pytest

from rebuilder.config import RepositoryConfig, parse_config
from rebuilder.debian.indexes import (
    check_digest,
    decompress,
    group_jobs,
    parse_packages,
    parse_release,
)
from verifier.errors import BadDataError

H1, H2, H3 = ("1" * 64), ("2" * 64), ("3" * 64)

PACKAGES = f"""Package: hello
Version: 1.0-1
Architecture: amd64
Filename: pool/main/h/hello/hello_1.0-1_amd64.deb
SHA256: {H1}

Package: hello-doc
Source: hello
Version: 1.0-1
Architecture: all
Filename: pool/main/h/hello/hello-doc_1.0-1_all.deb
SHA256: {H2}

Package: libfoo1
Source: foo (2:3.1-2)
Version: 2:3.1-2+b1
Architecture: amd64
Filename: pool/main/f/foo/libfoo1_3.1-2+b1_amd64.deb
SHA256: {H3}

Package: other-arch
Version: 1
Architecture: arm64
Filename: pool/main/o/other-arch_1_arm64.deb
SHA256: {H3}
""".encode()


def _repo() -> RepositoryConfig:
    template = "{base}/bi/{source}_{version_noepoch}_{arch}.buildinfo"
    return parse_config(
        {"node": {"id": "a", "operator": "o"},
         "repository": [{"name": "r", "base_url": "http://h/debian/", "suite": "stable",
                         "buildinfo_url": template}]},
        Path("/"),
    ).repositories[0]


def test_groups_by_version_built_and_build_arch() -> None:
    jobs = group_jobs(parse_packages(PACKAGES), _repo())
    keys = [(j.source, j.version, j.architecture) for j in jobs]
    # the binNMU is keyed by its own version, and its buildinfo named after it
    assert keys == [("foo", "2:3.1-2+b1", "amd64"), ("hello", "1.0-1", "all"),
                    ("hello", "1.0-1", "amd64")]
    foo = jobs[0]
    assert foo.published == {
        "libfoo1_3.1-2+b1_amd64.deb":
            (H3, "http://h/debian/pool/main/f/foo/libfoo1_3.1-2+b1_amd64.deb")
    }
    assert foo.buildinfo_url == "http://h/debian/bi/foo_3.1-2+b1_amd64.buildinfo"
    assert foo.source_version == "2:3.1-2" and foo.package.version == "2:3.1-2"
    assert jobs[1].source_version is None
    assert jobs[1].published["hello-doc_1.0-1_all.deb"][0] == H2


def test_a_binary_of_another_version_is_not_a_binnmu() -> None:
    """gcc-defaults builds cpp 4:12.2.0-3 from source 1.203: one job, the source's."""
    data = f"""Package: cpp
Source: gcc-defaults (1.203)
Version: 4:12.2.0-3
Architecture: amd64
Filename: pool/main/g/gcc-defaults/cpp_12.2.0-3_amd64.deb
SHA256: {H1}
""".encode()
    (j,) = group_jobs(parse_packages(data), _repo())
    assert (j.version, j.source_version) == ("1.203", None)


def test_grouping_is_deterministic_and_deduplicates() -> None:
    twice = parse_packages(PACKAGES) + parse_packages(PACKAGES)
    assert group_jobs(twice, _repo()) == group_jobs(parse_packages(PACKAGES), _repo())


def test_release_entries() -> None:
    data = f"Suite: stable\nSHA256:\n {H1} 123 main/binary-amd64/Packages.xz\n".encode()
    rel = parse_release(data)
    assert rel.entry("main/binary-amd64/Packages.xz") == (H1, 123)
    assert rel.entry("main/binary-amd64/Packages") is None


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("no-sha256", b"Suite: stable\n", "no SHA256"),
        ("bad-digest", b"SHA256:\n xyz 1 main/binary-amd64/Packages\n", "malformed digest"),
        ("bad-size", f"SHA256:\n {H1} -1 main/Packages\n".encode(), "malformed size"),
        ("traversal", f"SHA256:\n {H1} 1 ../../etc/passwd\n".encode(), "plain relative path"),
        ("absolute", f"SHA256:\n {H1} 1 /etc/passwd\n".encode(), "plain relative path"),
        ("not-utf8", b"SHA256:\n \xff\xfe 1 x\n", "UTF-8"),
        ("oversized", b"#" * (9 * 1024 * 1024), "limit"),
        ("clearsigned", b"-----BEGIN PGP SIGNED MESSAGE-----\n", "InRelease"),
    ],
)
def test_hostile_release(name: str, data: bytes, needle: str) -> None:
    with pytest.raises(BadDataError, match=needle):
        parse_release(data)


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("no-filename", f"Package: a\nVersion: 1\nArchitecture: amd64\nSHA256: {H1}\n",
         "no Filename"),
        ("bad-sha", "Package: a\nVersion: 1\nArchitecture: amd64\nFilename: p/a.deb\nSHA256: x\n",
         "SHA256"),
        ("traversal-filename",
         f"Package: a\nVersion: 1\nArchitecture: amd64\nFilename: pool/../../x.deb\nSHA256: {H1}\n",
         "'..'"),
        ("upper-package",
         f"Package: A;rm\nVersion: 1\nArchitecture: amd64\nFilename: p/a.deb\nSHA256: {H1}\n",
         "Package"),
        ("bad-source",
         f"Package: a\nSource: b (1) (2)\nVersion: 1\nArchitecture: amd64\nFilename: p/a.deb\n"
         f"SHA256: {H1}\n", "Source"),
        ("bad-version",
         f"Package: a\nVersion: 1 2\nArchitecture: amd64\nFilename: p/a.deb\nSHA256: {H1}\n",
         "Version"),
        ("garbage", "\x00\x01 binary junk without fields\n", "no package paragraph|cannot be"),
    ],
)
def test_hostile_packages(name: str, text: str, needle: str) -> None:
    with pytest.raises(BadDataError, match=needle):
        parse_packages(text.encode())


def test_compressed_indexes_and_bombs() -> None:
    assert decompress(lzma.compress(PACKAGES), ".xz", 1 << 20) == PACKAGES
    assert decompress(gzip.compress(PACKAGES), ".gz", 1 << 20) == PACKAGES
    bomb = lzma.compress(b"\n" * (8 << 20))
    with pytest.raises(BadDataError, match="more than"):
        decompress(bomb, ".xz", 1 << 20)
    gzbomb = gzip.compress(b"\n" * (8 << 20))
    with pytest.raises(BadDataError, match="more than"):
        decompress(gzbomb, ".gz", 1 << 20)
    with pytest.raises(BadDataError, match=r"corrupt|truncated"):
        decompress(b"not xz at all", ".xz", 1 << 20)
    with pytest.raises(BadDataError, match=r"truncated|corrupt"):
        decompress(gzip.compress(PACKAGES)[:-12], ".gz", 1 << 20)
    with pytest.raises(BadDataError, match="limit"):
        decompress(b"x" * 100, "", 10)


def test_digest_check() -> None:
    data = b"abc"
    good = (hashlib.sha256(data).hexdigest(), 3)
    check_digest(data, good, "x")  # type: ignore[arg-type]
    with pytest.raises(BadDataError, match="Release says 4"):
        check_digest(data, (good[0], 4), "x")  # type: ignore[arg-type]
    with pytest.raises(BadDataError, match="sha256 is"):
        check_digest(b"abd", good, "x")  # type: ignore[arg-type]


SOURCES = f"""Package: foo
Version: 2:3.1-2
Directory: pool/main/f/foo
Checksums-Sha256:
 {H1} 528 foo_3.1-2.dsc
 {H2} 932 foo_3.1.orig.tar.xz
""".encode()


def test_sources_pin_the_dsc() -> None:
    from rebuilder.debian.indexes import parse_sources

    sources = parse_sources(SOURCES)
    assert sources == {("foo", "2:3.1-2"): ("pool/main/f/foo/foo_3.1-2.dsc", H1)}
    jobs = group_jobs(parse_packages(PACKAGES), _repo(), sources)
    foo = next(j for j in jobs if j.source == "foo")
    assert foo.dsc_url == "http://h/debian/pool/main/f/foo/foo_3.1-2.dsc"
    assert foo.dsc_sha256 == H1
    assert next(j for j in jobs if j.source == "hello").dsc_url is None


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("no-dsc", SOURCES.replace(b"foo_3.1-2.dsc", b"foo_3.1-2.txt"), "lists no .dsc"),
        ("traversal", SOURCES.replace(b"pool/main/f/foo", b"pool/../../etc"), "'..'"),
        ("bad-digest", SOURCES.replace(H1.encode(), b"abc"), "checksum line"),
        ("no-checksums", b"Package: foo\nVersion: 1\nDirectory: p\n", "Checksums-Sha256"),
    ],
)
def test_hostile_sources(name: str, text: bytes, needle: str) -> None:
    from rebuilder.debian.indexes import parse_sources

    with pytest.raises(BadDataError, match=needle):
        parse_sources(text)


@pytest.mark.skipif(not __import__("rebuilder.debian.indexes").debian.indexes.HAVE_APT_PKG,
                    reason="python3-apt's apt_pkg is not importable here")
def test_apt_pkg_and_python_debian_parse_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path (apt's parser) and the fallback (python-debian's) give the same values
    and refuse the same hostile indexes."""
    import rebuilder.debian.indexes as indexes

    fast = (indexes.parse_packages(PACKAGES), indexes.parse_sources(SOURCES))
    monkeypatch.setattr(indexes, "_APT_PKG", None)
    assert (indexes.parse_packages(PACKAGES), indexes.parse_sources(SOURCES)) == fast
    with pytest.raises(BadDataError, match="SHA256"):
        indexes.parse_packages(PACKAGES.replace(H1.encode(), b"x"))
