"""A binNMU of a test-repository package, built the way sbuild ``--make-binNMU`` builds one.

sbuild unpacks the source, prepends a ``binary-only=yes`` changelog entry whose version is the
source version plus ``+b<N>``, and runs ``dpkg-buildpackage -B``: only the arch-dependent
packages are rebuilt, named with the new version, their control data saying ``Source: <src>
(<source version>)``, and the buildinfo (``<src>_<version>+b<N>_<arch>.buildinfo``) carries the
entry as ``Binary-Only-Changes``. ``add_binnmu`` does exactly that in the rebuilder's sandbox,
publishes the new .debs and buildinfo next to the originals and rewrites the indexes::

    pkg = add_binnmu(repo, "rq-hello-c", 1, "Rebuild against libc6 2.36.")
    pkg.version   # '1.0+b1'; pkg.job(base) is the job the watcher makes for it
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from rqdemo.testrepo._buildd import buildd_build
from rqdemo.testrepo._repo import (
    _MARKER,
    PublishedDeb,
    TestPackage,
    TestRepository,
    _indexes,
    _sha256,
    host_arch,
)

__all__ = ["BINNMU_DATE", "BINNMU_MAINTAINER", "add_binnmu", "binnmu_entry"]

BINNMU_MAINTAINER = "repro-quorum test buildd <buildd@repro-quorum.invalid>"
BINNMU_DATE = "Mon, 01 Jul 2024 12:00:00 +0000"  # fixed: SOURCE_DATE_EPOCH comes from it


def binnmu_entry(source: str, version: str, arch: str, reason: str,
                 distribution: str = "unstable") -> str:
    """The changelog entry, in sbuild's words and layout (Sbuild::Build, 'Hack binNMU version')."""
    lines = " ".join(reason.split("\n"))
    return (
        f"{source} ({version}) {distribution}; urgency=low, binary-only=yes\n\n"
        f"  * Binary-only non-maintainer upload for {arch}; no source changes.\n"
        f"  * {lines}\n\n"
        f" -- {BINNMU_MAINTAINER}  {BINNMU_DATE}\n\n"
    )


def add_binnmu(repo: TestRepository, source: str, n: int = 1,
               reason: str = "Rebuild against the new toolchain.") -> TestPackage:
    """Build binNMU ``+b<n>`` of the arch-dependent package ``source`` into ``repo``."""
    pkg = repo.package(source)
    arch = host_arch()
    if pkg.architecture == "all":
        raise ValueError(f"{source} is Architecture: all; binNMUs rebuild arch-dependent packages")
    version = f"{pkg.version}+b{n}"
    pool_rel = pkg.dsc_path.rsplit("/", 1)[0]
    pool = repo.path / pool_rel
    work = Path(tempfile.mkdtemp(prefix="rq-binnmu-"))
    try:
        os.chmod(work, 0o755)  # noqa: S103  # the sandbox user must reach the build tree
        top = work / source
        top.mkdir()
        log = work / "build.log"
        dsc = pkg.dsc_path.rsplit("/", 1)[1]
        shutil.copyfile(repo.path / pkg.dsc_path, top / dsc)
        for name in os.listdir(pool):
            if name.startswith(f"{source}_{pkg.version}.") and not name.endswith(".dsc"):
                shutil.copyfile(pool / name, top / name)
        leaf = f"{source}-{pkg.version}"

        def prepend_entry(tree: Path) -> None:
            changelog = tree / "debian" / "changelog"
            changelog.write_text(binnmu_entry(source, version, arch, reason)
                                 + changelog.read_text())

        # sbuild's binNMU build: arch-dependent packages only
        buildd_build(top, dsc, leaf, log, build_parent="/build",
                     argv=["dpkg-buildpackage", "-B", "--no-sign", "-rfakeroot"],
                     before_build=prepend_entry, timeout=600)
        buildinfo_name = f"{source}_{version}_{arch}.buildinfo"
        shutil.copyfile(top / buildinfo_name, repo.path / "buildinfo" / buildinfo_name)
        debs: list[PublishedDeb] = []
        original = {}
        for deb in sorted(top.glob(f"*_{version}_{arch}.deb")):
            original[deb.name] = _sha256(deb)
            shutil.copyfile(deb, pool / deb.name)
            debs.append(PublishedDeb(deb.name, _sha256(pool / deb.name),
                                     (pool / deb.name).stat().st_size, f"{pool_rel}/{deb.name}"))
        if not debs:
            raise RuntimeError(f"the binNMU of {source} produced no .deb; see {log}")
        if repo.gnupg_home is None:
            raise RuntimeError("this repository was loaded without its signing key")
        _indexes(repo.path, arch, log, repo.gnupg_home)
    except subprocess.SubprocessError as e:
        raise RuntimeError(f"building the binNMU of {source} failed: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    built = TestPackage(
        source=source, version=version, architecture=arch, kind="reproducible",
        debs=tuple(debs), dsc_path=pkg.dsc_path, dsc_sha256=pkg.dsc_sha256,
        buildinfo_path=f"buildinfo/{buildinfo_name}", original_sha256=original,
    )
    marker = repo.path / _MARKER
    meta = json.loads(marker.read_text())
    meta["packages"].append(built.to_dict())
    marker.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return built
