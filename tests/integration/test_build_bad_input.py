"""Hostile or broken inputs to the real pipeline: each is refused with a clear failure.

One test per attack. Every case is served by a real aiohttp server from a copy of the test
repository in which one file was altered; the rebuild must fail at the named stage with a
message naming what was wrong, and nothing may be unpacked or built when an input is bad.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from rebuilder.debian.build import BuildSettings, run_rebuild
from rebuilder.outcome import RebuildOutcome
from rqdemo.testrepo import TestPackage, TestRepository, build_test_repository, serve_repository

SETTINGS = BuildSettings(timeout=120, diffoscope_enabled=False)


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory: pytest.TempPathFactory) -> TestRepository:
    return build_test_repository(tmp_path_factory.mktemp("repo") / "debian")


@pytest.fixture
def repo(base_repo: TestRepository, tmp_path: Path) -> TestRepository:
    """A private copy of the repository, so a test may damage it."""
    dest = tmp_path / "debian"
    shutil.copytree(base_repo.path, dest)
    return TestRepository(dest, base_repo.packages, base_repo.architectures)


async def rebuild(
    repo: TestRepository,
    work: Path,
    source: str = "rq-hello",
    alter: Callable[[TestPackage], TestPackage] | None = None,
    settings: BuildSettings = SETTINGS,
    with_dsc: bool = False,
) -> RebuildOutcome:
    pkg = repo.package(source)
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        job = (alter(pkg) if alter else pkg).job(base, with_dsc=with_dsc)
        return await run_rebuild(job, settings, work, session)


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def buildinfo(repo: TestRepository, source: str = "rq-hello") -> Path:
    return repo.path / repo.package(source).buildinfo_path


def dsc(repo: TestRepository, source: str = "rq-hello") -> Path:
    return repo.path / repo.package(source).dsc_path


def assert_nothing_unpacked(work: Path, fetched: bool = False) -> None:
    """No sandbox ran (the log shows no unpacking) and, unless ``fetched``, no source file kept."""
    log = (work / "build.log").read_text()
    assert "unpacking" not in log and "dpkg-source" not in log
    assert not (work / "artifacts").exists()
    if not fetched:
        inputs = work / "inputs"
        kept = [p.name for p in inputs.iterdir()] if inputs.exists() else []
        assert not [n for n in kept if ".tar" in n or n.endswith(".part")], kept


def failed(outcome: RebuildOutcome, stage: str, *needles: str) -> None:
    assert outcome.failure is not None, "the rebuild did not fail"
    assert outcome.failure_stage == stage, (outcome.failure_stage, outcome.failure)
    for n in needles:
        assert n in outcome.failure, f"{n!r} not in {outcome.failure!r}"
    assert outcome.outputs == ()
    assert outcome.log_path is not None and outcome.failure[:60] in outcome.log_path.read_text()


async def test_baseline_rebuild_succeeds(repo: TestRepository, tmp_path: Path) -> None:
    """The unaltered copy reproduces: every failure below comes from the one alteration."""
    outcome = await rebuild(repo, tmp_path / "w")
    assert outcome.verdict == "reproduced", outcome.failure


async def test_malformed_buildinfo(repo: TestRepository, tmp_path: Path) -> None:
    edit(buildinfo(repo), "Checksums-Sha256:\n ", "Checksums-Sha256:\n not-a-digest ")
    outcome = await rebuild(repo, tmp_path / "w")
    failed(outcome, "fetch", "buildinfo", "Checksums-Sha256", "not-a-digest")
    # fetched but malformed: the digest still names what was refused
    assert outcome.buildinfo_sha256 == hashlib.sha256(buildinfo(repo).read_bytes()).hexdigest()
    assert_nothing_unpacked(tmp_path / "w")


async def test_buildinfo_with_two_paragraphs(repo: TestRepository, tmp_path: Path) -> None:
    path = buildinfo(repo)
    path.write_text(path.read_text() + "\nSource: other\nVersion: 2\n")
    failed(await rebuild(repo, tmp_path / "w"), "fetch", "exactly one paragraph")


async def test_oversized_buildinfo(repo: TestRepository, tmp_path: Path) -> None:
    path = buildinfo(repo)
    path.write_text(path.read_text() + "X-Padding:\n" + " x\n" * 2_500_000)
    outcome = await rebuild(repo, tmp_path / "w")
    failed(outcome, "fetch", "buildinfo", "limit")
    assert outcome.buildinfo_sha256 is None  # never read in full
    assert_nothing_unpacked(tmp_path / "w")


async def test_buildinfo_for_another_package(repo: TestRepository, tmp_path: Path) -> None:
    edit(buildinfo(repo), "Source: rq-hello\n", "Source: rq-other\n")
    failed(await rebuild(repo, tmp_path / "w"), "fetch", "rq-other", "the job is rq-hello")


async def test_buildinfo_build_path_traversal(repo: TestRepository, tmp_path: Path) -> None:
    edit(buildinfo(repo), "Build-Path: /build/rq-hello-1.0", "Build-Path: /build/../etc/cron.d")
    failed(await rebuild(repo, tmp_path / "w"), "fetch", "Build-Path", "/build/../etc/cron.d")


async def test_buildinfo_unreachable(repo: TestRepository, tmp_path: Path) -> None:
    buildinfo(repo).unlink()
    outcome = await rebuild(repo, tmp_path / "w")
    failed(outcome, "fetch", "HTTP 404")
    assert outcome.buildinfo_sha256 is None


async def test_malformed_dsc(repo: TestRepository, tmp_path: Path) -> None:
    text = dsc(repo).read_text()
    dsc(repo).write_text(re.sub(r"Checksums-Sha256:\n [^\n]*\n", "", text))
    failed(await rebuild(repo, tmp_path / "w"), "fetch", "dsc", "missing field Checksums-Sha256")
    assert_nothing_unpacked(tmp_path / "w")


async def test_oversized_dsc(repo: TestRepository, tmp_path: Path) -> None:
    path = dsc(repo)
    path.write_text(path.read_text() + "X-Padding:\n" + " y\n" * 600_000)
    failed(await rebuild(repo, tmp_path / "w"), "fetch", "dsc", "limit")
    assert_nothing_unpacked(tmp_path / "w")


async def test_path_traversal_in_dsc_file_name(repo: TestRepository, tmp_path: Path) -> None:
    edit(dsc(repo), "rq-hello_1.0.tar.xz", "../../../../etc/rq-evil.tar.xz", count=3)
    outcome = await rebuild(repo, tmp_path / "w")
    failed(outcome, "fetch", "../../../../etc/rq-evil.tar.xz", "not a plain file name")
    assert not Path("/etc/rq-evil.tar.xz").exists()
    assert_nothing_unpacked(tmp_path / "w")


async def test_absolute_path_in_dsc_file_name(repo: TestRepository, tmp_path: Path) -> None:
    edit(dsc(repo), "rq-hello_1.0.tar.xz", "/tmp/rq-evil.tar.xz", count=3)
    failed(await rebuild(repo, tmp_path / "w"), "fetch", "not a plain file name")


async def test_source_file_hash_mismatch(repo: TestRepository, tmp_path: Path) -> None:
    """Same size, different bytes: the download is refused before anything is unpacked."""
    tarball = dsc(repo).with_name("rq-hello_1.0.tar.xz")
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tarball.write_bytes(bytes(data))
    work = tmp_path / "w"
    outcome = await rebuild(repo, work)
    failed(outcome, "fetch", "rq-hello_1.0.tar.xz", "sha256", hashlib.sha256(data).hexdigest())
    assert_nothing_unpacked(work)
    assert "dpkg-source" not in (work / "build.log").read_text()


async def test_source_file_size_mismatch(repo: TestRepository, tmp_path: Path) -> None:
    tarball = dsc(repo).with_name("rq-hello_1.0.tar.xz")
    tarball.write_bytes(tarball.read_bytes() + b"appended")
    failed(await rebuild(repo, tmp_path / "w"), "fetch", "bytes, expected")
    assert_nothing_unpacked(tmp_path / "w")


async def test_source_over_the_size_limit(repo: TestRepository, tmp_path: Path) -> None:
    edit(dsc(repo), " 856 rq-hello_1.0.tar.xz", f" {3 * 1024 * 1024} rq-hello_1.0.tar.xz", count=3)
    settings = BuildSettings(timeout=120, max_source_mb=2, diffoscope_enabled=False)
    failed(await rebuild(repo, tmp_path / "w", settings=settings), "fetch", "limit 2 MiB")


async def test_dsc_digest_differs_from_sources_index(repo: TestRepository, tmp_path: Path) -> None:
    """With the Sources index digest in the job, a replaced .dsc is refused."""
    edit(dsc(repo), "Standards-Version: 4.6.2", "Standards-Version: 4.6.3")
    outcome = await rebuild(repo, tmp_path / "w", with_dsc=True)
    failed(outcome, "fetch", ".dsc sha256", "Sources index says")


async def test_host_environment_mismatch(repo: TestRepository, tmp_path: Path) -> None:
    path = buildinfo(repo)
    installed = re.search(r" debhelper \(= ([^)]+)\)", path.read_text())
    assert installed
    edit(path, f" debhelper (= {installed[1]})", " debhelper (= 99.0-fake)")
    edit(
        path, "Installed-Build-Depends:\n", "Installed-Build-Depends:\n rq-not-installed (= 1.0),\n"
    )
    work = tmp_path / "w"
    outcome = await rebuild(repo, work)
    failed(
        outcome,
        "environment",
        "2 differences",
        f"debhelper (= 99.0-fake): installed {installed[1]}",
        "rq-not-installed (= 1.0): not installed",
    )
    assert_nothing_unpacked(work, fetched=True)


async def test_buildinfo_for_a_foreign_architecture(repo: TestRepository, tmp_path: Path) -> None:
    path = buildinfo(repo, "rq-hello-c")
    arch = repo.package("rq-hello-c").architecture
    foreign = "s390x" if arch != "s390x" else "amd64"
    text = path.read_text().replace(f"Architecture: {arch}\n", f"Architecture: {foreign}\n")
    path.write_text(text.replace(f"_{arch}.deb", f"_{foreign}.deb"))

    def as_foreign(p: TestPackage) -> TestPackage:
        return TestPackage(**{**p.__dict__, "architecture": foreign})

    outcome = await rebuild(repo, tmp_path / "w", "rq-hello-c", alter=as_foreign)
    failed(outcome, "environment", f"builds for {foreign}", f"this node is {arch}")


async def test_retry_in_the_same_work_dir_starts_clean(
    repo: TestRepository, tmp_path: Path
) -> None:
    """Files of an earlier attempt (a crash, a re-queue) never mix with the new outcome."""
    work = tmp_path / "w"
    for d in ("reports", "artifacts", "inputs", "tree"):
        (work / d).mkdir(parents=True)
        (work / d / "stale_1.0_all.deb").write_text("old")
    outcome = await rebuild(repo, work)
    assert outcome.verdict == "reproduced", outcome.failure
    assert outcome.artifacts_dir is not None
    assert sorted(p.name for p in outcome.artifacts_dir.iterdir()) == ["rq-hello_1.0_all.deb"]
    assert not (work / "reports").exists() and not (work / "tree").exists()
    assert not (work / "inputs" / "stale_1.0_all.deb").exists()
