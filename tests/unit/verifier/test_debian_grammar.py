"""The Debian grammar is written once (verifier/debian.py): whatever it accepts, every layer
accepts and python-debian reads back unchanged; whatever it refuses, every layer refuses.

Layers: the statement (PackageIdentity, subject names), the .deb identity (parse_control), the
node's Packages and .dsc parsers, the buildinfo's pinned relations, the node API's and the
coordinator's lookups, and canonical .deb names.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from debian.deb822 import PkgRelation
from debian.debian_support import Version
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.appstate import PACKAGE_PART
from rebuilder.debian.buildinfo import parse_dsc
from rebuilder.debian.indexes import parse_packages
from verifier import ecosystem
from verifier.debian import (
    ARCHITECTURE,
    DEBIAN,
    PACKAGE_NAME,
    PINNED_RELATION,
    VERSION,
    canonical_deb_name,
    parse_control,
    parse_deb_name,
    parse_source_field,
    version_noepoch,
)
from verifier.errors import BadDataError
from verifier.statement import PackageIdentity, RebuildStatement, Subject, parse_statement

names = st.from_regex(PACKAGE_NAME, fullmatch=True)
versions = st.from_regex(VERSION, fullmatch=True)
archs = st.from_regex(ARCHITECTURE, fullmatch=True)
H = "ab" * 32
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _packages_index(name: str, version: str, arch: str, source: str) -> bytes:
    deb = canonical_deb_name(name, version, arch)
    return (f"Package: {name}\nSource: {source}\nVersion: {version}\nArchitecture: {arch}\n"
            f"Filename: pool/main/x/{deb}\nSHA256: {H}\n").encode()


def _dsc(name: str, version: str) -> bytes:
    # The file name derives from neither name nor version: file names have their own, stricter rule
    # (no ".." anywhere, tests/unit/rebuilder/test_buildinfo.py "dotdot-inside"), so a valid
    # version ending in "." ("1.0.-1") or a name with ".." names files the node refuses. Refusing
    # such versions in the grammar would make one such paragraph reject a whole index.
    f = "source.tar.xz"
    return (f"Format: 3.0 (native)\nSource: {name}\nVersion: {version}\n"
            f"Checksums-Sha256:\n {H} 10 {f}\nFiles:\n {'c' * 32} 10 {f}\n").encode()


def _statement(package: PackageIdentity, subject: str) -> RebuildStatement:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    return RebuildStatement(
        package=package, subjects=(Subject(subject, H),), builder_id="https://rb.example/a",
        started_on=now, finished_on=now, invocation_id="1", buildinfo_uri="http://r/b",
        buildinfo_sha256=H, repository="http://r/debian stable")


@FAST
@given(names, versions, archs)
def test_a_valid_identity_is_accepted_by_every_layer(name: str, version: str, arch: str) -> None:
    # python-debian reads the version back unchanged, and the pinned relation the same way
    parsed = Version(version)
    assert str(parsed) == version
    assert parsed.upstream_version is not None
    relation = f"{name}:{arch} (= {version})"
    [[rel]] = PkgRelation.parse_relations(relation)
    assert (rel["name"], rel["archqual"], rel["version"]) == (name, arch, ("=", version))
    m = PINNED_RELATION.fullmatch(relation)
    assert m is not None and (m["name"], m["arch"], m["version"]) == (name, arch, version)

    # the statement, with the canonical subject name, signed-bytes round trip
    package = PackageIdentity("debian", name, version, arch)
    subject = DEBIAN.subject_name(name, version, arch)
    stmt = _statement(package, subject)
    assert parse_statement(stmt.to_bytes()) == stmt
    assert parse_deb_name(subject) == (name, version_noepoch(version), arch)

    # the .deb's control data, with Source naming another version (a binNMU)
    ident = parse_control(name, version + "+b1" if len(version) < 95 else version, arch,
                          f"{name} ({version})")
    assert (ident.source, ident.source_version) == (name, version)
    assert ident.built_by(package) or arch == "all" or ident.architecture == arch
    assert parse_source_field(f"{name} ({version})", "0") == (name, version)

    # the node: Packages index, .dsc, its API's lookup; the coordinator's lookup
    [binary] = parse_packages(_packages_index(name, version, arch, f"{name} ({version})"))
    assert (binary.package, binary.version, binary.source_version) == (name, version, version)
    dsc = parse_dsc(_dsc(name, version))
    assert (dsc.source, dsc.version) == (name, version)
    assert DEBIAN.lookup_problem(name, version) is None
    assert PACKAGE_PART.fullmatch(name) and PACKAGE_PART.fullmatch(version)


# one character outside the grammar, in each part
BAD_NAMES = ["Hello", "-hello", "hel_lo", "hel lo", "hello:amd64", "h" * 101, ""]
BAD_VERSIONS = ["1.0_1", ":1.0", "1:2:3", "a" * 101, "1.0 1", "0123456789:1", "", "1.0/1"]
BAD_ARCHS = ["AMD64", "amd_64", "-amd64", "a" * 33, ""]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_name_is_refused_by_every_layer(name: str) -> None:
    with pytest.raises(BadDataError, match="package name"):
        PackageIdentity("debian", name, "1.0-1", "amd64")
    with pytest.raises(BadDataError, match="Package"):
        parse_control(name, "1.0-1", "amd64", None)
    with pytest.raises(BadDataError):
        parse_source_field(f"{name} (1.0-1)", "1.0-1")
    if name:  # an empty field is no field to deb822
        with pytest.raises(BadDataError):
            parse_packages(_packages_index(name, "1.0-1", "amd64", name))
        with pytest.raises(BadDataError, match="Source"):
            parse_dsc(_dsc(name, "1.0-1"))
    assert DEBIAN.lookup_problem(name, "1.0-1") is not None


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_a_bad_version_is_refused_by_every_layer(version: str) -> None:
    with pytest.raises(BadDataError, match="package version"):
        PackageIdentity("debian", "hello", version, "amd64")
    with pytest.raises(BadDataError, match="Version"):
        parse_control("hello", version, "amd64", None)
    with pytest.raises(BadDataError, match="not a Debian version"):
        parse_source_field(f"hello ({version})", "1.0-1")
    if version.strip() and " " not in version:
        with pytest.raises(BadDataError):
            parse_packages(_packages_index("hello", version, "amd64", "hello"))
        with pytest.raises(BadDataError, match="Version"):
            parse_dsc(_dsc("hello", version))
    assert DEBIAN.lookup_problem("hello", version) is not None


@pytest.mark.parametrize("arch", BAD_ARCHS)
def test_a_bad_architecture_is_refused_by_every_layer(arch: str) -> None:
    with pytest.raises(BadDataError, match="package architecture"):
        PackageIdentity("debian", "hello", "1.0-1", arch)
    with pytest.raises(BadDataError, match="Architecture"):
        parse_control("hello", "1.0-1", arch, None)
    if arch:
        with pytest.raises(BadDataError):
            parse_packages(_packages_index("hello", "1.0-1", arch, "hello"))


def test_the_longest_identity_still_has_a_valid_subject_name() -> None:
    name, version, arch = "n" * 100, "9:" + "1" * 100, "a" * 32
    subject = canonical_deb_name(name, version, arch)
    _statement(PackageIdentity("debian", name, version, arch), subject)  # does not raise
    assert parse_deb_name(subject) == (name, "1" * 100, arch)


def test_unknown_ecosystem_and_build_type_name_the_known_ones() -> None:
    with pytest.raises(BadDataError, match=r"ecosystem 'pypi' is not one this verifier knows"
                                           r" \(debian\)"):
        PackageIdentity("pypi", "requests", "2.32.3", "any")
    with pytest.raises(ecosystem.UnknownEcosystem, match="debian-rebuild/v2"):
        ecosystem.by_build_type("https://example.org/other")
    assert ecosystem.by_build_type(DEBIAN.build_type) == (DEBIAN, False)
    assert ecosystem.get("debian") is DEBIAN


def test_registering_a_taken_name_or_build_type_is_refused() -> None:
    class Impostor(type(DEBIAN)):  # type: ignore[misc]
        pass

    with pytest.raises(ValueError, match="already registered"):
        ecosystem.register(Impostor())
