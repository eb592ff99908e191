"""The watcher: poll each repository's signed Release and its indexes and queue unknown versions.

One APScheduler job per configured repository (every ``poll_interval`` seconds, and once at
start). A round authenticates the repository state first (ARCHITECTURE §2.6), then reads it:

1. ``dists/<suite>/InRelease`` verified with gpgv under the repository's ``signed_by`` keyring
   (else ``Release`` + ``Release.gpg``); an unsigned ``Release`` only with ``trusted = true``,
   loudly logged each round.
2. The signed Release must be for the configured suite, within ``Valid-Until`` and not older than
   the newest Release this node accepted for the repository (rollback, persisted in the state
   database). A Release identical to the last fully indexed one ends the round: nothing changed.
3. Each component's ``binary-<arch>/Packages`` and ``source/Sources`` (``.xz``, else ``.gz``,
   else plain, whichever the Release lists) is checked against the Release's size and sha256,
   then decompressed and parsed in a separate process (``rebuilder.debian.indexproc``), streaming,
   within ``max_index_entries`` and ``max_index_mb``, so the event loop (API, publisher) never
   waits on an index.
4. One job per (source, version, arch) not known yet is inserted, carrying the .dsc digest from
   Sources and the verified Release (URL, digest, signer) its attestation will name.

Any failure skips the whole round for that repository and keeps the previous state.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from rebuilder.config import RepositoryConfig
from rebuilder.db import Store
from rebuilder.debian.indexes import (
    MAX_PACKAGES_BYTES,
    MAX_RELEASE_BYTES,
    IndexLimits,
    Release,
    check_release,
    packages_candidates,
    parse_release,
    sources_candidates,
)
from rebuilder.debian.indexproc import IndexFile, IndexReader, IndexResult, JobSink
from rebuilder.fetch import Fetcher, fetcher_for
from rebuilder.openpgp import verify_clearsigned, verify_detached
from rebuilder.outcome import BuildJob, ReleaseRef
from verifier.errors import BadDataError, HTTPStatusError, UnreachableError
from verifier.sources import TooLargeError
from verifier.statement import Digest

__all__ = ["FETCH_TIMEOUT_S", "RoundReport", "VerifiedRelease", "Watcher", "fetch_bounded",
           "fetch_release"]

log = logging.getLogger("rebuilder.watch")  # the name operators filter on (operator guide)
FETCH_TIMEOUT_S = 120.0
MAX_COMPRESSED_BYTES = 128 * 1024 * 1024
MAX_SIGNATURE_BYTES = 1024 * 1024


async def fetch_bounded(session: Fetcher, url: str, limit: int) -> bytes:
    """GET ``url`` and return at most ``limit`` bytes; larger bodies are refused, not cut.
    Redirects are followed (a mirror may redirect): what is read is authenticated anyway."""
    fetcher = fetcher_for(session, follow_redirects=True)
    try:
        return await fetcher.fetch(url, max_bytes=limit, timeout=FETCH_TIMEOUT_S)
    except TooLargeError as e:
        if e.announced is not None:
            raise BadDataError(url, f"{e.announced} bytes, limit {limit}") from e
        raise BadDataError(url, f"more than {limit} bytes") from e


@dataclass(frozen=True)
class VerifiedRelease:
    ref: ReleaseRef  # where it came from, its digest and its signer
    release: Release  # parsed from the signed bytes only


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat() if when is not None else None


async def fetch_release(session: Fetcher, repo: RepositoryConfig) -> VerifiedRelease:
    """Fetch and authenticate the repository's Release (step 1 of the module docstring)."""
    dists = f"{repo.base_url.rstrip('/')}/dists/{repo.suite}"
    if repo.signed_by is None:
        if not repo.trusted:
            raise BadDataError(
                f"repository {repo.name}",
                "has neither signed_by (the keyring its InRelease must verify under, as APT's "
                "Signed-By) nor trusted = true; no index is read",
            )
        log.warning("repository %s: UNAUTHENTICATED: trusted = true, reading an unsigned "
                    "Release; whoever controls the mirror or the path controls what is rebuilt",
                    repo.name)
        uri = f"{dists}/Release"
        data = await fetch_bounded(session, uri, MAX_RELEASE_BYTES)
        return VerifiedRelease(*_ref(uri, data, data, None))
    keyring = repo.signed_by
    uri = f"{dists}/InRelease"
    try:
        data = await fetch_bounded(session, uri, MAX_RELEASE_BYTES)
    except HTTPStatusError as e:
        if e.status != 404:
            raise
        uri = f"{dists}/Release"
        data = await fetch_bounded(session, uri, MAX_RELEASE_BYTES)
        try:
            sig = await fetch_bounded(session, f"{uri}.gpg", MAX_SIGNATURE_BYTES)
        except HTTPStatusError as e2:
            if e2.status != 404:
                raise
            raise BadDataError(uri, "is not signed (no InRelease, no Release.gpg) and the "
                                    f"repository {repo.name} is not trusted = true") from e2
        signer = await asyncio.to_thread(verify_detached, data, sig, keyring, f"{uri}.gpg")
        return VerifiedRelease(*_ref(uri, data, data, signer))
    signed = await asyncio.to_thread(verify_clearsigned, data, keyring, uri)
    return VerifiedRelease(*_ref(uri, data, signed.content, signed.fingerprint))


