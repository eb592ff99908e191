"""A real APT repository of tiny generated packages, for tests, the demo and benchmarks.

The packages are built with real ``dpkg-buildpackage`` inside the same bubblewrap sandbox the
rebuilder uses, at ``/build/<source>-<version>`` so that the buildinfo records a Build-Path the
rebuilder can reproduce. The repository holds ``pool/`` (.dsc, .tar.xz, .deb), the indexes
``dists/stable/Release``, ``dists/stable/main/binary-<arch>/Packages{,.gz,.xz}`` (host arch,
arch:all included, and ``binary-all``) and ``dists/stable/main/source/Sources{,.gz,.xz}``, and the
original builds' ``buildinfo/{source}_{version}_{arch}.buildinfo``.

The Release is signed (``InRelease`` and ``Release.gpg``) with a key generated once per cached
build (gpg in a private GnuPG home kept next to the cache, never in the served tree); its public
keyring is ``repo.keyring`` (``repository-keyring.gpg`` at the root), what a node's ``signed_by``
names. ``repo.resign(date=..., valid_until=...)`` rewrites and signs the Release again.

Package kinds: ``reproducible`` (rebuilds bit for bit), ``unreproducible`` (embeds build time
and random bytes), ``tampered`` (reproducible, but the published .deb was modified after the
build: Packages lists the modified file, the buildinfo keeps the original digests).

API::

    repo = build_test_repository(dest)                  # DEFAULT_PACKAGES; cached: instant 2nd time
    repo = build_test_repository(dest, default_packages(extra=5))
    repo.packages                                       # TestPackage: source, version,
                                                        #   architecture, kind, debs (name, sha256)
    async with serve_repository(repo.path) as base_url: # aiohttp static server on 127.0.0.1
        job = repo.package("rq-hello-c").job(base_url)  # the BuildJob the watcher would make
        cfg = repo.repository_config(base_url)          # the node's [[repository]] entry
    evil = add_custom_source(repo, "rq-evil", rules)    # hostile debian/rules, never built here
    nmu = add_binnmu(repo, "rq-hello-c", 1)             # a binNMU as sbuild makes one: 1.0+b1

Builds are cached under ``$RQ_TESTREPO_CACHE`` (default ``~/.cache/repro-quorum/testrepo``),
keyed by the package specs, ``GENERATOR_VERSION`` and the host's installed packages; ``dest``
gets a copy. Command line::

    python -m rqdemo.testrepo build DEST [--extra N]
    python -m rqdemo.testrepo serve DEST [--port N]
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from rqdemo.testrepo._binnmu import add_binnmu, binnmu_entry
from rqdemo.testrepo._repo import (
    BUILDINFO_TEMPLATE,
    GENERATOR_VERSION,
    PublishedDeb,
    TestPackage,
    TestRepository,
    add_custom_source,
    build_test_repository_sync,
    default_cache_dir,
    export_keyring,
    host_arch,
    make_signing_key,
    sign_file,
    sign_release,
)
from rqdemo.testrepo._sources import Kind, PackageSpec

__all__ = [
    "BUILDINFO_TEMPLATE",
    "DEFAULT_PACKAGES",
    "GENERATOR_VERSION",
    "Kind",
    "PackageSpec",
    "PublishedDeb",
    "TestPackage",
    "TestRepository",
    "add_binnmu",
    "add_custom_source",
    "binnmu_entry",
    "build_test_repository",
    "default_cache_dir",
    "default_packages",
    "export_keyring",
    "host_arch",
    "make_signing_key",
    "serve_repository",
    "sign_file",
    "sign_release",
]


def default_packages(extra: int = 0) -> tuple[PackageSpec, ...]:
    """The four standard packages plus ``extra`` more reproducible ``Architecture: all`` ones."""
    base = (
        PackageSpec("rq-hello", "1.0", "reproducible", "script"),
        PackageSpec("rq-hello-c", "1.0", "reproducible", "c"),
        PackageSpec("rq-unrepro", "1.0", "unreproducible", "script"),
        PackageSpec("rq-tampered", "1.0", "tampered", "script"),
    )
    return base + tuple(
        PackageSpec(f"rq-extra{i}", "1.0", "reproducible", "script") for i in range(1, extra + 1)
    )


DEFAULT_PACKAGES = default_packages()


def build_test_repository(
    dest: Path,
    packages: tuple[PackageSpec, ...] = DEFAULT_PACKAGES,
    cache_dir: Path | None = None,
    chroot: Path | None = None,
) -> TestRepository:
    """Build (or copy from the cache) the repository of ``packages`` into ``dest``.

    The packages are built with the host's toolchain, or with the one of ``chroot`` (a
    directory tree, e.g. made by mmdebstrap) used as the sandbox's system root.
    Blocking (real builds take a few seconds per package the first time); from async code use
    ``await asyncio.to_thread(build_test_repository, dest)``.
    """
    return build_test_repository_sync(Path(dest), tuple(packages), cache_dir, chroot)


@asynccontextmanager
async def serve_repository(
    path: Path, port: int = 0, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """Serve ``path`` over HTTP on ``host`` (a free port unless given); yields the base URL."""
    app = web.Application()
    app.router.add_static("/", Path(path), show_index=False, follow_symlinks=False)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def serve_forever(path: Path, port: int, host: str = "127.0.0.1") -> None:
    async with serve_repository(path, port, host) as url:
        print(f"serving {path} at {url}", flush=True)
        await asyncio.Event().wait()
