"""Pins resolved before any bootstrap: configured suites first, then a snapshot archive.

The snapshot archive is a local aiohttp server implementing snapshot.debian.org's
machine-readable endpoints (``/mr/binary/<pkg>/<ver>/binfiles?fileinfo=1``, ``/file/<sha1>``)
over real .deb files fetched from the Debian mirror with ``apt-get download`` (cached under
``$RQ_DEB_CACHE``, default ``~/.cache/repro-quorum/debs``). The configured suite is a local APT
repository made with apt-ftparchive from one of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from rebuilder.debian.build import BuildSettings, run_rebuild
from rebuilder.debian.buildinfo import Dependency
from rebuilder.debian.pins import SnapshotClient, SuiteSource, resolve, suite_versions
from rqdemo.testrepo import build_test_repository, serve_repository
from tests.support import free_port
from verifier.errors import BadDataError

pytestmark = pytest.mark.slow

HELLO = Dependency("hello", None, "2.10-3")  # bookworm's; amd64
COWSAY = Dependency("cowsay", None, "3.03+dfsg2-8")  # bookworm's; Architecture: all
GONE = Dependency("libc6", None, "2.36-9+deb12u4")


@pytest.fixture(scope="module")
def debs() -> dict[str, Path]:
    cache = Path(os.environ.get("RQ_DEB_CACHE")
                 or Path.home() / ".cache" / "repro-quorum" / "debs")
    cache.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o755)  # noqa: S103  # apt's download user writes here
    names = {"hello": "hello_2.10-3_amd64.deb", "cowsay": "cowsay_3.03+dfsg2-8_all.deb"}
    missing = [f"{p}={n.split('_')[1]}" for p, n in names.items() if not (cache / n).is_file()]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=cache, check=True,
                       capture_output=True, timeout=300)
    return {p: cache / n for p, n in names.items()}


def _fields(deb: Path) -> tuple[str, str, str]:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"],
                         capture_output=True, text=True, check=True).stdout
    f = dict(line.split(": ", 1) for line in out.splitlines())
    return f["Package"], f["Version"], f["Architecture"]


@dataclass
class Snapshot:
    """snapshot.debian.org's endpoints over local files; ``swap`` serves other bytes."""

    files: dict[str, Path]  # sha1 -> file
    index: dict[tuple[str, str], list[tuple[str, str]]]  # (pkg, ver) -> [(arch, sha1)]
    swap: dict[str, Path] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, debs: list[Path]) -> Snapshot:
        files: dict[str, Path] = {}
        index: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for deb in debs:
            sha1 = hashlib.sha1(deb.read_bytes()).hexdigest()  # noqa: S324
            pkg, ver, arch = _fields(deb)
            files[sha1] = deb
            index.setdefault((pkg, ver), []).append((arch, sha1))
        return cls(files, index)

    def app(self) -> web.Application:
        async def binfiles(request: web.Request) -> web.Response:
            self.requests.append(request.path_qs)
            key = (request.match_info["pkg"], request.match_info["ver"])
            if key not in self.index:
                raise web.HTTPNotFound()
            result = [{"architecture": a, "hash": h} for a, h in self.index[key]]
            doc: dict[str, object] = {"_comment": "foo", "binary": key[0],
                                      "binary_version": key[1], "result": result}
            if request.query.get("fileinfo") == "1":
                doc["fileinfo"] = {h: [{"archive_name": "debian", "first_seen": "20230610T000000Z",
                                        "name": self.files[h].name, "path": "/pool/main/x",
                                        "size": self.files[h].stat().st_size}]
                                   for _, h in self.index[key]}
            return web.json_response(doc)

        async def file(request: web.Request) -> web.Response:
            self.requests.append(request.path_qs)
            sha1 = request.match_info["hash"]
            path = self.swap.get(sha1) or self.files.get(sha1)
            if path is None:
                raise web.HTTPNotFound()
            return web.Response(body=path.read_bytes())

        app = web.Application()
        app.router.add_get("/mr/binary/{pkg}/{ver}/binfiles", binfiles)
        app.router.add_get("/file/{hash}", file)
        return app


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _suite_repo(root: Path, debs: list[Path], arch: str = "amd64") -> Path:
    """A one-suite APT repository (suite 'test', component main) holding ``debs``."""
    pool = root / "pool" / "main"
    pool.mkdir(parents=True)
    for deb in debs:
        (pool / deb.name).write_bytes(deb.read_bytes())
    out = root / "dists" / "test" / "main" / f"binary-{arch}"
    out.mkdir(parents=True)
    (out / "Packages").write_bytes(subprocess.run(
        ["apt-ftparchive", "--arch", arch, "packages", "pool"], cwd=root, check=True,
        capture_output=True).stdout)
    release = subprocess.run(["apt-ftparchive", "release", "."], cwd=root / "dists" / "test",
                             check=True, capture_output=True).stdout
    (root / "dists" / "test" / "Release").write_bytes(release)
    return root


