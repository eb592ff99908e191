"""The test-repository builder: real builds, a valid APT repository, caching, the HTTP server."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import time
from pathlib import Path

import aiohttp
import pytest
from debian import deb822

from rebuilder.debian.buildinfo import parse_buildinfo, parse_dsc
from rqdemo.testrepo import (
    DEFAULT_PACKAGES,
    TestRepository,
    build_test_repository,
    default_packages,
    serve_repository,
)
from rqdemo.testrepo.__main__ import main as cli_main
from verifier.debian import read_deb_identity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> TestRepository:
    return build_test_repository(tmp_path_factory.mktemp("repo") / "debian")


def test_package_set(repo: TestRepository) -> None:
    kinds = {p.source: (p.kind, p.architecture) for p in repo.packages}
    arch = repo.architectures[0]
    assert kinds == {
        "rq-hello": ("reproducible", "all"),
        "rq-hello-c": ("reproducible", arch),
        "rq-unrepro": ("unreproducible", "all"),
        "rq-tampered": ("tampered", "all"),
    }
    assert repo.architectures == (arch, "all")


def test_debs_and_buildinfo_agree_except_for_the_tampered_one(repo: TestRepository) -> None:
    for pkg in repo.packages:
        info = parse_buildinfo((repo.path / pkg.buildinfo_path).read_bytes())
        assert (info.source, info.version) == (pkg.source, pkg.version)
        assert info.build_path == f"/build/{pkg.source}-{pkg.version}"
        assert info.binary_architectures == (pkg.architecture,)
        for deb in pkg.debs:
            data = (repo.path / deb.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == deb.sha256
            ident = read_deb_identity(repo.path / deb.path)
            assert ident.subject_name == deb.name
            assert ident.source == pkg.source
            if pkg.kind == "tampered":
                assert info.checksum_of(deb.name) != deb.sha256
                assert info.checksum_of(deb.name) == pkg.original_sha256[deb.name]
            else:
                assert info.checksum_of(deb.name) == deb.sha256


def test_indexes(repo: TestRepository) -> None:
    dists = repo.path / "dists" / "stable"
    release = deb822.Release((dists / "Release").read_text())
    assert release["Suite"] == "stable"
    assert release["Architectures"].split() == list(repo.architectures)
    listed = {e["name"]: e["sha256"] for e in release["SHA256"]}
    for name, digest in listed.items():
        assert hashlib.sha256((dists / name).read_bytes()).hexdigest() == digest
    arch = repo.architectures[0]
    packages = (dists / "main" / f"binary-{arch}" / "Packages").read_bytes()
    assert (
        gzip.decompress((dists / "main" / f"binary-{arch}" / "Packages.gz").read_bytes())
        == packages
    )
    assert (
        lzma.decompress((dists / "main" / f"binary-{arch}" / "Packages.xz").read_bytes())
        == packages
    )
    entries = {
        p["Filename"].rsplit("/", 1)[1]: p["SHA256"]
        for p in deb822.Packages.iter_paragraphs(packages.decode(), use_apt_pkg=False)
    }
    expected = {d.name: d.sha256 for p in repo.packages for d in p.debs}
    assert entries == expected  # binary-<arch> lists arch:all packages too
    all_only = (dists / "main" / "binary-all" / "Packages").read_text()
    assert f"_{arch}.deb" not in all_only and "rq-hello_1.0_all.deb" in all_only
    sources = list(
        deb822.Sources.iter_paragraphs(
            (dists / "main" / "source" / "Sources").read_text(), use_apt_pkg=False
        )
    )
    assert {s["Package"] for s in sources} == {p.source for p in repo.packages}
    for s in sources:
        pkg = repo.package(s["Package"])
        assert s["Directory"] + f"/{pkg.source}_{pkg.version}.dsc" == pkg.dsc_path
        assert parse_dsc((repo.path / pkg.dsc_path).read_bytes()).source == pkg.source


def test_second_call_is_instant_from_the_cache(repo: TestRepository, tmp_path: Path) -> None:
    t0 = time.monotonic()
    again = build_test_repository(tmp_path / "again")
    assert time.monotonic() - t0 < 5
    assert again.cached
    assert [p.to_dict() for p in again.packages] == [p.to_dict() for p in repo.packages]
    # calling on an existing copy returns it without copying again
    assert build_test_repository(tmp_path / "again").path == tmp_path / "again"


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "important.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        build_test_repository(tmp_path / "mine")
    assert (tmp_path / "mine" / "important.txt").read_text() == "keep"


def test_extra_packages(tmp_path: Path) -> None:
    specs = default_packages(extra=2)
    assert len(specs) == len(DEFAULT_PACKAGES) + 2
    repo = build_test_repository(tmp_path / "r", specs)
    assert {p.source for p in repo.of_kind("reproducible")} >= {"rq-extra1", "rq-extra2"}


async def test_serve_and_job(repo: TestRepository) -> None:
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        assert base.startswith("http://127.0.0.1:")
        job = repo.package("rq-hello").job(base)
        async with session.get(job.buildinfo_url) as r:
            assert r.status == 200
            assert (
                await r.read() == (repo.path / repo.package("rq-hello").buildinfo_path).read_bytes()
            )
        for _name, (digest, url) in job.published.items():
            async with session.get(url) as r:
                assert hashlib.sha256(await r.read()).hexdigest() == digest
        async with session.get(f"{base}/pool/") as r:
            assert r.status in (403, 404)  # no directory listing
        async with session.get(f"{base}/../../etc/passwd") as r:
            assert r.status in (400, 403, 404)
    config = repo.repository_config(base)
    assert (
        config["buildinfo_url"].format(
            base=config["base_url"], source="rq-hello", version="1.0", version_noepoch="1.0",
            arch="all"
        )
        == job.buildinfo_url
    )


def test_cli_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["build", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "4 packages" in out and "rq-tampered_1.0_all.deb" in out
    assert (tmp_path / "cli" / "dists" / "stable" / "Release").exists()


def test_cli_serve(repo: TestRepository) -> None:
    import subprocess
    import sys
    import urllib.request

    from tests.support import free_port, port_open, wait_until

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rqdemo.testrepo", "serve", str(repo.path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: port_open(port), 20, f"the repository server on port {port}")
        url = f"http://127.0.0.1:{port}/dists/stable/Release"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read() == (repo.path / "dists" / "stable" / "Release").read_bytes()
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
