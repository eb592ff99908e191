"""mmdebstrap mode for real: a chroot from the Debian mirror pinned to a buildinfo, then a rebuild.

The "original" build happens in a chroot made by mmdebstrap from the same mirror (so every
version in its buildinfo exists there); the rebuilder then makes its own fresh chroot pinned to
that buildinfo's Installed-Build-Depends and must reproduce the package bit for bit.

Both chroots are cached under ``$RQ_CHROOT_CACHE`` (default ``~/.cache/repro-quorum/chroots``):
the rebuilder's as a base per suite and architecture plus, per dependency list, the delta on
an overlay of it. The first run downloads about 100 MB from the mirror and takes a few minutes;
later runs reuse the trees. Delete the cache directory to exercise mmdebstrap from scratch
again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from rebuilder.debian import _chrootfs
from rebuilder.debian.build import BuildSettings, run_rebuild
from rebuilder.debian.environment import installed_packages
from rqdemo.testrepo import PackageSpec, build_test_repository, serve_repository

pytestmark = pytest.mark.slow

MIRROR = "http://deb.debian.org/debian"  # the mirror of /etc/apt/sources.list.d/debian.sources


def _suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    return "bookworm"


def _cache() -> Path:
    base = os.environ.get("RQ_CHROOT_CACHE") or str(
        Path.home() / ".cache" / "repro-quorum" / "chroots"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def original_chroot() -> Path:
    """The original build machine: buildd variant plus debhelper, from the mirror."""
    cache = _cache()
    final = cache / f"original-{_suite()}"
    with open(cache / ".original.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / ".ready").exists():
            tmp = cache / f"original-{_suite()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(
                ["mmdebstrap", "--variant=buildd", "--include=debhelper,fakeroot", "--mode=root",
                 "--format=directory", _suite(), str(tmp), MIRROR],
                check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=1800,
            )  # fmt: skip
            (tmp / ".ready").write_text("ok\n")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
    return final


async def test_rebuild_in_a_pinned_chroot(original_chroot: Path, tmp_path: Path) -> None:
    spec = (PackageSpec("rq-hello-c", "1.0", "reproducible", "c"),)
    repo = build_test_repository(tmp_path / "repo", spec, chroot=original_chroot)
    pkg = repo.package("rq-hello-c")
    settings = BuildSettings(
        environment="mmdebstrap",
        mirror=MIRROR,
        suite=_suite(),
        cache_dir=_cache(),
        timeout=1800,
        diffoscope_enabled=False,
    )
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        outcome = await run_rebuild(pkg.job(base), settings, tmp_path / "work", session)
    assert outcome.failure is None, outcome.failure
    assert outcome.environment == "mmdebstrap"
    assert outcome.verdict == "reproduced", [o.verdict for o in outcome.outputs]
    chroot = outcome.internal_parameters["chroot"]
    assert chroot["mirror"] == MIRROR and chroot["suite"] == _suite()
    assert outcome.internal_parameters["sandbox"]["system"] == "chroot"
    # a copy of the cached base with the pins it lacks installed on top
    assert chroot["layout"] == ("overlay" if _chrootfs.overlay_available()[0] else "copy")
    entry = _cache() / f"chroot-{chroot['key'][:32]}"
    base_root = _cache() / chroot["base"] / "root"
    assert "debhelper" not in installed_packages(base_root / "var" / "lib" / "dpkg")
    assert "debhelper" in installed_packages(entry / "root" / "var" / "lib" / "dpkg")
    if chroot["layout"] == "overlay":
        assert os.path.ismount(entry / "root")
        base_size = _chrootfs.tree_size(_cache() / chroot["base"])
        assert _chrootfs.tree_size(entry / "upper") < base_size / 2
    # the rebuilder's chroot holds exactly the buildinfo's versions
    installed = installed_packages(entry / "root" / "var" / "lib" / "dpkg")
    pinned = [d for d in outcome.resolved_dependencies if "annotations" in d]
    assert pinned
    for dep in pinned:
        assert installed[dep["name"]] == dep["annotations"]["version"], dep


async def test_a_pin_in_no_suite_comes_from_the_snapshot_archive(
    original_chroot: Path, tmp_path: Path
) -> None:
    """The buildinfo pins a tzdata that only bookworm-security has; the node knows only the
    main suite and a snapshot archive (a local server implementing snapshot.debian.org's
    endpoints over the real .deb), resolves the pin there before bootstrapping, and the chroot
    gets exactly that version. The rebuild still reproduces the package."""
    from rebuilder.debian.pins import SuiteSource
    from tests.integration.test_pins_snapshot import Snapshot, serve

    tz_version = "2026f-0+deb12u1"
    debs = Path(os.environ.get("RQ_DEB_CACHE")
                or Path.home() / ".cache" / "repro-quorum" / "debs")
    debs.mkdir(parents=True, exist_ok=True)
    tz = debs / f"tzdata_{tz_version}_all.deb"
    if not tz.is_file():
        subprocess.run(["apt-get", "download", f"tzdata={tz_version}"], cwd=debs, check=True,
                       capture_output=True, timeout=300)
    spec = (PackageSpec("rq-hello-c", "1.0", "reproducible", "c"),)
    repo = build_test_repository(tmp_path / "repo", spec, chroot=original_chroot)
    pkg = repo.package("rq-hello-c")
    path = repo.path / pkg.buildinfo_path
    text = path.read_text()
    assert "tzdata (=" not in text
    path.write_text(text.replace("Installed-Build-Depends:\n",
                                 f"Installed-Build-Depends:\n tzdata (= {tz_version}),\n"))
    snap = Snapshot.of([tz])
    async with serve_repository(repo.path) as base, serve(snap.app()) as snapshot, \
            aiohttp.ClientSession() as session:
        settings = BuildSettings(
            environment="mmdebstrap", suites=(SuiteSource(MIRROR, _suite()),),
            snapshot_url=snapshot, cache_dir=_cache(), timeout=1800,
            diffoscope_enabled=False,
        )
        outcome = await run_rebuild(pkg.job(base), settings, tmp_path / "work", session)
    assert outcome.failure is None, outcome.failure
    assert outcome.verdict == "reproduced", [o.verdict for o in outcome.outputs]
    assert outcome.internal_parameters["pins"]["snapshot"] == 1
    chroot = outcome.internal_parameters["chroot"]
    assert chroot["snapshot_files"] == [f"{hashlib.sha1(tz.read_bytes()).hexdigest()}.deb"]  # noqa: S324
    tree = _cache() / f"chroot-{chroot['key'][:32]}" / "root"
    assert installed_packages(tree / "var" / "lib" / "dpkg")["tzdata"] == tz_version
    assert any(p.startswith("/mr/binary/tzdata/") for p in snap.requests)
