"""Reading a repository's indexes in a separate process, so the node's event loop never waits.

A worker thread is not enough: parsing and grouping are Python code holding the GIL, and on
Debian's real index a thread stalled the loop by 100-900 ms. One task per round, in a fresh
``spawn``-ed process (one task per process: whatever a hostile index made it allocate goes back
to the system when it exits), checks each fetched index against its Release entry, decompresses
and parses it (``rebuilder.debian.indexes.read_packages`` / ``read_sources``, within the caps),
groups the binaries into jobs and, given the state database, sorts them into new and known and
inserts the new ones there itself (``rebuilder.db.queue_jobs_blocking``). Only counts and the first
``SAMPLE`` jobs of each kind come back: 40k job objects arriving in the node would stall its
loop in unpickling and garbage collection alone. A refusal comes back as (what, reason) and is
raised here as ``BadDataError``::

    reader = IndexReader()
    result = await reader.jobs(repo, release_ref, limits, [IndexFile(...)], JobSink(db, True))
    result.new_count, result.new, result.known_count, result.skipped
    reader.close()
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal

from rebuilder.config import RepositoryConfig
from rebuilder.db import queue_jobs_blocking
from rebuilder.debian.indexes import (
    Binary,
    IndexLimits,
    SourceIndex,
    group_jobs,
    packages_from,
    sources_from,
    spool_index,
)
from rebuilder.outcome import BuildJob, ReleaseRef
from verifier.errors import BadDataError
from verifier.statement import Digest

__all__ = ["SAMPLE", "IndexFile", "IndexReader", "IndexResult", "JobSink", "lower_priority"]

# jobs of each kind returned to the node, the rest only counted: unpickling the result holds the
# GIL (1000 jobs: 15-100 ms), so the sample stays small
SAMPLE = 100


@dataclass(frozen=True)
class IndexFile:
    kind: Literal["packages", "sources"]
    url: str
    suffix: str  # ".xz", ".gz" or ""
    entry: tuple[Digest, int]  # what the verified Release says: sha256, size
    data: bytes  # as fetched, unchecked


@dataclass(frozen=True)
class JobSink:
    """What the worker does with the jobs it found.

    ``db_path``: the state database the known jobs are read from (None: nothing is known);
    ``write``: insert the new ones there, and record ``release`` (date, sha256, signer) in the
    same transaction; ``only``: keep just this (source, version, arch)."""

    db_path: Path | None = None
    write: bool = False
    release: tuple[str | None, str, str | None] | None = None
    only: tuple[str, str, str] | None = None


@dataclass
class IndexResult:
    binaries: int = 0
    new_count: int = 0
    known_count: int = 0
    new: list[BuildJob] = field(default_factory=list)  # the first SAMPLE of them
    known: list[BuildJob] = field(default_factory=list)  # the first SAMPLE of them
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)


def _jobs_task(repo: RepositoryConfig, ref: ReleaseRef | None, limits: IndexLimits,
               files: list[IndexFile], sink: JobSink) -> Any:
    binaries: list[Binary] = []
    sources: SourceIndex = {}
    # digest checks and xz decompression (which releases the GIL) of all indexes at once
    with ThreadPoolExecutor(max(1, len(files))) as pool:
        spooled = [pool.submit(spool_index, f.data, f.suffix, limits, f.entry, f.url)
                   for f in files]
        try:
            for f, future in zip(files, spooled, strict=True):
                spool, nonblank = future.result()
                with spool:
                    if f.kind == "packages":
                        binaries += packages_from(spool, nonblank, limits, f.url)
                    else:
                        sources.update(sources_from(spool, limits, f.url))
        except BadDataError as e:  # its pickled form would lose the fields
            return (e.what, e.reason)
        finally:
            for future in spooled:  # close what a failure left unread
                if future.done() and future.exception() is None:
                    future.result()[0].close()
    jobs = group_jobs(binaries, repo, sources, ref)
    if sink.only is not None:
        jobs = [j for j in jobs if (j.source, j.version, j.architecture) == sink.only]
    if sink.db_path is not None:
        new, known = queue_jobs_blocking(sink.db_path, repo.name, jobs, write=sink.write,
                                         release=sink.release)
    else:
        new, known = jobs, []
    outside = Counter(b.architecture for b in binaries if b.architecture not in
                      repo.architectures)
    skipped = [(f"{n} binaries of architecture {arch}", f"{arch} is not in architectures")
               for arch, n in sorted(outside.items())]
    # An Architecture: all binary is listed in every binary-<arch> index: count it once.
    distinct = len({(b.package, b.version, b.architecture) for b in binaries})
    return IndexResult(distinct, len(new), len(known), new[:SAMPLE], known[:SAMPLE], skipped)


def lower_priority() -> str:
    """Make this process (and the threads it starts later) yield the CPU to everything else.

    ``SCHED_IDLE``: the worker runs only when no normal task wants the CPU, so on a busy 2-core
    machine the node's event loop is never queued behind the parse (the cost: on a machine kept
    busy, by the node's own builds say, a round waits for idle time). Where that policy is
    refused, the highest nice value. Returns what was set."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        pass
    try:
        os.nice(19)
        return "nice 19"
    except OSError:
        return "normal priority"


