"""Workers: take queued jobs, run the build pipeline, sign and store what came out.

One attempt of one job goes:

1. ``claim``: the job is marked ``running`` with ``attempts += 1``, committed before anything
   else, so the invocation id ``<node>/<job>/<attempt>`` is never reused after a crash.
2. ``build``: the pipeline (``rebuilder.debian.build.run_rebuild`` in production) runs in
   ``state_dir/builds/<job>-<attempt>`` and returns a ``RebuildOutcome``.
3. ``finish``: logs and reports are copied under the state directory, the statement is signed and
   the build row, outputs, attestation, subjects and outbox row are written in one transaction.

A job still ``running`` when the node starts was interrupted: it is queued again (a new attempt)
and its ``interruptions`` count grows; so it does when the pipeline raises ``Interrupted`` (the
sandbox was killed from outside), and the job is retried at once. A job interrupted
``MAX_INTERRUPTIONS`` times is signed as failed instead. A graceful shutdown and a full disk
re-queue without counting; ``rebuilder requeue`` starts a job afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rebuilder import __version__
from rebuilder.attest import NodeIdentity, ReportRef, rebuild_statement, sign_statement
from rebuilder.config import Config
from rebuilder.db import JobRow, NewAttestation, NewBuild, NewOutput, Store
from rebuilder.outcome import BuildJob, Interrupted, RebuildOutcome, StateDiskFull
from rebuilder.recovery import DiskGuard, is_disk_full, remove_tree
from verifier.debian import sha256_file
from verifier.keys import Ed25519PrivateKey
from verifier.statement import Digest, format_time

__all__ = [
    "MAX_INTERRUPTIONS",
    "Builder",
    "JobRunner",
    "StoredResult",
    "WorkerPool",
    "node_identity",
]

log = logging.getLogger("rebuilder.queue")

Builder = Callable[[BuildJob, Path], Awaitable[RebuildOutcome]]
MAX_INTERRUPTIONS = 3  # a job interrupted this many times is recorded as failed, not retried
IDLE_POLL_S = 5.0
DISK_POLL_S = 5.0  # how often a paused pool looks for free space again


@dataclass(frozen=True)
class StoredResult:
    job_id: int
    attempt: int
    seq: int
    envelope_sha256: str
    verdict: str
    failure: str | None


def node_identity(config: Config) -> NodeIdentity:
    return NodeIdentity(config.node.id, config.node.builder_id, __version__)


def _copy_capped(src: Path, dest: Path, limit: int) -> bool:
    """Copy at most ``limit`` bytes of ``src``; True when it was cut."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fin, dest.open("wb") as fout:
        remaining = limit
        while remaining > 0:
            chunk = fin.read(min(1 << 20, remaining))
            if not chunk:
                return False
            fout.write(chunk)
            remaining -= len(chunk)
        if fin.read(1):
            fout.write(b"\n[log truncated by the rebuilder]\n")
            return True
    return False


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JobRunner:
    """Runs one claimed job through the pipeline and stores the signed result."""

    def __init__(
        self,
        config: Config,
        store: Store,
        key: Ed25519PrivateKey,
        builder: Builder,
        on_stored: Callable[[StoredResult], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.key = key
        self.builder = builder
        self.identity = node_identity(config)
        self.on_stored = on_stored

    def work_dir(self, job: JobRow) -> Path:
        return self.config.node.builds_dir / f"{job.id}-{job.attempts}"

    async def run(self, job: JobRow) -> StoredResult:
        """Build a claimed job and store its outcome (the caller claimed it: state running).

        Raises ``StateDiskFull`` (nothing signed, the job still running: the caller re-queues
        it) when the state filesystem is full.
        """
        t0 = time.monotonic()
        while True:
            if job.interruptions >= MAX_INTERRUPTIONS:
                outcome = self._give_up(job)
                break
            try:
                outcome = await self._attempt(job)
                break
            except StateDiskFull:
                raise
            except Interrupted as e:
                log.warning("job %d %s %s %s: attempt %d interrupted (%s); retrying as a new"
                            " attempt", job.id, job.source, job.version, job.arch, job.attempts,
                            e.reason)
                job = await self.store.retry_interrupted(job.id, e.reason)
        # Storing must not be torn by a shutdown: let it finish, then honour the cancellation.
        task = asyncio.ensure_future(self.finish(job, outcome, time.monotonic() - t0))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise
        except Exception as e:
            if is_disk_full(e):
                await asyncio.to_thread(self._remove_copies, job)
                raise StateDiskFull(f"storing the result failed: {e}") from e
            raise
        finally:
            await asyncio.to_thread(remove_tree, self.work_dir(job))

    def _give_up(self, job: JobRow) -> RebuildOutcome:
        now = datetime.now(UTC)
        return RebuildOutcome(
            job=job.to_build_job(), started_on=now, finished_on=now, buildinfo_sha256=None,
            failure=f"the build was interrupted {job.interruptions} times (last:"
                    f" {job.interrupted_because or 'unknown'}); giving up",
            failure_stage="internal", environment=self.config.build.environment,
        )

    async def _attempt(self, job: JobRow) -> RebuildOutcome:
        """One attempt of the pipeline in a fresh work directory, removed if it is interrupted."""
        work = self.work_dir(job)
        try:
            await asyncio.to_thread(remove_tree, work)
            await asyncio.to_thread(work.mkdir, parents=True)
        except OSError as e:
            if is_disk_full(e):
                raise StateDiskFull(f"cannot create {work}: {e.strerror}") from e
            raise
        log.info("job %d %s %s %s: attempt %d building in %s", job.id, job.source,
                 job.version, job.arch, job.attempts, work)
        started = datetime.now(UTC)
        try:
            return await self.builder(job.to_build_job(), work)
        except (Interrupted, asyncio.CancelledError):
            # nothing of an attempt that is not stored may stay behind (ARCHITECTURE §6)
            await asyncio.shield(asyncio.to_thread(remove_tree, work))
            raise
        except Exception as e:
            if is_disk_full(e):
                await asyncio.to_thread(remove_tree, work)
                raise StateDiskFull(f"the build pipeline: {e}") from e
            # a pipeline bug must become a signed failure, not a crash
            log.exception("job %d: the build pipeline raised", job.id)
            return RebuildOutcome(
                job=job.to_build_job(), started_on=started, finished_on=datetime.now(UTC),
                buildinfo_sha256=None, failure=f"{type(e).__name__}: {e}",
                failure_stage="internal", environment=self.config.build.environment,
            )

    def _remove_copies(self, job: JobRow) -> None:
        """The log and reports ``finish`` copied for an attempt whose storing failed."""
        node = self.config.node
        key = f"{job.id}-{job.attempts}"
        for p in [node.logs_dir / f"{key}.log", *node.reports_dir.glob(f"{key}-*")]:
            remove_tree(p)

    async def finish(self, job: JobRow, outcome: RebuildOutcome, elapsed: float) -> StoredResult:
        node = self.config.node
        job_key = f"{job.id}-{job.attempts}"
        max_report = self.config.diffoscope.max_report_mb * 1024 * 1024
        reports: dict[str, ReportRef] = {}
        new_outputs: list[NewOutput] = []
        for i, out in enumerate(outcome.outputs):
            report_id = html_path = txt_path = report_sha = None
            if out.report_html is not None or out.report_txt is not None:
                report_id = f"{job_key}-{i}"
                if out.report_html is not None and out.report_html.is_file():
                    dest = node.reports_dir / f"{report_id}.html"
                    await asyncio.to_thread(_copy_capped, out.report_html, dest, max_report)
                    html_path = str(dest.relative_to(node.state_dir))
                    report_sha = await asyncio.to_thread(sha256_file, dest)
                if out.report_txt is not None and out.report_txt.is_file():
                    dest = node.reports_dir / f"{report_id}.txt"
                    await asyncio.to_thread(_copy_capped, out.report_txt, dest, max_report)
                    txt_path = str(dest.relative_to(node.state_dir))
                if html_path is None and txt_path is None:
                    report_id = None
                elif report_sha is not None:
                    reports[out.name] = ReportRef(
                        f"{node.public_url}/v1/reports/{report_id}.html", Digest(report_sha)
                    )
            new_outputs.append(NewOutput(
                name=out.name, verdict=out.verdict, rebuilt=out.rebuilt, buildinfo=out.buildinfo,
                repository=out.repository, report_id=report_id, report_html=html_path,
                report_txt=txt_path, report_sha256=report_sha,
            ))
        log_path = None
        if outcome.log_path is not None and outcome.log_path.is_file():
            dest = node.logs_dir / f"{job_key}.log"
            await asyncio.to_thread(_copy_capped, outcome.log_path, dest,
                                    self.config.build.max_log_mb * 1024 * 1024)
            log_path = str(dest.relative_to(node.state_dir))

        repo = self.config.repository(job.repository)
        invocation = job.invocation_id(node.id)
        statement = rebuild_statement(
            outcome, self.identity, invocation_id=invocation,
            repository=repo.label if repo else job.repository, reports=reports,
        )
        envelope = sign_statement(statement.to_bytes(), self.key)
        verdict = "failed" if statement.failed else outcome.verdict
        build = NewBuild(
            job_id=job.id, attempt=job.attempts, invocation_id=invocation, verdict=verdict,
            failure=statement.failure, failure_stage=outcome.failure_stage if statement.failed
            else None, environment=outcome.environment, started_at=_iso(outcome.started_on),
            finished_at=_iso(outcome.finished_on),
            duration_s=max(0.0, (outcome.finished_on - outcome.started_on).total_seconds())
            or elapsed,
            log_path=log_path, outputs=tuple(new_outputs) if not statement.failed else (),
        )
        attestation = NewAttestation(
            envelope_sha256=envelope.digest(), envelope=envelope.to_bytes(),
            kind="failure" if statement.failed else "rebuild",
            source=job.source, version=statement.package.version, arch=job.arch,  # source version
            subjects=tuple((s.name, s.sha256) for s in statement.subjects),
        )
        try:
            seq = await self.store.finish_build(build, attestation)
        except sqlite3.IntegrityError:
            # The invocation was stored already: never sign and store it a second time.
            log.error("job %d: invocation %s already stored; keeping the first", job.id,
                      invocation)
            raise
        await asyncio.to_thread(remove_tree, self.work_dir(job))
        result = StoredResult(job.id, job.attempts, seq, attestation.envelope_sha256, verdict,
                              statement.failure)
        if verdict == "failed":
            log.warning("job %d %s %s %s: FAILED (%s) attestation %s seq %d", job.id, job.source,
                        job.version, job.arch, statement.failure, result.envelope_sha256, seq)
        else:
            log.info("job %d %s %s %s: %s (%s) attestation %s seq %d finished %s", job.id,
                     job.source, job.version, job.arch, verdict.upper(),
                     ", ".join(f"{o.name}={o.verdict}" for o in outcome.outputs),
                     result.envelope_sha256, seq, format_time(outcome.finished_on))
        if self.on_stored is not None:
            self.on_stored(result)
        return result


class WorkerPool:
    """``parallel`` workers taking queued jobs until ``stop()``; see ``shutdown`` for the grace.

    With a ``DiskGuard``, no worker takes a job while the state filesystem is full or below its
    floor; a job whose attempt hit a full disk goes back to the queue once space returns (its
    re-queue is a write, too), and nothing stays ``running``.
    """

    def __init__(self, runner: JobRunner, store: Store, parallel: int,
                 guard: DiskGuard | None = None) -> None:
        self.runner = runner
        self.store = store
        self.parallel = parallel
        self.guard = guard
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[StoredResult]] = {}
        # hit a full disk; re-queued when space returns (with a reason: counted as interrupted)
        self._to_requeue: dict[int, str | None] = {}
        self._intake = asyncio.Lock()

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for i in range(self.parallel):
                tg.create_task(self._worker(i), name=f"worker-{i}")

    async def _may_take_jobs(self) -> bool:
        """False while the disk is full; re-queues what a full disk stopped once it is not."""
        if self.guard is None:
            return True
        async with self._intake:
            status = await asyncio.to_thread(self.guard.check)
            if status.paused:
                return False
            if self._to_requeue:
                try:
                    await self._requeue_stopped()
                except sqlite3.Error as e:
                    if is_disk_full(e):
                        self.guard.note_full(str(e))
                    else:
                        log.error("cannot re-queue the jobs a full disk stopped (%s)", e)
                    return False
            return True

    async def _requeue_stopped(self) -> None:
        """Re-queue what a full disk stopped; the caller holds ``_intake`` (or is shutting down)."""
        ids = sorted(self._to_requeue)
        for jid in ids:
            await self.store.requeue_running([jid], reason=self._to_requeue[jid])
            del self._to_requeue[jid]
        if ids:
            log.info("re-queued %d job(s) stopped by the full disk: %s", len(ids), ids)

    async def _idle(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(self._stopping.wait())
                try:
                    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()

    async def _worker(self, index: int) -> None:
        while not self._stopping.is_set():
            if not await self._may_take_jobs():
                await self._idle_paused()
                continue
            try:
                job = await self.store.claim_job()
            except sqlite3.Error as e:  # e.g. the disk is full: wait, do not spin or die
                if self.guard is not None and is_disk_full(e):
                    self.guard.note_full(str(e))
                log.error("worker %d: cannot claim a job (%s); retrying in %.0fs", index, e,
                          IDLE_POLL_S)
                job = None
            if job is None:
                await self._idle(IDLE_POLL_S)
                continue
            task = asyncio.create_task(self.runner.run(job), name=f"job-{job.id}")
            self._in_flight[job.id] = task
            try:
                await task
            except asyncio.CancelledError:
                if not task.done():
                    task.cancel()
                raise
            except StateDiskFull as e:
                log.error("worker %d: job %d stopped: %s; it is re-queued when space returns",
                          index, job.id, e.reason)
                self._to_requeue[job.id] = e.reason if e.counted else None
                if self.guard is not None:
                    self.guard.note_full(e.reason)
                # a re-queue is a tiny write that often still fits: nothing stays "running"
                async with self._intake:
                    with contextlib.suppress(sqlite3.Error):
                        await self._requeue_stopped()
            except Exception:
                log.exception("worker %d: job %d could not be stored; it stays running and is"
                              " retried on restart", index, job.id)
            finally:
                self._in_flight.pop(job.id, None)

    async def _idle_paused(self) -> None:
        # Only the stop wakes a paused worker early; new jobs wait for the disk.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DISK_POLL_S):
                await self._stopping.wait()

    async def shutdown(self, grace: float) -> None:
        """Stop taking jobs; give running builds ``grace`` seconds, then cancel and re-queue."""
        self._stopping.set()
        self._wake.set()
        tasks = dict(self._in_flight)
        if tasks:
            log.info("waiting up to %.0fs for %d running build(s)", grace, len(tasks))
            _, pending = await asyncio.wait(tasks.values(), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        unfinished = [jid for jid, t in tasks.items() if t.cancelled()]
        try:
            if unfinished:
                n = await self.store.requeue_running(unfinished)
                log.info("re-queued %d interrupted job(s): %s", n, unfinished)
            if self._to_requeue:
                async with self._intake:
                    await self._requeue_stopped()
        except sqlite3.Error as e:  # still full: the next start re-queues them
            log.error("cannot re-queue the stopped jobs (%s); the next start does", e)
