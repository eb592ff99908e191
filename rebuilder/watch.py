"""The watcher: poll each repository's Release and Packages and queue unknown versions.

One APScheduler job per configured repository (every ``poll_interval`` seconds, and once at
start). A round fetches ``dists/<suite>/Release``, then each component's
``binary-<arch>/Packages`` (``.xz``, else ``.gz``, else plain, whichever Release lists), checks its
size and sha256 against Release, parses it and inserts one job per (source, version, arch) not
known yet. Any bad index skips the whole round for that repository and keeps the previous state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from rebuilder.config import RepositoryConfig
from rebuilder.db import Store
from rebuilder.indexes import (
    MAX_PACKAGES_BYTES,
    MAX_RELEASE_BYTES,
    Binary,
    Release,
    SourceIndex,
    check_digest,
    decompress,
    group_jobs,
    packages_candidates,
    parse_packages,
    parse_release,
    parse_sources,
    sources_candidates,
)
from rebuilder.outcome import BuildJob
from verifier.errors import BadDataError, UnreachableError

__all__ = ["FETCH_TIMEOUT_S", "Watcher", "fetch_bounded"]

log = logging.getLogger("rebuilder.watch")
FETCH_TIMEOUT_S = 120.0
MAX_COMPRESSED_BYTES = 128 * 1024 * 1024


async def fetch_bounded(session: aiohttp.ClientSession, url: str, limit: int) -> bytes:
    """GET ``url`` and return at most ``limit`` bytes; larger bodies are refused, not cut."""
    try:
        async with asyncio.timeout(FETCH_TIMEOUT_S), session.get(url) as resp:
            if resp.status != 200:
                raise UnreachableError(url, f"HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > limit:
                raise BadDataError(url, f"{resp.content_length} bytes, limit {limit}")
            chunks: list[bytes] = []
            total = 0
            async for chunk in resp.content.iter_chunked(1 << 16):
                total += len(chunk)
                if total > limit:
                    raise BadDataError(url, f"more than {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except TimeoutError as e:
        raise UnreachableError(url, f"no complete answer within {FETCH_TIMEOUT_S:.0f}s") from e
    except aiohttp.ClientError as e:
        raise UnreachableError(url, f"{type(e).__name__}: {e}") from e


class Watcher:
    """Polls repositories and inserts jobs; ``on_new_jobs`` is called after an insertion."""

    def __init__(
        self,
        repositories: tuple[RepositoryConfig, ...],
        store: Store | None,
        session: aiohttp.ClientSession,
        on_new_jobs: Callable[[list[BuildJob]], None] | None = None,
    ) -> None:
        self.repositories = repositories
        self.store = store
        self.session = session
        self.on_new_jobs = on_new_jobs
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.rounds = 0
        self.errors = 0

    def start(self) -> None:
        for repo in self.repositories:
            self.scheduler.add_job(
                self.poll, "interval", args=[repo], seconds=repo.poll_interval,
                next_run_time=datetime.now(UTC), max_instances=1, coalesce=True,
                id=f"watch-{repo.name}", misfire_grace_time=repo.poll_interval,
            )
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def poll(self, repo: RepositoryConfig) -> list[BuildJob]:
        """One round for one repository; never raises (a daemon must survive any index)."""
        try:
            binaries, sources = await self.read_indexes(repo)
        except (BadDataError, UnreachableError) as e:
            self.errors += 1
            log.warning("repository %s: round skipped, previous state kept: %s", repo.name, e)
            return []
        except Exception:
            self.errors += 1
            log.exception("repository %s: round failed unexpectedly; previous state kept",
                          repo.name)
            return []
        finally:
            self.rounds += 1
        jobs = group_jobs(binaries, repo, sources)
        assert self.store is not None, "a Watcher without a store only reads indexes"
        try:
            added = await self.store.add_jobs(jobs)
        except Exception:
            log.exception("repository %s: could not store %d jobs", repo.name, len(jobs))
            return []
        added_keys = {(j.source, j.version, j.architecture) for j in added}
        for job in jobs:
            key = (job.source, job.version, job.architecture)
            if key in added_keys:
                log.info("repository %s: %s %s %s queued (%d binaries, buildinfo %s)", repo.name,
                         job.source, job.version, job.architecture, len(job.published),
                         job.buildinfo_url)
            else:
                log.debug("repository %s: %s %s %s already known", repo.name, job.source,
                          job.version, job.architecture)
        # An Architecture: all binary is listed in every binary-<arch> index: count it once.
        distinct = len({(b.package, b.version, b.architecture) for b in binaries})
        log.info("repository %s: round done, %d binaries, %d source versions, %d new", repo.name,
                 distinct, len(jobs), len(added))
        if added and self.on_new_jobs is not None:
            self.on_new_jobs(added)
        return added

    async def read_indexes(self, repo: RepositoryConfig) -> tuple[list[Binary], SourceIndex]:
        """Every binary of the configured components and architectures, and the .dsc of
        each source version when the repository has a Sources index (optional)."""
        dists = f"{repo.base_url.rstrip('/')}/dists/{repo.suite}"
        release = parse_release(await fetch_bounded(self.session, f"{dists}/Release",
                                                    MAX_RELEASE_BYTES))
        binaries: list[Binary] = []
        for component in repo.components:
            for arch in repo.architectures:
                # Architecture: all binaries are listed in every binary-<arch> index; a
                # binary-all index is read only when the repository has one.
                if arch == "all" and not any(
                    p in release.entries for p, _ in packages_candidates(component, "all")
                ):
                    continue
                binaries += await self._read_packages(dists, release, component, arch)
        sources: SourceIndex = {}
        for component in repo.components:
            for path, suffix in sources_candidates(component):
                entry = release.entry(path)
                if entry is None:
                    continue
                if entry[1] > (MAX_COMPRESSED_BYTES if suffix else MAX_PACKAGES_BYTES):
                    raise BadDataError(path, f"Release lists {entry[1]} bytes, over the limit")
                data = await fetch_bounded(self.session, f"{dists}/{path}", entry[1])
                check_digest(data, entry, path)
                sources.update(parse_sources(decompress(data, suffix, MAX_PACKAGES_BYTES)))
                break
        return binaries, sources

    async def _read_packages(
        self, dists: str, release: Release, component: str, arch: str
    ) -> list[Binary]:
        for path, suffix in packages_candidates(component, arch):
            entry = release.entry(path)
            if entry is None:
                continue
            if entry[1] > (MAX_COMPRESSED_BYTES if suffix else MAX_PACKAGES_BYTES):
                raise BadDataError(path, f"Release lists {entry[1]} bytes, over the limit")
            data = await fetch_bounded(self.session, f"{dists}/{path}", entry[1])
            check_digest(data, entry, path)
            return parse_packages(decompress(data, suffix, MAX_PACKAGES_BYTES))
        raise BadDataError("Release", f"lists no {component}/binary-{arch}/Packages index")
