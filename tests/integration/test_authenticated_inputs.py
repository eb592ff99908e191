"""The real pipeline binds a rebuild to what was authenticated: the verified Release, the .dsc
pinned by Sources, the .dsc's uploader signature (real gpg keys, real gpgv, real builds).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from rebuilder.attest import NodeIdentity, rebuild_statement
from rebuilder.debian.build import BuildSettings, run_rebuild
from rebuilder.openpgp import SourcePolicy
from rebuilder.outcome import BuildJob, RebuildOutcome, ReleaseRef
from rqdemo.testrepo import (
    TestRepository,
    build_test_repository,
    export_keyring,
    make_signing_key,
    serve_repository,
    sign_file,
)
from verifier.statement import Digest


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory: pytest.TempPathFactory) -> TestRepository:
    return build_test_repository(tmp_path_factory.mktemp("repo") / "debian")


@pytest.fixture(scope="module")
def uploaders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, Path]:
    """(GnuPG home of a known uploader, the uploader keyring, its fingerprint, a stranger's
    GnuPG home)."""
    d = tmp_path_factory.mktemp("uploaders")
    fpr = make_signing_key(d / "uploader", "known uploader")
    export_keyring(d / "uploader", d / "uploaders.gpg")
    make_signing_key(d / "stranger", "unknown uploader")
    return d / "uploader", d / "uploaders.gpg", fpr, d / "stranger"


@pytest.fixture
def repo(base_repo: TestRepository, tmp_path: Path) -> TestRepository:
    dest = tmp_path / "debian"
    shutil.copytree(base_repo.path, dest)
    return TestRepository(dest, base_repo.packages, base_repo.architectures)


RELEASE = ReleaseRef("http://127.0.0.1:1/dists/stable/InRelease", Digest("ab" * 32),
                     "0123456789ABCDEF0123456789ABCDEF01234567", "2024-06-01T12:00:00+00:00")


def _sign_dsc(repo: TestRepository, home: Path, source: str = "rq-hello") -> Digest:
    path = repo.path / repo.package(source).dsc_path
    sign_file(path, home)
    return Digest(hashlib.sha256(path.read_bytes()).hexdigest())


async def _rebuild(repo: TestRepository, work: Path, policy: SourcePolicy,
                   dsc_sha256: Digest | None, release: ReleaseRef | None = RELEASE,
                   source: str = "rq-hello") -> tuple[BuildJob, RebuildOutcome]:
    settings = BuildSettings(timeout=300, diffoscope_enabled=False,
                             source_policies={"local": policy})
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        job = replace(repo.package(source).job(base, with_dsc=True), dsc_sha256=dsc_sha256,
                      release=release)
        return job, await run_rebuild(job, settings, work, session)


def _failed_at_fetch(outcome: RebuildOutcome, *needles: str) -> None:
    assert outcome.failure is not None and outcome.failure_stage == "fetch", outcome.failure
    for needle in needles:
        assert needle in outcome.failure, outcome.failure


async def test_dsc_signed_by_unknown_key_fails_with_require_signed_source(
        repo: TestRepository, uploaders: tuple[Path, Path, str, Path], tmp_path: Path) -> None:
    _, keyring, _, stranger = uploaders
    digest = _sign_dsc(repo, stranger)  # the archive lists it: only the uploader check is left
    _, outcome = await _rebuild(repo, tmp_path / "w", SourcePolicy(keyring, True), digest)
    _failed_at_fetch(outcome, "not in keyring", str(keyring), "require_signed_source")


async def test_unsigned_dsc_fails_with_require_signed_source(
        repo: TestRepository, uploaders: tuple[Path, Path, str, Path], tmp_path: Path) -> None:
    _, keyring, _, _ = uploaders
    pkg = repo.package("rq-hello")
    _, outcome = await _rebuild(repo, tmp_path / "w", SourcePolicy(keyring, True),
                                pkg.dsc_sha256)
    _failed_at_fetch(outcome, "not OpenPGP-signed", "require_signed_source = true")


async def test_dsc_missing_from_the_verified_sources_fails(
        repo: TestRepository, tmp_path: Path) -> None:
    _, outcome = await _rebuild(repo, tmp_path / "w", SourcePolicy(), None)
    _failed_at_fetch(outcome, "does not list rq-hello 1.0", "cannot be authenticated")


async def test_dsc_signed_by_unknown_key_is_noted_without_require(
        repo: TestRepository, uploaders: tuple[Path, Path, str, Path], tmp_path: Path) -> None:
    """Without require_signed_source an unverifiable signature is logged, not fatal: the
    build goes on past the fetch stage (the .dsc is still pinned by Sources)."""
    _, keyring, _, stranger = uploaders
    digest = _sign_dsc(repo, stranger)
    settings = BuildSettings(timeout=300, diffoscope_enabled=False,
                             source_policies={"local": SourcePolicy(keyring, False)})
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        job = replace(repo.package("rq-hello").job(base, with_dsc=True), dsc_sha256=digest,
                      release=RELEASE)
        outcome = await run_rebuild(job, settings, tmp_path / "w", session)
    log = (tmp_path / "w" / "build.log").read_text()
    assert "signature not verified" in log and "not in keyring" in log
    assert outcome.failure_stage != "fetch", outcome.failure
    dsc = next(d for d in outcome.resolved_dependencies if d["name"].endswith(".dsc"))
    assert "annotations" not in dsc


@pytest.mark.slow
async def test_attestation_names_the_release_and_the_dsc_signer(
        repo: TestRepository, uploaders: tuple[Path, Path, str, Path], tmp_path: Path) -> None:
    home, keyring, fpr, _ = uploaders
    digest = _sign_dsc(repo, home)
    job, outcome = await _rebuild(repo, tmp_path / "w", SourcePolicy(keyring, True), digest)
    assert outcome.failure is None, outcome.failure
    assert outcome.verdict == "reproduced"
    statement = rebuild_statement(outcome, NodeIdentity("rb", "http://rb/v1/node", "0"),
                                  invocation_id="rb/1/1", repository="local", reports={})
    deps = statement.to_dict()["predicate"]["buildDefinition"]["resolvedDependencies"]
    release = deps[0]
    assert release == {"name": "InRelease", "uri": RELEASE.uri,
                       "digest": {"sha256": RELEASE.sha256},
                       "annotations": {"signer": RELEASE.signer, "date": RELEASE.date}}
    dsc = next(d for d in deps if d["name"] == "rq-hello_1.0.dsc")
    assert dsc["digest"] == {"sha256": digest}
    assert dsc["annotations"] == {"signer": fpr}
    assert job.release == RELEASE
