"""Pinned chroot preparation on real packages: cached base + delta vs plain mmdebstrap.

The pin sets are the ``Installed-Build-Depends`` of real bookworm packages built as a buildd
builds them (the buildinfo files of ``tests/integration/test_real_packages.py``'s fixture, built
first if absent, several minutes): hello's (164 pins) and cowsay's (a different set, all of whose
packages hello's build fetched). Each figure is wall time of ``environment.prepare_chroot`` in
a fresh cache, in this order:

* ``plain_s``: baseline, ``mmdebstrap --variant=buildd --include=<every pin=version>``;
* ``c_cold_s``: hello's set, nothing cached (bootstraps the base, then installs the delta);
* ``a_seen_ms``: hello's set again (its chroot is reused as it is);
* ``b_new_cached_s``: cowsay's set (new, its packages in the shared package cache);
* ``b_copy_s``: the same on a full copy of the base (the fallback without overlayfs).

Targets (issue 14): a under 5 s, b under 30 s, every case at most ``plain_s``. Needs root, the
Debian mirror and mmdebstrap; uses ``$RQ_REAL_CACHE`` like the test.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

from rebuilder.debian import environment, pins
from rebuilder.debian.buildinfo import Dependency, parse_buildinfo

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"


def _pin_sets() -> tuple[tuple[Dependency, ...], tuple[Dependency, ...]]:
    import fcntl

    from tests.integration.test_real_packages import _build_repository, _cache

    cache = _cache()
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        repo = _build_repository(cache, cache / "build.log")
    found = {f.name.split("_")[0]: parse_buildinfo(f.read_bytes()).installed_build_depends
             for f in (repo / "buildinfo").iterdir()}
    return found["hello"], found["cowsay"]


async def _prepare(deps: tuple[Dependency, ...], cache: Path, log: Path,
                   pool: dict[Dependency, tuple[str, str]],
                   layout: environment.Layout = "auto") -> environment.PreparedChroot:
    chroot = await environment.prepare_chroot(deps, cache, MIRROR, SUITE, "amd64", log,
                                              pool_files=pool, layout=layout)
    chroot.release()
    return chroot


def _plain(deps: tuple[Dependency, ...], target: Path, log: Path) -> float:
    pinned = ",".join(f"{d.name}{':' + d.arch if d.arch else ''}={d.version}" for d in deps)
    cmd = ["mmdebstrap", "--variant=buildd", "--mode=root", "--format=directory",
           f"--include=fakeroot,bubblewrap,{pinned}", SUITE, str(target), MIRROR]
    t0 = time.monotonic()
    with log.open("ab") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, timeout=3600)
    return time.monotonic() - t0


async def _run() -> dict[str, object]:
    hello, cowsay = _pin_sets()
    arch = environment.host_architecture()
    async with aiohttp.ClientSession() as session:
        index = await pins.suite_index(session, pins.SuiteSource(MIRROR, SUITE), arch)
    pool = {d: pins.pool_file(d, index, arch) for d in {*hello, *cowsay}}
    with tempfile.TemporaryDirectory(prefix="rq-bench-chroot-", dir="/var/tmp") as d:
        top = Path(d)
        log = top / "bench.log"
        cache = top / "cache"
        out: dict[str, object] = {"pins_hello": len(hello), "pins_cowsay": len(cowsay)}
        try:
            plain = await asyncio.to_thread(_plain, hello, top / "plain", log)
            shutil.rmtree(top / "plain")
            cold = await _prepare(hello, cache, log, pool)
            seen = await _prepare(hello, cache, log, pool)
            new = await _prepare(cowsay, cache, log, pool)
            assert not cold.base_cached and seen.cached and not new.cached and new.base_cached
            # only cowsay's chroot goes: the base, hello's chroot and the package cache stay
            debs = {f.name for f in (cache / "packages" / "apt").glob("*.deb")}
            gone = environment.evict_chroots(cache, 0, keep={cold.base, cold.name, *debs})
            assert gone == [new.name], gone
            copy = await _prepare(cowsay, cache, log, pool, layout="copy")
        finally:
            environment.evict_chroots(cache, 0)  # unmounts every overlay
        out.update({
            "layout": new.layout,
            "delta_hello": cold.delta,
            "delta_cowsay": new.delta,
            "plain_s": round(plain, 1),
            "c_cold_s": round(cold.seconds, 1),
            "a_seen_ms": round(seen.seconds * 1000, 1),
            "b_new_cached_s": round(new.seconds, 1),
            "b_copy_s": round(copy.seconds, 1),
            "c_vs_plain": round(cold.seconds / plain, 2),
            "b_vs_plain": round(new.seconds / plain, 3),
            "a_vs_plain": round(seen.seconds / plain, 4),
            "targets_met": seen.seconds < 5 and new.seconds < 30
            and max(cold.seconds, seen.seconds, new.seconds) <= plain,
        })
    return out


def main(quick: bool = False) -> dict[str, object]:
    return asyncio.run(_run())