async def test_pins_from_the_suite_then_the_snapshot_and_the_rest_named(
    debs: dict[str, Path], tmp_path: Path
) -> None:
    repo = _suite_repo(tmp_path / "suite", [debs["cowsay"]])
    snap = Snapshot.of([debs["hello"], debs["cowsay"]])
    async with serve_repository(repo) as base, serve(snap.app()) as snapshot, \
            aiohttp.ClientSession() as session:
        suite = SuiteSource(base, "test")
        have = await suite_versions(session, suite, "amd64")
        assert ("cowsay", "all", COWSAY.version) in have
        client = SnapshotClient(session, snapshot, tmp_path / "packages")
        first = resolve([COWSAY, HELLO, GONE], [(suite, have)], "amd64")
        assert first.missing == (HELLO, GONE)
        found = {d: await client.lookup(d, "amd64") for d in first.missing}
        r = resolve([COWSAY, HELLO, GONE], [(suite, have)], "amd64", found)
        assert r.suites == {COWSAY: suite}
        assert r.snapshot[HELLO].name == "hello_2.10-3_amd64.deb"
        assert r.error() == "libc6 (= 2.36-9+deb12u4): in no configured suite or snapshot"
        # the file is fetched by its sha1, checked, and cached for every later build
        path = await client.download(r.snapshot[HELLO])
        assert path.read_bytes() == debs["hello"].read_bytes()
        before = len(snap.requests)
        assert await client.download(r.snapshot[HELLO]) == path
        assert len(snap.requests) == before


