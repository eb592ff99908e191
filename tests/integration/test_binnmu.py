"""binNMUs end to end: the test publisher builds one as sbuild does, the watcher queues it by
its own version, the node rebuilds it from its buildinfo's Binary-Only-Changes, and the result
is the published file, which the verifier's identity check accepts as built by that source."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from rebuilder.config import parse_config
from rebuilder.debian.build import BuildSettings, run_rebuild
from rebuilder.debian.buildinfo import parse_buildinfo
from rebuilder.debian.locate import resolve_buildinfo
from rqdemo.testrepo import add_binnmu, build_test_repository, serve_repository
from tests.support import watcher_jobs
from verifier.debian import read_deb_identity

pytestmark = pytest.mark.slow


async def test_binnmu_is_queued_by_its_version_and_reproduced(tmp_path: Path) -> None:
    repo = build_test_repository(tmp_path / "repo")
    nmu = add_binnmu(repo, "rq-hello-c", 1, "Rebuild against libc6 2.36.")
    arch = nmu.architecture
    assert nmu.version == "1.0+b1"
    assert nmu.buildinfo_path == f"buildinfo/rq-hello-c_1.0+b1_{arch}.buildinfo"

    # what sbuild's binNMU publishes: Source (version), Binary-Only-Changes, binNMU-named .debs
    info = parse_buildinfo((repo.path / nmu.buildinfo_path).read_bytes())
    assert (info.source, info.version, info.binary_version) == ("rq-hello-c", "1.0", "1.0+b1")
    assert info.binary_only_changes is not None
    assert info.binary_only_changes.startswith(
        "rq-hello-c (1.0+b1) unstable; urgency=low, binary-only=yes\n")
    main = next(d for d in nmu.debs if d.name == f"rq-hello-c_1.0+b1_{arch}.deb")
    ident = read_deb_identity(repo.path / main.path)
    assert (ident.version, ident.source, ident.source_version) == ("1.0+b1", "rq-hello-c", "1.0")

    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        config = parse_config(
            {"node": {"id": "rb-t", "operator": "op"},
             "repository": [repo.repository_config(base)]}, tmp_path)
        rcfg = config.repositories[0]
        jobs = {(j.source, j.version, j.architecture): j
                for j in await watcher_jobs(rcfg, session, tmp_path)}
        # the original build and the binNMU are two jobs
        assert ("rq-hello-c", "1.0", arch) in jobs
        job = jobs[("rq-hello-c", "1.0+b1", arch)]
        assert job.source_version == "1.0" and job.dsc_url and job.dsc_url.endswith("_1.0.dsc")
        assert set(job.published) == {d.name for d in nmu.debs}
        assert job.buildinfo_url == f"{base}/{nmu.buildinfo_path}"
        assert ident.built_by(job.package)  # the statement names the source version

        job = resolve_buildinfo(config, job)
        outcome = await run_rebuild(job, BuildSettings(timeout=300, diffoscope_timeout=120),
                                    tmp_path / "w", session)
    assert outcome.failure is None, outcome.failure
    assert {o.name: o.verdict for o in outcome.outputs} == {
        d.name: "reproduced" for d in nmu.debs}, outcome.log_path and outcome.log_path.read_text()
    assert outcome.unpublished == ()
    assert outcome.verdict == "reproduced"
    assert outcome.internal_parameters["binnmu"] == {"version": "1.0+b1", "source_version": "1.0"}
    assert outcome.job.package.version == "1.0"


async def test_binnmu_rebuilt_without_its_changelog_is_caught(tmp_path: Path) -> None:
    """Control: a buildinfo that claims the binNMU version but lacks Binary-Only-Changes is
    refused before anything is built (it could only produce the source version's names)."""
    repo = build_test_repository(tmp_path / "repo")
    nmu = add_binnmu(repo, "rq-hello-c", 1)
    path = repo.path / nmu.buildinfo_path
    kept: list[str] = []
    in_field = False
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("Binary-Only-Changes:"):
            in_field = True
        elif not (in_field and line.startswith(" ")):
            in_field = False
            kept.append(line)
    stripped = "".join(kept)
    assert "Binary-Only-Changes" not in stripped
    path.write_text(stripped)
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        outcome = await run_rebuild(nmu.job(base, with_dsc=True), BuildSettings(timeout=300),
                                    tmp_path / "w", session)
    assert outcome.failure_stage == "fetch"
    assert "no Binary-Only-Changes" in (outcome.failure or "")
