"""End to end in host mode: every test-repository package rebuilt with the real pipeline.

Reproducible packages come back ``reproduced``; the unreproducible and the tampered ones come
back ``unreproducible`` and ``tampered`` with real diffoscope reports that show the difference.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from rebuilder.debian.build import BACKEND, BuildSettings, run_rebuild
from rebuilder.outcome import RebuildOutcome
from rqdemo.testrepo import TestPackage, TestRepository, build_test_repository, serve_repository
from verifier.debian import sha256_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> TestRepository:
    return build_test_repository(tmp_path_factory.mktemp("repo") / "debian")


async def rebuild(repo: TestRepository, pkg: TestPackage, work: Path) -> RebuildOutcome:
    settings = BuildSettings(timeout=300, diffoscope_timeout=120, max_report_mb=5)
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        return await run_rebuild(pkg.job(base), settings, work, session)


@pytest.mark.parametrize("source", ["rq-hello", "rq-hello-c"])
async def test_reproducible_package_is_reproduced(
    repo: TestRepository, source: str, tmp_path: Path
) -> None:
    pkg = repo.package(source)
    outcome = await rebuild(repo, pkg, tmp_path / "w")
    assert outcome.failure is None, outcome.failure
    assert outcome.verdict == "reproduced"
    assert {o.name for o in outcome.outputs} == {d.name for d in pkg.debs}
    for o in outcome.outputs:
        published = next(d for d in pkg.debs if d.name == o.name)
        assert o.rebuilt == o.repository == o.buildinfo == published.sha256
        assert o.report_html is None
        assert outcome.artifacts_dir is not None
        assert sha256_file(outcome.artifacts_dir / o.name) == o.rebuilt
    assert outcome.buildinfo_sha256 == sha256_file(repo.path / pkg.buildinfo_path)
    params = outcome.internal_parameters
    assert params["backend"] == BACKEND
    assert params["environment"] == "host"
    assert params["build_path"] == f"/build/{source}-1.0"
    assert params["bwrap"][0].isdigit()
    assert params["environment_variables"]["SOURCE_DATE_EPOCH"] == "1717243200"
    deps = outcome.resolved_dependencies
    assert deps[0]["name"] == f"{source}_1.0.dsc"
    assert deps[0]["digest"]["sha256"] == pkg.dsc_sha256
    debhelper = [d for d in deps if d.get("name") == "debhelper"]
    assert debhelper and debhelper[0]["uri"].startswith("pkg:deb/debian/debhelper@")
    assert not (tmp_path / "w" / "tree").exists()


async def test_arch_any_build_includes_dbgsym(repo: TestRepository, tmp_path: Path) -> None:
    pkg = repo.package("rq-hello-c")
    assert pkg.architecture != "all"
    outcome = await rebuild(repo, pkg, tmp_path / "w")
    names = sorted(o.name for o in outcome.outputs)
    assert names == [
        f"rq-hello-c-dbgsym_1.0_{pkg.architecture}.deb",
        f"rq-hello-c_1.0_{pkg.architecture}.deb",
    ]
    assert outcome.internal_parameters["build_command"][1] == "-B"


async def test_unreproducible_package_with_report(
    repo: TestRepository, tmp_path: Path
) -> None:
    pkg = repo.package("rq-unrepro")
    outcome = await rebuild(repo, pkg, tmp_path / "w")
    assert outcome.failure is None, outcome.failure
    assert outcome.verdict == "unreproducible"
    (o,) = outcome.outputs
    assert o.verdict == "unreproducible"
    assert o.rebuilt != o.repository
    assert o.repository == o.buildinfo  # the repository serves what the original build made
    assert o.report_html is not None and o.report_txt is not None
    text = o.report_txt.read_text()
    assert "build-stamp" in text
    assert "rq-unrepro" in o.report_html.read_text()
    assert outcome.internal_parameters["diffoscope"]


async def test_tampered_package_showing_the_injection(
    repo: TestRepository, tmp_path: Path
) -> None:
    pkg = repo.package("rq-tampered")
    outcome = await rebuild(repo, pkg, tmp_path / "w")
    assert outcome.verdict == "tampered"
    (o,) = outcome.outputs
    assert o.verdict == "tampered"
    # the rebuild agrees with the buildinfo, not with the file the repository serves
    assert o.rebuilt == o.buildinfo != o.repository
    assert o.report_txt is not None and o.report_html is not None
    assert "attacker.invalid" in o.report_txt.read_text()
    assert "attacker.invalid" in o.report_html.read_text()


async def test_missing_rebuild_when_the_repository_lists_more(
    repo: TestRepository, tmp_path: Path
) -> None:
    """A published file the build does not produce is reported, not silently ignored."""
    pkg = repo.package("rq-hello")
    extra = "rq-hello-extra_1.0_all.deb"
    job = pkg.job("http://unused.invalid")
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        job = pkg.job(base)
        published = {**job.published, extra: ("0" * 64, f"{base}/pool/{extra}")}
        job = type(job)(**{**job.__dict__, "published": published})
        outcome = await run_rebuild(
            job, BuildSettings(diffoscope_enabled=False), tmp_path / "w", session
        )
    verdicts = {o.name: o.verdict for o in outcome.outputs}
    assert verdicts == {"rq-hello_1.0_all.deb": "reproduced", extra: "missing-rebuild"}
    assert outcome.verdict == "unreproducible"


async def test_all_package_buildinfo_named_after_the_build_architecture(
    repo: TestRepository, tmp_path: Path
) -> None:
    """dpkg names the buildinfo of a full build `_<host arch>` even when every package is
    `Architecture: all`: the `all` job finds it after `_all` answers 404."""
    import shutil

    from rebuilder.config import parse_config
    from rebuilder.debian.locate import resolve_buildinfo

    pkg = repo.package("rq-hello")
    assert pkg.architecture == "all"
    moved = repo.path / "buildinfo-dpkg"
    moved.mkdir(exist_ok=True)
    shutil.copyfile(repo.path / pkg.buildinfo_path, moved / "rq-hello_1.0_amd64.buildinfo")
    settings = BuildSettings(timeout=300, diffoscope_enabled=False)
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        config = parse_config(
            {"node": {"id": "rb-t", "operator": "op"},
             "repository": [{"name": "local", "base_url": base, "suite": "stable",
                             "architectures": ["all", "amd64"],
                             "buildinfo_url": "{base}/buildinfo-dpkg/{source}_{version_noepoch}"
                                              "_{arch}.buildinfo"}]},
            tmp_path,
        )
        job = resolve_buildinfo(config, pkg.job(base))
        assert job.buildinfo_url.endswith("_all.buildinfo")
        outcome = await run_rebuild(job, settings, tmp_path / "w", session)
    assert outcome.failure is None, outcome.failure
    assert outcome.verdict == "reproduced"
    assert outcome.job.buildinfo_url == f"{base}/buildinfo-dpkg/rq-hello_1.0_amd64.buildinfo"
    assert outcome.log_path is not None
    log = outcome.log_path.read_text()
    assert "HTTP 404" in log and log.rstrip().splitlines()[-1].startswith("    rebuilt")