def _child(conn: Connection, idle: bool, *args: Any) -> None:
    """The worker process: one ``_jobs_task``, its result sent back on ``conn``."""
    if idle:
        lower_priority()
    try:
        answer: tuple[Any, ...] = ("ok", _jobs_task(*args))
    except Exception as e:  # a bug or a database error: said, not hidden behind an EOF
        answer = ("crash", f"{type(e).__name__}: {e}")
    conn.send(answer)
    conn.close()


class IndexReader:
    """One round's indexes at a time, each in a new worker process; ``close()`` when done.

    No worker outlives its round (an idle pool worker would hold the fork server's pipes open
    and outlive a killed node); the fork server exits with the node. ``idle``: the worker runs
    at ``SCHED_IDLE`` (``lower_priority``), for a node whose API must answer meanwhile; a
    one-off ``sync --once`` keeps normal priority."""

    def __init__(self, idle: bool = False) -> None:
        self._idle = idle
        self._lock = asyncio.Lock()
        self._process: BaseProcess | None = None
        self._closed = False

    async def jobs(self, repo: RepositoryConfig, release: ReleaseRef | None,
                   limits: IndexLimits, files: list[IndexFile],
                   sink: JobSink | None = None) -> IndexResult:
        async with self._lock:
            if self._closed:
                raise BadDataError(f"repository {repo.name}", "the index reader was stopped")
            # starting the process waits for the fork server (which imports this module when
            # it starts), receiving waits for the round: in a thread, never on the loop
            answer = await asyncio.to_thread(self._run, repo, release, limits, files,
                                             sink or JobSink())
        if answer[0] == "crash":
            raise RuntimeError(f"the index worker failed: {answer[1]}")
        result = answer[1]
        if isinstance(result, tuple):
            raise BadDataError(*result)
        assert isinstance(result, IndexResult)
        return result

    def _run(self, *args: Any) -> tuple[Any, ...]:
        # forkserver: the worker is forked from a small server process that imported this
        # module once (never from the node itself: it has threads), so a round pays
        # milliseconds, not a fresh interpreter's imports
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["rebuilder.debian.indexproc"])
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_child, args=(send, self._idle, *args), daemon=True,
                              name="rq-index-worker")
        process.start()
        self._process = process
        send.close()
        try:
            try:
                answer: tuple[Any, ...] = receive.recv()
            except EOFError:
                process.join(10)
                raise BadDataError("index worker", f"exited (status {process.exitcode}) "
                                                   "before answering") from None
        finally:
            receive.close()
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)
            self._process = None
        return answer

    def close(self) -> None:
        """Stop at once: a worker still parsing is terminated, not waited for."""
        self._closed = True
        process = self._process
        if process is not None and process.is_alive():
            process.terminate()
