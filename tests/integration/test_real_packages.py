"""Real Debian packages, built as a buildd builds them, rebuilt by a node in mmdebstrap mode.

The fixture takes three real bookworm source packages with ``apt-get source`` (a deb-src list
of its own): ``cowsay`` (``Architecture: all``, two binaries), ``hello`` (compiled C, with a
``-dbgsym``) and ``attr`` (epoch ``1:``, several binaries). Each is built the way Debian's
buildds do: in one mmdebstrap ``buildd`` chroot of bookworm with the build dependencies, at
``/build/reproducible-path/<src>-<version>``, ``dpkg-buildpackage -B`` (``-A`` for the ``all``
package), inside bubblewrap. The repository gets apt-ftparchive indexes, the buildinfo files
and one tampered .deb (``cowsay``'s). A node in mmdebstrap mode must then say ``reproduced``
for hello and attr, and ``tampered`` for cowsay's tampered file.

Everything is cached under ``$RQ_REAL_CACHE`` (default ``~/.cache/repro-quorum/realpkgs``;
keep it between CI runs): the sources, the original chroot, the built repository and its
signing key (``FORMAT`` names the recipe: bump it when the recipe changes). The node's chroots
(one base, a delta per pin set) are cached with the other mmdebstrap tests' under
``$RQ_CHROOT_CACHE`` (default ``~/.cache/repro-quorum/chroots``). The first run takes a few
minutes (one bootstrap for the fixture, one base for the node); later runs only rebuild. Per
package, the environment and rebuild times and the verdict are written to
``test-artifacts/real-packages.txt``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from rebuilder import sandbox
from rebuilder.config import parse_config
from rebuilder.debian.build import BuildSettings, run_rebuild
from rebuilder.debian.locate import resolve_buildinfo
from rebuilder.debian.pins import SuiteSource
from rqdemo.testrepo import serve_repository
from rqdemo.testrepo._buildd import buildd_build
from rqdemo.testrepo._repo import _indexes, export_keyring, make_signing_key
from tests.support import watcher_jobs

pytestmark = pytest.mark.slow

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
SOURCES = {"cowsay": "3.03+dfsg2-8", "hello": "2.10-3", "attr": "1:2.5.1-4"}
BUILD_DEPS = "debhelper,fakeroot,help2man,texinfo,autoconf,automake,gettext,libtool"
FORMAT = 1  # bump when the fixture's recipe changes
ROOT = Path(__file__).resolve().parents[2]


def _cache() -> Path:
    path = Path(os.environ.get("RQ_REAL_CACHE")
                or Path.home() / ".cache" / "repro-quorum" / "realpkgs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None,
         timeout: int = 1800) -> None:
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                           env=env, stdin=subprocess.DEVNULL, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({r.returncode}); see {log}")


def _original_chroot(cache: Path, log: Path) -> Path:
    final = cache / f"original-{SUITE}-{FORMAT}"
    if not (final / ".ready").exists():
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _run(["mmdebstrap", "--variant=buildd", f"--include={BUILD_DEPS}", "--mode=root",
              "--format=directory", SUITE, str(tmp), MIRROR], cache, log)
        (tmp / ".ready").write_text("ok\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return final


def _sources(cache: Path, log: Path) -> Path:
    src = cache / f"sources-{FORMAT}"
    if (src / ".ready").exists():
        return src
    shutil.rmtree(src, ignore_errors=True)
    apt = cache / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(
        f"deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} {SUITE}"
        " main\n")
    opts = ["-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o",
            "Dir::Etc::SourceParts=/dev/null", "-o", f"Dir::State::Lists={apt / 'lists'}",
            "-o", "APT::Sandbox::User=root"]
    _run(["apt-get", *opts, "update"], cache, log)
    src.mkdir()
    _run(["apt-get", *opts, "source", "--download-only",
          *(f"{p}={v}" for p, v in SOURCES.items())], src, log)
    (src / ".ready").write_text("ok\n")
    return src


def _tamper(deb: Path, log: Path) -> None:
    """Change one shipped file of ``deb`` and rebuild it, as a compromised mirror would."""
    work = deb.parent / f".tamper-{deb.name}"
    shutil.rmtree(work, ignore_errors=True)
    _run(["dpkg-deb", "-R", str(deb), str(work)], deb.parent, log)
    target = next(p for p in sorted((work / "usr" / "games").iterdir()) if p.is_file())
    target.write_bytes(target.read_bytes() + b"\n# injected by the mirror\n")
    _run(["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(work), str(deb)], deb.parent, log)
    shutil.rmtree(work)


def _build_repository(cache: Path, log: Path) -> Path:
    final = cache / f"repo-{FORMAT}"
    if (final / ".ready").exists():
        return final
    chroot = _original_chroot(cache, log)
    src = _sources(cache, log)
    repo = final.with_name(final.name + ".tmp")
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "buildinfo").mkdir(parents=True)
    work = cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o755)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    published: dict[str, dict[str, str]] = {}
    for source, version in SOURCES.items():
        noepoch = version.split(":", 1)[-1]
        upstream = noepoch.rsplit("-", 1)[0]
        top = work / source
        top.mkdir()
        for f in src.iterdir():
            if f.name.startswith(f"{source}_{upstream}"):
                shutil.copyfile(f, top / f.name)
        leaf = f"{source}-{upstream}"
        arch_all = source == "cowsay"
        buildd_build(top, f"{source}_{noepoch}.dsc", leaf, log,
                     build_parent="/build/reproducible-path",
                     argv=["dpkg-buildpackage", "-A" if arch_all else "-B", "--no-sign",
                           "-rfakeroot"],
                     env={"LC_ALL": "C.UTF-8", "DEB_BUILD_PROFILES": "noudeb"},
                     root=chroot, system_paths=sandbox.CHROOT_SYSTEM_PATHS)
        prefix = source[:4] if source.startswith("lib") else source[0]
        pool_rel = f"pool/main/{prefix}/{source}"
        pool = repo / pool_rel
        pool.mkdir(parents=True)
        for f in top.iterdir():
            built = f.name.endswith(".deb")
            source_file = f.name.startswith(f"{source}_{upstream}") and not f.name.endswith(
                (".buildinfo", ".changes"))
            if f.is_file() and (built or source_file):
                shutil.copyfile(f, pool / f.name)
        buildinfo = f"{source}_{noepoch}_{'all' if arch_all else arch}.buildinfo"
        shutil.copyfile(top / buildinfo, repo / "buildinfo" / buildinfo)
        published[source] = {d.name: d.name for d in pool.glob("*.deb")}
    _tamper(next((repo / "pool/main/c/cowsay").glob("cowsay_*_all.deb")), log)
    gnupg = cache / f"gnupg-{FORMAT}"  # the repository's signing key, outside the served tree
    if not (gnupg / "pubring.kbx").exists():
        shutil.rmtree(gnupg, ignore_errors=True)
        make_signing_key(gnupg, "repro-quorum real-packages repository")
    _indexes(repo, arch, log, gnupg)
    export_keyring(gnupg, repo.with_name(f"keyring-{FORMAT}.gpg"))
    (repo / ".ready").write_text(json.dumps(published))
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    repo.rename(final)
    return final


@pytest.fixture(scope="module")
def real_repo() -> Path:
    cache = _cache()
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_repository(cache, cache / "build.log")


def _chroot_cache() -> Path:
    base = os.environ.get("RQ_CHROOT_CACHE") or str(
        Path.home() / ".cache" / "repro-quorum" / "chroots")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _seconds(log: str, start: str, end: str) -> float:
    stamp = re.compile(r"^\[(\d\d):(\d\d):(\d\d)\] (.*)$", re.MULTILINE)
    times = [(int(h) * 3600 + int(m) * 60 + int(s), text) for h, m, s, text in stamp.findall(log)]
    t0 = next(t for t, text in times if text.startswith(start))
    t1 = next(t for t, text in times if text.startswith(end))
    return float((t1 - t0) % 86400)


async def test_real_packages_reach_the_right_verdict(real_repo: Path, tmp_path: Path) -> None:
    expected = {"hello": "reproduced", "attr": "reproduced", "cowsay": "tampered"}
    report: list[str] = []
    async with serve_repository(real_repo) as base, aiohttp.ClientSession() as session:
        config = parse_config(
            {"node": {"id": "rb-real", "operator": "op"},
             "repository": [{"name": "real", "base_url": base, "suite": "stable",
                             "signed_by": str(real_repo.with_name(f"keyring-{FORMAT}.gpg")),
                             "architectures": ["amd64", "all"],
                             "build_suite": [{"suite": SUITE, "mirror": MIRROR}]}]},
            tmp_path)
        rcfg = config.repositories[0]
        jobs = await watcher_jobs(rcfg, session, tmp_path)
        assert {(j.source, j.version) for j in jobs} == set(SOURCES.items())
        settings = BuildSettings(
            environment="mmdebstrap", suites=(SuiteSource(MIRROR, SUITE),),
            cache_dir=_chroot_cache(), timeout=3600, diffoscope_timeout=600)
        for job in jobs:
            job = resolve_buildinfo(config, job)
            t0 = time.monotonic()
            outcome = await run_rebuild(job, settings, tmp_path / job.source, session)
            total = time.monotonic() - t0
            assert outcome.failure is None, (job.source, outcome.failure)
            assert outcome.log_path is not None
            log = outcome.log_path.read_text()
            env_s = _seconds(log, "pins resolved", "chroot chroot-")
            chroot = outcome.internal_parameters["chroot"]
            how = ("cached" if chroot["cached"] else
                   f"new, {chroot['delta']} pins on"
                   f" {'a cached' if chroot['base_cached'] else 'a new'} base, {chroot['layout']}")
            report.append(
                f"{job.source} {job.version} {job.architecture}: {outcome.verdict};"
                f" rebuild {total:.0f}s, environment {env_s:.0f}s ({how});"
                + " ".join(f" {o.name}={o.verdict}" for o in outcome.outputs))
            assert outcome.verdict == expected[job.source], (job.source, outcome.outputs)
            if job.source == "cowsay":
                verdicts = {o.name.split("_")[0]: o.verdict for o in outcome.outputs}
                assert verdicts == {"cowsay": "tampered", "cowsay-off": "reproduced"}
                tampered = next(o for o in outcome.outputs if o.verdict == "tampered")
                assert tampered.report_txt is not None
                assert "./usr/games/cowsay" in tampered.report_txt.read_text()  # the changed file
            if job.source == "hello":
                assert any(o.name.startswith("hello-dbgsym_") for o in outcome.outputs)
            if job.source == "attr":
                assert job.version == "1:2.5.1-4"
                assert job.buildinfo_url.endswith("/attr_2.5.1-4_amd64.buildinfo")
                assert len(outcome.outputs) >= 3
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "real-packages.txt").write_text("\n".join(report) + "\n")