async def test_snapshot_serving_other_bytes_is_refused(
    debs: dict[str, Path], tmp_path: Path
) -> None:
    snap = Snapshot.of([debs["hello"]])
    (sha1,) = snap.files
    snap.swap[sha1] = debs["cowsay"]
    async with serve(snap.app()) as snapshot, aiohttp.ClientSession() as session:
        client = SnapshotClient(session, snapshot, tmp_path / "packages")
        f = await client.lookup(HELLO, "amd64")
        assert f is not None
        with pytest.raises(BadDataError, match=r"bytes, the archive says|sha1 is"):
            await client.download(f)
    assert not (tmp_path / "packages" / f"{sha1}.deb").exists()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "is not JSON"),
        (b'{"result": 3}', "has no result list"),
        (b'{"result": [{"architecture": "amd64", "hash": "../../etc"}]}', "is not a sha1"),
        (b'{"result": [{"architecture": "amd64", "hash": "' + b"a" * 40 + b'"}],'
         b' "fileinfo": {"' + b"a" * 40 + b'": [{"name": "evil_1_amd64.deb"}]}}', "is not hello_"),
    ],
)
async def test_hostile_snapshot_answers_are_refused(body: bytes, words: str,
                                                    tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/mr/binary/{pkg}/{ver}/binfiles", handler)
    async with serve(app) as snapshot, aiohttp.ClientSession() as session:
        with pytest.raises(BadDataError, match=words):
            await SnapshotClient(session, snapshot, tmp_path).lookup(HELLO, "amd64")


async def test_rebuild_fails_fast_naming_every_missing_pin(
    debs: dict[str, Path], tmp_path: Path
) -> None:
    """mmdebstrap mode: pins found nowhere fail the rebuild before anything is bootstrapped."""
    testrepo = build_test_repository(tmp_path / "testrepo")
    pkg = testrepo.package("rq-hello")
    suite_repo = _suite_repo(tmp_path / "suite", [debs["cowsay"]])
    snap = Snapshot.of([debs["hello"]])
    async with serve_repository(testrepo.path) as base, serve_repository(suite_repo) as sbase, \
            serve(snap.app()) as snapshot, aiohttp.ClientSession() as session:
        settings = BuildSettings(environment="mmdebstrap", suites=(SuiteSource(sbase, "test"),),
                                 snapshot_url=snapshot, cache_dir=tmp_path / "cache",
                                 diffoscope_enabled=False)
        outcome = await run_rebuild(pkg.job(base), settings, tmp_path / "w", session)
    assert outcome.failure_stage == "environment"
    failure = outcome.failure or ""
    deps = _deps_of(testrepo.path / pkg.buildinfo_path)
    first = deps[0]
    assert failure.startswith(f"{first}: in no configured suite or snapshot;"), failure
    assert failure.endswith(f"; and {len(deps) - 20} more pins (see the log)"), failure
    assert outcome.log_path is not None
    log = outcome.log_path.read_text()
    assert "$ mmdebstrap" not in log and "pins found nowhere:" in log
    for dep in deps:  # every one, in the log
        assert f"  {dep}: in no configured suite or snapshot\n" in log
    assert any(p.startswith("/mr/binary/debhelper/") for p in snap.requests)


def _deps_of(path: Path) -> tuple[Dependency, ...]:
    from rebuilder.debian.buildinfo import parse_buildinfo

    return parse_buildinfo(path.read_bytes()).installed_build_depends


async def test_an_environment_failure_is_appended_to_the_log(tmp_path: Path) -> None:
    """Every pin is listed by the suite, so mmdebstrap runs; the suite is a fake (no files,
    no signature) and it fails. The log keeps mmdebstrap's command line and output, and the
    failure and the digests come after them: nothing overwritten."""
    testrepo = build_test_repository(tmp_path / "testrepo")
    pkg = testrepo.package("rq-hello")
    deps = _deps_of(testrepo.path / pkg.buildinfo_path)
    root = tmp_path / "fake"
    out = root / "dists" / "test" / "main" / "binary-amd64"
    out.mkdir(parents=True)
    (out / "Packages").write_text("".join(
        f"Package: {d.name}\nVersion: {d.version}\nArchitecture: amd64\n\n" for d in deps))
    release = subprocess.run(["apt-ftparchive", "release", "."], cwd=root / "dists" / "test",
                             check=True, capture_output=True).stdout
    (root / "dists" / "test" / "Release").write_bytes(release)
    async with serve_repository(testrepo.path) as base, serve_repository(root) as fake, \
            aiohttp.ClientSession() as session:
        settings = BuildSettings(environment="mmdebstrap", suites=(SuiteSource(fake, "test"),),
                                 cache_dir=tmp_path / "cache", timeout=300,
                                 diffoscope_enabled=False)
        outcome = await run_rebuild(pkg.job(base), settings, tmp_path / "w", session)
    assert outcome.failure_stage == "environment"
    assert "mmdebstrap exited with status" in (outcome.failure or "")
    assert outcome.log_path is not None
    log = outcome.log_path.read_text()
    command = log.index("$ mmdebstrap --variant=buildd")
    failed = log.index("FAILED at environment")
    assert command < failed < log.index("verdict: failed")
    assert f"{fake} test" in log[command:failed]  # the command line is intact
    assert log.rstrip().endswith("(not rebuilt)")
