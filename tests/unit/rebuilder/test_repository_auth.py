"""The watcher authenticates a repository before reading it (real gpg keys, real gpgv, real HTTP).

One named test per attack: an unsigned Release, a signature by another key, a tampered InRelease,
an expired Valid-Until, a replayed older Release, a Release for another suite, a Packages file
not matching the Release. Each leaves the node's state as it was.
"""

from __future__ import annotations

import hashlib
import logging
import lzma
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from rebuilder.config import RepositoryConfig, parse_config
from rebuilder.db import Store
from rebuilder.debian.watch import Watcher
from rqdemo.testrepo import export_keyring, make_signing_key, sign_release
from tests.support import free_port
from tests.unit.rebuilder.node_helpers import serve
from tests.unit.rebuilder.test_node_indexes import PACKAGES

DATE_1 = "Sat, 01 Jun 2024 12:00:00 UTC"
DATE_2 = "Mon, 01 Jul 2024 12:00:00 UTC"


@dataclass
class Keys:
    home: Path
    keyring: Path
    fingerprint: str
    other_home: Path
    other_fingerprint: str


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    fpr = make_signing_key(d / "archive", "test archive")
    export_keyring(d / "archive", d / "archive.gpg")
    other = make_signing_key(d / "other", "someone else")
    return Keys(d / "archive", d / "archive.gpg", fpr, d / "other", other)


class Repo:
    """A hand-made repository: Packages.xz, Release and its signatures under ``dists``."""

    def __init__(self, root: Path) -> None:
        self.dists = root / "debian" / "dists" / "stable"
        (self.dists / "main" / "binary-amd64").mkdir(parents=True)

    def write(self, home: Path | None, *, packages: bytes = PACKAGES, date: str = DATE_1,
              valid_until: str | None = None, suite: str = "stable") -> None:
        data = lzma.compress(packages)
        (self.dists / "main" / "binary-amd64" / "Packages.xz").write_bytes(data)
        (self.dists / "Release").write_text(
            f"Suite: {suite}\nCodename: {suite}\nDate: {date}\n"
            + (f"Valid-Until: {valid_until}\n" if valid_until else "")
            + "Components: main\nArchitectures: amd64\nSHA256:\n"
            f" {hashlib.sha256(data).hexdigest()} {len(data)} main/binary-amd64/Packages.xz\n"
        )
        for name in ("InRelease", "Release.gpg"):
            (self.dists / name).unlink(missing_ok=True)
        if home is not None:
            sign_release(self.dists, home)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Repo, str]]:
    repo = Repo(tmp_path / "www")
    app = web.Application()
    app.router.add_static("/", tmp_path / "www")
    async with serve(app, free_port()) as base:
        yield repo, f"{base}/debian"


def _config(base: str, tmp_path: Path, **extra: object) -> RepositoryConfig:
    return parse_config({"node": {"id": "a", "operator": "o"},
                         "repository": [{"name": "local", "base_url": base, "suite": "stable",
                                         **extra}]}, tmp_path).repositories[0]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "state.db")
    yield s
    await s.close()


async def _round(repo: RepositoryConfig, store: Store) -> tuple[Watcher, str | None, int]:
    async with aiohttp.ClientSession() as session:
        watcher = Watcher((repo,), store, session)
        report = await watcher.round(repo)
    return watcher, report.error, len(report.new)


