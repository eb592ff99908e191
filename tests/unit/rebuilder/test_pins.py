"""The pure core of pin resolution: first suite listing a pin, else the snapshot, else named."""

from __future__ import annotations

from pathlib import Path

import pytest

from rebuilder.config import ConfigError, parse_config
from rebuilder.debian.buildinfo import Dependency
from rebuilder.debian.pins import Resolution, SnapshotFile, SuiteSource, resolve, scan_packages

MAIN = SuiteSource("http://deb.example/debian", "bookworm")
UPDATES = SuiteSource("http://deb.example/debian", "bookworm-updates")
SECURITY = SuiteSource("http://security.example/debian-security", "bookworm-security",
                       keyring=Path("/usr/share/keyrings/debian-archive-keyring.gpg"))
LIBC = Dependency("libc6", None, "2.36-9+deb12u4")
TZ = Dependency("tzdata", None, "2024a-0+deb12u1")
MAKE = Dependency("make", None, "4.3-4.1")
OLD = Dependency("gcc-12", None, "12.2.0-14")


def test_first_suite_listing_a_pin_wins_and_all_counts() -> None:
    suites = [
        (MAIN, frozenset({("make", "amd64", "4.3-4.1"), ("libc6", "amd64", "2.36-9+deb12u3")})),
        (UPDATES, frozenset({("tzdata", "all", "2024a-0+deb12u1")})),
        (SECURITY, frozenset({("libc6", "amd64", "2.36-9+deb12u4")})),
    ]
    r = resolve([LIBC, TZ, MAKE], suites, "amd64")
    assert r.complete and r.suites == {LIBC: SECURITY, TZ: UPDATES, MAKE: MAIN}
    assert r.summary() == {MAIN.label: 1, UPDATES.label: 1, SECURITY.label: 1}


def test_snapshot_then_missing_named_exactly() -> None:
    f = SnapshotFile("gcc-12_12.2.0-14_amd64.deb", "gcc-12", "12.2.0-14", "amd64", "a" * 40, 1)
    r = resolve([OLD, LIBC], [(MAIN, frozenset())], "amd64", {OLD: f, LIBC: None})
    assert r.snapshot == {OLD: f} and r.missing == (LIBC,)
    assert r.error() == "libc6 (= 2.36-9+deb12u4): in no configured suite or snapshot"


def test_an_arch_qualified_pin_needs_that_arch() -> None:
    dep = Dependency("libc6", "i386", "2.36-9")
    r = resolve([dep], [(MAIN, frozenset({("libc6", "amd64", "2.36-9")}))], "amd64")
    assert r.missing == (dep,)


def test_long_lists_are_cut_in_the_message() -> None:
    deps = tuple(Dependency(f"p{i}", None, "1") for i in range(25))
    assert Resolution(missing=deps).error().endswith("; and 5 more pins (see the log)")


def test_apt_lines() -> None:
    assert MAIN.apt_line() == "deb http://deb.example/debian bookworm main"
    assert SECURITY.apt_line() == (
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
        " http://security.example/debian-security bookworm-security main")


def test_scan_packages() -> None:
    data = (b"Package: make\nVersion: 4.3-4.1\nArchitecture: amd64\nFilename: x\n\n"
            b"Package: tzdata\nArchitecture: all\nVersion: 2024a-0+deb12u1\n\n"
            b"Package: broken\nVersion: 1\n")
    assert scan_packages(data) == {("make", "amd64", "4.3-4.1"),
                                   ("tzdata", "all", "2024a-0+deb12u1")}


def test_build_suites_config(tmp_path: Path) -> None:
    cfg = parse_config({
        "node": {"id": "a", "operator": "o"},
        "build": {"snapshot_url": "https://snapshot.debian.org"},
        "repository": [{"name": "debian", "base_url": "http://deb.debian.org/debian",
                        "suite": "bookworm", "build_suite": [
                            {"suite": "bookworm", "mirror": "http://deb.debian.org/debian"},
                            {"suite": "bookworm-security",
                             "mirror": "http://deb.debian.org/debian-security",
                             "keyring": "keys/debian.gpg"}]}],
    }, tmp_path)
    assert cfg.build.snapshot_url == "https://snapshot.debian.org"
    s = cfg.repositories[0].build_suites
    assert [x.suite for x in s] == ["bookworm", "bookworm-security"]
    assert s[1].keyring == tmp_path / "keys" / "debian.gpg" and s[0].keyring is None
    with pytest.raises(ConfigError, match=r"build_suite\[0\]\.mirror"):
        parse_config({"node": {"id": "a", "operator": "o"},
                      "repository": [{"name": "d", "base_url": "http://h", "suite": "s",
                                      "build_suite": [{"suite": "x", "mirror": "ftp://h"}]}]},
                     tmp_path)


def test_pool_files_give_each_pin_its_path_and_sha256() -> None:
    from rebuilder.debian.pins import pool_file, scan_pool_files

    data = (b"Package: make\nVersion: 4.3-4.1\nArchitecture: amd64\n"
            b"Filename: pool/main/m/make-dfsg/make_4.3-4.1_amd64.deb\nSHA256: " + b"AB" * 32
            + b"\n\nPackage: tzdata\nArchitecture: all\nVersion: 2024a-0+deb12u1\n\n")
    index = scan_pool_files(data)
    assert pool_file(MAKE, index, "amd64") == (
        "pool/main/m/make-dfsg/make_4.3-4.1_amd64.deb", "ab" * 32)
    # an arch-less pin is found as the native or the all package; no Filename: nothing to check
    assert pool_file(Dependency("tzdata", None, "2024a-0+deb12u1"), index, "amd64") == ("", "")
    assert pool_file(Dependency("make", None, "9"), index, "amd64") == ("", "")
