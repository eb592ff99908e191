"""Workers: take queued jobs, run the build pipeline, sign and store what came out.

One attempt of one job goes:

1. ``claim``: the job is marked ``running`` with ``attempts += 1``, committed before anything
   else, so the invocation id ``<node>/<job>/<attempt>`` is never reused after a crash.
2. ``build``: the pipeline (``rebuilder.build.run_rebuild`` in production) runs in
   ``state_dir/builds/<job>-<attempt>`` and returns a ``RebuildOutcome``.
3. ``finish``: logs and reports are copied under the state directory, the statement is signed and
   the build row, outputs, attestation, subjects and outbox row are written in one transaction.

A job still ``running`` when the node starts was interrupted: it is queued again (a new attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
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
from rebuilder.outcome import BuildJob, RebuildOutcome
from verifier.debian import sha256_file
from verifier.keys import Ed25519PrivateKey
from verifier.statement import Digest, format_time

__all__ = ["MAX_ATTEMPTS", "Builder", "JobRunner", "StoredResult", "WorkerPool", "node_identity"]

log = logging.getLogger("rebuilder.queue")

Builder = Callable[[BuildJob, Path], Awaitable[RebuildOutcome]]
MAX_ATTEMPTS = 3  # a job interrupted this many times is recorded as failed instead of retried
IDLE_POLL_S = 5.0


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
        """Build a claimed job and store its outcome (the caller claimed it: state running)."""
        build_job = job.to_build_job()
        t0 = time.monotonic()
        if job.attempts > MAX_ATTEMPTS:
            now = datetime.now(UTC)
            outcome = RebuildOutcome(
                job=build_job, started_on=now, finished_on=now, buildinfo_sha256=None,
                failure=f"the node was interrupted during {job.attempts - 1} attempts; giving up",
                failure_stage="internal", environment=self.config.build.environment,
            )
        else:
            work = self.work_dir(job)
            if work.exists():
                await asyncio.to_thread(shutil.rmtree, work, True)
            work.mkdir(parents=True)
            log.info("job %d %s %s %s: attempt %d building in %s", job.id, job.source,
                     job.version, job.arch, job.attempts, work)
            started = datetime.now(UTC)
            try:
                outcome = await self.builder(build_job, work)
            except Exception as e:  # a pipeline bug must become a signed failure, not a crash
                log.exception("job %d: the build pipeline raised", job.id)
                outcome = RebuildOutcome(
                    job=build_job, started_on=started, finished_on=datetime.now(UTC),
                    buildinfo_sha256=None, failure=f"{type(e).__name__}: {e}",
                    failure_stage="internal", environment=self.config.build.environment,
                )
        # Storing must not be torn by a shutdown: let it finish, then honour the cancellation.
        task = asyncio.ensure_future(self.finish(job, outcome, time.monotonic() - t0))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise

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
        work = self.work_dir(job)
        if work.exists():
            await asyncio.to_thread(shutil.rmtree, work, True)
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
    """``parallel`` workers taking queued jobs until ``stop()``; see ``shutdown`` for the grace."""

    def __init__(self, runner: JobRunner, store: Store, parallel: int) -> None:
        self.runner = runner
        self.store = store
        self.parallel = parallel
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[StoredResult]] = {}

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for i in range(self.parallel):
                tg.create_task(self._worker(i), name=f"worker-{i}")

    async def _worker(self, index: int) -> None:
        while not self._stopping.is_set():
            try:
                job = await self.store.claim_job()
            except sqlite3.Error as e:  # e.g. the disk is full: wait, do not spin or die
                log.error("worker %d: cannot claim a job (%s); retrying in %.0fs", index, e,
                          IDLE_POLL_S)
                job = None
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_POLL_S):
                        waiter = asyncio.ensure_future(self._wake.wait())
                        stopper = asyncio.ensure_future(self._stopping.wait())
                        try:
                            await asyncio.wait({waiter, stopper},
                                               return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            waiter.cancel()
                            stopper.cancel()
                continue
            task = asyncio.create_task(self.runner.run(job), name=f"job-{job.id}")
            self._in_flight[job.id] = task
            try:
                await task
            except asyncio.CancelledError:
                if not task.done():
                    task.cancel()
                raise
            except Exception:
                log.exception("worker %d: job %d could not be stored; it stays running and is"
                              " retried on restart", index, job.id)
            finally:
                self._in_flight.pop(job.id, None)

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
        if unfinished:
            n = await self.store.requeue_running(unfinished)
            log.info("re-queued %d interrupted job(s): %s", n, unfinished)