def _ref(uri: str, fetched: bytes, content: bytes, signer: str | None) -> tuple[ReleaseRef,
                                                                                 Release]:
    try:
        release = parse_release(content)
    except BadDataError as e:
        raise BadDataError(uri, e.reason) from e
    ref = ReleaseRef(uri, Digest(hashlib.sha256(fetched).hexdigest()), signer,
                     _iso(release.date))
    return ref, release


@dataclass
class RoundReport:
    """What one round found: ``rebuilder sync --once`` prints it, the watcher logs it."""

    repository: str
    release: ReleaseRef | None = None
    unchanged: bool = False  # the Release is the last fully indexed one
    binaries: int = 0
    new_count: int = 0
    known_count: int = 0
    new: list[BuildJob] = field(default_factory=list)  # the first indexproc.SAMPLE (100) of them
    known: list[BuildJob] = field(default_factory=list)  # the first indexproc.SAMPLE
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    error: str | None = None  # the round was refused; previous state kept


class Watcher:
    """Polls repositories and inserts jobs; ``on_new_jobs`` is called after an insertion."""

    def __init__(
        self,
        repositories: tuple[RepositoryConfig, ...],
        store: Store | None,
        session: Fetcher,
        on_new_jobs: Callable[[list[BuildJob]], None] | None = None,
        idle_reader: bool = False,
    ) -> None:
        self.repositories = repositories
        self.store = store
        self.session = session
        self.on_new_jobs = on_new_jobs
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.rounds = 0
        self.errors = 0
        self.reader = IndexReader(idle=idle_reader)  # the daemon's: SCHED_IDLE

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
        self.reader.close()

    async def poll(self, repo: RepositoryConfig) -> list[BuildJob]:
        """One round for one repository; never raises (a daemon must survive any index)."""
        report = await self.round(repo)
        if report.new and self.on_new_jobs is not None:
            self.on_new_jobs(report.new)
        return report.new

    async def round(self, repo: RepositoryConfig, *, queue: bool = True) -> RoundReport:
        """Authenticate, read and (``queue``) insert; ``queue=False`` changes nothing."""
        report = RoundReport(repo.name)
        try:
            await self._round(repo, report, queue)
        except (BadDataError, UnreachableError) as e:
            self.errors += 1
            report.error = str(e)
            log.warning("repository %s: round skipped, previous state kept: %s", repo.name, e)
        except Exception as e:
            self.errors += 1
            report.error = f"unexpected {type(e).__name__}: {e}"
            log.exception("repository %s: round failed unexpectedly; previous state kept",
                          repo.name)
        finally:
            self.rounds += 1
        return report

    async def _round(self, repo: RepositoryConfig, report: RoundReport, queue: bool) -> None:
        assert self.store is not None, "a Watcher without a store only reads indexes"
        verified = await fetch_release(self.session, repo)
        report.release = verified.ref
        state = await self.store.release_state(repo.name)
        newest = datetime.fromisoformat(state["date"]) if state and state["date"] else None
        check_release(verified.release, repo.suite, datetime.now(UTC), newest, verified.ref.uri)
        if state is not None and state["sha256"] == verified.ref.sha256:
            report.unchanged = True
            log.debug("repository %s: Release unchanged (%s), nothing to read", repo.name,
                      verified.ref.date)
            return
        assert self.store.path is not None
        sink = JobSink(self.store.path, write=queue,
                       release=(verified.ref.date, verified.ref.sha256, verified.ref.signer))
        found = await self.read_jobs(repo, verified, sink)
        report.binaries = found.binaries
        report.new, report.new_count = found.new, found.new_count
        report.known, report.known_count = found.known, found.known_count
        report.skipped = found.skipped
        if not queue:
            return
        for n, job in enumerate(report.new):
            # a first round of Debian queues ~40k versions: name a few, count the rest
            log.log(logging.INFO if n < 20 else logging.DEBUG,
                    "repository %s: %s %s %s queued (%d binaries, buildinfo %s)", repo.name,
                    job.source, job.version, job.architecture, len(job.published),
                    job.buildinfo_url)
        log.info("repository %s: round done, Release %s signed by %s, %d binaries, "
                 "%d source versions, %d new", repo.name, verified.ref.date,
                 verified.ref.signer or "nobody (trusted = true)", found.binaries,
                 found.new_count + found.known_count, found.new_count)

    async def read_jobs(self, repo: RepositoryConfig, verified: VerifiedRelease,
                        sink: JobSink | None = None) -> IndexResult:
        """The jobs of the configured components and architectures: each index the Release
        lists is fetched here, then checked, parsed and grouped in a worker process. Sources
        (optional) pins each version's .dsc."""
        release = verified.release
        dists = verified.ref.uri.rsplit("/", 1)[0]
        limits = IndexLimits(repo.max_index_entries, repo.max_index_mb * 1024 * 1024)
        files: list[IndexFile] = []
        native = any(a != "all" for a in repo.architectures)
        for component in repo.components:
            for arch in repo.architectures:
                # Architecture: all binaries are listed in every binary-<arch> index; a
                # binary-all index is read only when the repository has one and does not say
                # its binary-<arch> indexes already list them (as APT does)
                if arch == "all" and (
                    (native and release.all_in_arch_indexes) or not any(
                        p in release.entries for p, _ in packages_candidates(component, "all"))
                ):
                    continue
                files.append(await self._fetch_first(dists, release, "packages",
                                                     packages_candidates(component, arch)))
        for component in repo.components:
            if any(p in release.entries for p, _ in sources_candidates(component)):
                files.append(await self._fetch_first(dists, release, "sources",
                                                     sources_candidates(component)))
        return await self.reader.jobs(repo, verified.ref, limits, files, sink)

    async def _fetch_first(self, dists: str, release: Release, kind: Literal["packages",
                           "sources"], candidates: list[tuple[str, str]]) -> IndexFile:
        for path, suffix in candidates:
            entry = release.entry(path)
            if entry is None:
                continue
            data = await self._fetch_index(dists, path, suffix, entry)
            return IndexFile(kind, f"{dists}/{path}", suffix, entry, data)
        raise BadDataError("Release", f"lists none of {', '.join(p for p, _ in candidates)}")

    async def _fetch_index(self, dists: str, path: str, suffix: str,
                           entry: tuple[str, int]) -> bytes:
        if entry[1] > (MAX_COMPRESSED_BYTES if suffix else MAX_PACKAGES_BYTES):
            raise BadDataError(path, f"Release lists {entry[1]} bytes, over the limit")
        return await fetch_bounded(self.session, f"{dists}/{path}", entry[1])
