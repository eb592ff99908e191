"""Reading Packages/Sources indexes in a separate process, so the node's event loop never waits.

A worker thread is not enough: parsing is Python code holding the GIL, and on Debian's real
index a thread still stalled the loop by over 100 ms (benchmarks/bench_sync.py measures it).
Each index is checked, decompressed and parsed by ``rebuilder.indexes.read_packages`` /
``read_sources`` in a fresh ``spawn``-ed process (one task per process: whatever a hostile index
made it allocate is returned to the system when it exits). Results come back as plain tuples,
and refusals as (what, reason), re-raised here as ``BadDataError``::

    reader = IndexReader()
    binaries = await reader.packages(data, ".xz", limits, entry, url)
    reader.close()
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from rebuilder.indexes import Binary, IndexLimits, SourceIndex, read_packages, read_sources
from verifier.errors import BadDataError
from verifier.statement import Digest

__all__ = ["IndexReader"]

_Refusal = tuple[str, str]


def _packages_task(data: bytes, suffix: str, limits: IndexLimits,
                   expected: tuple[Digest, int] | None,
                   what: str) -> list[tuple[str, ...]] | _Refusal:
    try:
        return [(b.package, b.version, b.architecture, b.source, b.source_version, b.filename,
                 b.sha256) for b in read_packages(data, suffix, limits, expected, what)]
    except BadDataError as e:  # its pickled form would lose the fields
        return (e.what, e.reason)


def _sources_task(data: bytes, suffix: str, limits: IndexLimits,
                  expected: tuple[Digest, int] | None, what: str) -> SourceIndex | _Refusal:
    try:
        return read_sources(data, suffix, limits, expected, what)
    except BadDataError as e:
        return (e.what, e.reason)


class IndexReader:
    """One index at a time, each in a new process; ``close()`` when done."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = asyncio.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                max_tasks_per_child=1,
            )
        return self._pool

    async def _run(self, fn: Any, *args: Any) -> Any:
        async with self._lock:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor(), fn, *args)
        if isinstance(result, tuple):
            raise BadDataError(*result)
        return result

    async def packages(self, data: bytes, suffix: str, limits: IndexLimits,
                       expected: tuple[Digest, int] | None, what: str) -> list[Binary]:
        rows = await self._run(_packages_task, data, suffix, limits, expected, what)
        # building 60k objects is Python work too: in a thread, the loop keeps its turns
        return await asyncio.to_thread(lambda: [Binary(*r) for r in rows])

    async def sources(self, data: bytes, suffix: str, limits: IndexLimits,
                      expected: tuple[Digest, int] | None, what: str) -> SourceIndex:
        result: SourceIndex = await self._run(_sources_task, data, suffix, limits, expected, what)
        return result

    def close(self) -> None:
        """Stop at once: a worker still parsing is terminated, not waited for."""
        if self._pool is None:
            return
        workers = list(getattr(self._pool, "_processes", {}).values())  # no public accessor
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            if process.is_alive():
                process.terminate()
        self._pool = None