async def test_signed_repository_is_read_and_jobs_name_the_release(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    repo, base = served
    repo.write(keys.home)
    cfg = _config(base, tmp_path, signed_by=str(keys.keyring))
    _, error, new = await _round(cfg, store)
    assert error is None and new == 3
    job = (await store.jobs_for_package("hello", "1.0-1"))[0].to_build_job()
    assert job.release is not None
    assert job.release.signer == keys.fingerprint
    assert job.release.uri == f"{base}/dists/stable/InRelease"
    assert job.release.sha256 == hashlib.sha256(
        (repo.dists / "InRelease").read_bytes()).hexdigest()
    assert job.release.date == "2024-06-01T12:00:00+00:00"
    # the same Release again: nothing is read, nothing is new
    async with aiohttp.ClientSession() as session:
        report = await Watcher((cfg,), store, session).round(cfg)
    assert report.unchanged and report.error is None and not report.new


async def test_detached_release_gpg_is_used_without_inrelease(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    repo, base = served
    repo.write(keys.home)
    (repo.dists / "InRelease").unlink()
    _, error, new = await _round(_config(base, tmp_path, signed_by=str(keys.keyring)), store)
    assert error is None and new == 3
    job = (await store.jobs_for_package("hello", "1.0-1"))[0].to_build_job()
    assert job.release is not None and job.release.uri.endswith("/Release")
    assert job.release.signer == keys.fingerprint


async def _refused(cfg: RepositoryConfig, store: Store, *needles: str) -> str:
    before = await store.counts()
    watcher, error, new = await _round(cfg, store)
    assert error is not None, "the round should have been refused"
    for needle in needles:
        assert needle in error, error
    assert new == 0 and watcher.errors == 1
    assert await store.counts() == before
    return error


async def test_unsigned_release_is_refused(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    repo, base = served
    repo.write(None)
    await _refused(_config(base, tmp_path, signed_by=str(keys.keyring)), store,
                   "is not signed", "not trusted = true")


async def test_unsigned_inrelease_is_refused(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    repo, base = served
    repo.write(None)
    (repo.dists / "InRelease").write_bytes((repo.dists / "Release").read_bytes())
    await _refused(_config(base, tmp_path, signed_by=str(keys.keyring)), store,
                   "not OpenPGP clearsigned")


async def test_repository_without_keyring_or_trust_is_refused(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    repo, base = served
    repo.write(keys.home)
    await _refused(_config(base, tmp_path), store, "neither signed_by", "trusted = true")


async def test_trusted_unsigned_repository_is_read_with_a_loud_warning(
        served: tuple[Repo, str], store: Store, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    repo, base = served
    repo.write(None)
    with caplog.at_level(logging.WARNING, "rebuilder.watch"):
        _, error, new = await _round(_config(base, tmp_path, trusted=True), store)
    assert error is None and new == 3
    assert any("UNAUTHENTICATED" in r.getMessage() for r in caplog.records)
    job = (await store.jobs_for_package("hello", "1.0-1"))[0].to_build_job()
    assert job.release is not None and job.release.signer is None


async def test_signature_by_another_key_is_refused(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    repo, base = served
    repo.write(keys.other_home)
    await _refused(_config(base, tmp_path, signed_by=str(keys.keyring)), store,
                   keys.other_fingerprint[-16:], "not in keyring", str(keys.keyring))


async def test_tampered_inrelease_is_refused(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    repo, base = served
    repo.write(keys.home)
    inrelease = repo.dists / "InRelease"
    inrelease.write_bytes(inrelease.read_bytes().replace(b"Suite: stable", b"Suite: stablf"))
    await _refused(_config(base, tmp_path, signed_by=str(keys.keyring)), store, "BAD")


async def test_text_outside_the_signed_block_is_ignored(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    """Only what gpgv says is signed is parsed: an appended unsigned SHA256 list changes
    nothing (an attacker's Packages is then refused by its digest, not silently used)."""
    repo, base = served
    repo.write(keys.home)
    evil = lzma.compress(b"Package: evil\nVersion: 1\nArchitecture: amd64\nFilename: p/e.deb\n"
                         b"SHA256: " + b"4" * 64 + b"\n")
    (repo.dists / "main" / "binary-amd64" / "Packages.xz").write_bytes(evil)
    inrelease = repo.dists / "InRelease"
    inrelease.write_bytes(inrelease.read_bytes() + (
        f"SHA256:\n {hashlib.sha256(evil).hexdigest()} {len(evil)} "
        "main/binary-amd64/Packages.xz\n").encode())
    await _refused(_config(base, tmp_path, signed_by=str(keys.keyring)), store,
                   "Packages.xz", "Release says")


async def test_expired_valid_until_is_refused(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    repo, base = served
    repo.write(keys.home, valid_until="Mon, 08 Jul 2024 12:00:00 UTC")
    await _refused(_config(base, tmp_path, signed_by=str(keys.keyring)), store,
                   "expired", "Valid-Until 2024-07-08T12:00:00+00:00")


async def test_replayed_older_release_is_refused(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    repo, base = served
    cfg = _config(base, tmp_path, signed_by=str(keys.keyring))
    repo.write(keys.home, date=DATE_2)
    assert (await _round(cfg, store))[1] is None
    # the mirror replays an older, validly signed state (without the newer version)
    repo.write(keys.home, date=DATE_1, packages=PACKAGES.split(b"\n\n")[0] + b"\n")
    await _refused(cfg, store, "2024-06-01T12:00:00+00:00", "older than the newest",
                   "2024-07-01T12:00:00+00:00", "rollback")
    # the floor survives a restart: it lives in the state database
    state = await store.release_state("local")
    assert state is not None and state["date"] == "2024-07-01T12:00:00+00:00"


async def test_release_for_another_suite_is_refused(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    repo, base = served
    repo.write(keys.home, suite="oldstable")
    await _refused(_config(base, tmp_path, signed_by=str(keys.keyring)), store,
                   "'oldstable'", "configured for 'stable'")


async def test_packages_not_matching_release_is_refused(
        served: tuple[Repo, str], keys: Keys, store: Store, tmp_path: Path) -> None:
    repo, base = served
    repo.write(keys.home)
    # the mirror swaps the index after the Release was signed
    swapped = lzma.compress(PACKAGES.replace(b"1.0-1", b"1.0-2"))
    (repo.dists / "main" / "binary-amd64" / "Packages.xz").write_bytes(swapped)
    await _refused(_config(base, tmp_path, signed_by=str(keys.keyring)), store,
                   "Packages.xz", "Release says")


async def test_sync_once_prints_new_known_and_skipped(
        served: tuple[Repo, str], keys: Keys, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``rebuilder sync --once``: verify, parse, queue, print; ``--dry-run`` changes nothing."""
    import asyncio

    from rebuilder.cli import main as cli_main
    from tests.unit.rebuilder.node_helpers import make_node

    repo, base = served
    repo.write(keys.home)
    cfg = await asyncio.to_thread(make_node, tmp_path, "--no-mqtt", "--architectures",
                                  "amd64,all", repo_url=base, signed_by=keys.keyring)
    capsys.readouterr()
    args = ["sync", "--config", str(cfg.path), "--once"]
    assert await asyncio.to_thread(cli_main, [*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"signed by {keys.fingerprint}" in out
    assert "3 source versions new (would be queued), 0 already known" in out
    assert "skipped: 1 binaries of architecture arm64: arm64 is not in architectures" in out
    store = await Store.open(cfg.node.db_path, readonly=True)
    try:
        assert (await store.counts())["queued"] == 0
        assert await store.release_state("local") is None
        assert await asyncio.to_thread(cli_main, args) == 0
        out = capsys.readouterr().out
        # foo 2:3.1-2+b1 is a binNMU: its job is keyed by the version built
        assert "3 source versions new (queued)" in out and "new: foo 2:3.1-2+b1 amd64" in out
        assert (await store.counts())["queued"] == 3
        assert await asyncio.to_thread(cli_main, args) == 0
        assert "Release unchanged since the last round" in capsys.readouterr().out
        # a new Release with one more version: the others are already known
        repo.write(keys.home, date=DATE_2, packages=PACKAGES.replace(
            b"Version: 1.0-1\nArchitecture: amd64", b"Version: 1.1-1\nArchitecture: amd64"))
        assert await asyncio.to_thread(cli_main, args) == 0
        out = capsys.readouterr().out
        assert "1 source versions new (queued), 2 already known" in out
        assert "new: hello 1.1-1 amd64" in out
        # a refused repository: exit status 1 and the reason
        repo.write(keys.other_home, date=DATE_2)
        (repo.dists / "Release.gpg").unlink()
        assert await asyncio.to_thread(cli_main, args) == 1
        assert "REFUSED, previous state kept" in capsys.readouterr().out
    finally:
        await store.close()


async def test_one_good_signature_among_several_is_enough(
        served: tuple[Repo, str], store: Store, tmp_path: Path) -> None:
    """Debian's InRelease carries several signatures; as for APT, one by a key of the keyring
    is enough, whatever gpgv's exit status says about the others."""
    from rqdemo.testrepo._repo import _gpg

    home = tmp_path / "two-keys"
    known = make_signing_key(home, "known")
    _gpg(home, "--quick-generate-key", "unknown <u@repro-quorum.invalid>", "ed25519", "sign",
         "never")
    out = _gpg(home, "--with-colons", "--list-keys").stdout.decode()
    unknown = next(ln.split(":")[9] for ln in out.splitlines()
                   if ln.startswith("fpr:") and ln.split(":")[9] != known)
    (tmp_path / "known.gpg").write_bytes(_gpg(home, "--export", known).stdout)
    repo, base = served
    repo.write(None)
    _gpg(home, "-u", known, "-u", unknown, "--clearsign", "-o", str(repo.dists / "InRelease"),
         str(repo.dists / "Release"))
    _, error, new = await _round(_config(base, tmp_path, signed_by=str(tmp_path / "known.gpg")),
                                 store)
    assert error is None and new == 3
    job = (await store.jobs_for_package("hello", "1.0-1"))[0].to_build_job()
    assert job.release is not None and job.release.signer == known
