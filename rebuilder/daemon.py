"""``rebuilder run``: the watcher, the workers, the publisher and the HTTP API in one process.

Start-up re-queues jobs left ``running`` by a crash (each gets a new attempt). SIGTERM/SIGINT
stop the watcher and the workers' intake, give running builds a grace period (then cancel and
re-queue them), let the publisher drain briefly, publish the retained offline status and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from rebuilder import limits
from rebuilder.api import create_app
from rebuilder.config import Config
from rebuilder.cosign import WitnessClient, run_log
from rebuilder.db import Store
from rebuilder.locate import resolve_buildinfo
from rebuilder.outcome import BuildJob, RebuildOutcome
from rebuilder.publish import Publisher
from rebuilder.queue import Builder, JobRunner, WorkerPool
from rebuilder.recovery import DiskGuard, MiB, clean_leftovers
from rebuilder.tlog import NodeLog
from rebuilder.tlog_http import log_settings
from rebuilder.watch import Watcher
from verifier.keys import load_private_key
from verifier.tlog.note import NoteSigner

__all__ = ["DEFAULT_GRACE_S", "DaemonError", "make_builder", "run_daemon"]

log = logging.getLogger("rebuilder.daemon")
DEFAULT_GRACE_S = 60.0
DRAIN_S = 5.0

class DaemonError(Exception):
    """A part of the daemon stopped on its own; the process should exit non-zero."""


BuilderFactory = Callable[[Config, aiohttp.ClientSession], Builder]


def make_builder(config: Config, session: aiohttp.ClientSession) -> Builder:
    """The production builder: ``rebuilder.build.run_rebuild`` with the config's settings."""
    from rebuilder.build import run_rebuild  # the pipeline; imported late, it is heavy
    from rebuilder.pins import SuiteSource

    settings = build_settings(config)

    async def builder(job: BuildJob, work_dir: Path) -> RebuildOutcome:
        job = resolve_buildinfo(config, job)  # the current config's URLs, at every attempt
        repo = config.repository(job.repository)
        # pins come from the repository's build suites, else from [build] mirror at the
        # repository's suite (docs/configuration.md)
        suites = tuple(SuiteSource(s.mirror, s.suite, s.components, s.keyring)
                       for s in (repo.build_suites if repo else ()))
        if not suites and repo is not None:
            suites = (SuiteSource(config.build.mirror, repo.suite),)
        outcome: RebuildOutcome = await run_rebuild(
            job, replace(settings, suites=suites), work_dir, session)
        return outcome

    return builder


def build_settings(config: Config) -> Any:
    """The pipeline's ``BuildSettings`` from the [build] and [diffoscope] sections."""
    from rebuilder.build import BuildSettings
    from rebuilder.openpgp import SourcePolicy

    b, d = config.build, config.diffoscope
    return BuildSettings(
        environment=b.environment,
        mirror=b.mirror,
        timeout=float(b.timeout),
        max_disk_mb=b.max_disk_mb,
        max_output_mb=b.max_output_mb,
        max_log_mb=b.max_log_mb,
        max_source_mb=b.max_source_mb,
        max_memory_mb=b.max_memory_mb,
        max_processes=b.max_processes,
        diffoscope_enabled=d.enabled,
        diffoscope_timeout=float(d.timeout),
        max_report_mb=d.max_report_mb,
        snapshot_url=b.snapshot_url,
        chroot_cache_mb=b.chroot_cache_mb,
        cache_dir=config.node.cache_dir,
        # Never visible inside a build: the state directory (database, other builds, reports),
        # the signing key and the broker password wherever they live.
        min_free_mb=config.node.min_free_mb,
        hidden_paths=tuple(p for p in (config.node.state_dir, config.node.signing_key,
                                       config.mqtt.password_file) if p is not None),
        source_policies={r.name: SourcePolicy(r.uploader_keyring, r.require_signed_source)
                         for r in config.repositories},
    )


async def run_daemon(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    grace: float = DEFAULT_GRACE_S,
    builder_factory: BuilderFactory = make_builder,
    install_signals: bool = True,
) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    for d in (config.node.builds_dir, config.node.reports_dir, config.node.logs_dir,
              config.node.cache_dir):
        d.mkdir(parents=True, exist_ok=True)
    # which build limits the kernel holds here (cgroup, bounded tree), said before any build
    await asyncio.to_thread(limits.announce, config)
    key = load_private_key(config.node.signing_key)
    store = await Store.open(config.node.db_path)
    try:
        requeued = await store.requeue_running(
            reason="the node stopped during the build (a crash, a kill or a power loss)")
        if requeued:
            log.warning("re-queued %d job(s) interrupted by a previous crash or kill", requeued)
        await clean_leftovers(config, store)
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120),
            headers={"User-Agent": f"repro-quorum-rebuilder/{config.node.id}"},
        ) as session:
            await _serve(config, store, key, session, stop, grace, builder_factory)
    finally:
        await store.close()
        log.info("stopped")


async def _serve(
    config: Config,
    store: Store,
    key: Any,
    session: aiohttp.ClientSession,
    stop: asyncio.Event,
    grace: float,
    builder_factory: BuilderFactory,
) -> None:
    died: list[asyncio.Task[Any]] = []
    # The transparency log (ARCHITECTURE §4.9): checkpoints, witnesses, MQTT announcement.
    node_log = await NodeLog.open(store, log_settings(config),
                                  NoteSigner(config.log_origin, key))
    async def status() -> dict[str, Any]:
        counts = await store.counts()
        return {"queue": counts["queued"], "running": counts["running"],
                "outbox": counts["backlog"]}

    publisher = Publisher(config, store, status) if config.mqtt.enabled else None
    runner = JobRunner(config, store, key, builder_factory(config, session),
                       on_stored=lambda _r: publisher.wake() if publisher else None)
    guard = DiskGuard(config.node.state_dir, config.node.min_free_mb * MiB)
    pool = WorkerPool(runner, store, config.build.parallel, guard)
    watcher = Watcher(config.repositories, store, session, on_new_jobs=lambda _j: pool.wake(),
                      idle_reader=True)

    web_runner = web.AppRunner(create_app(config, store=store, guard=guard), access_log=None)
    await web_runner.setup()
    site = web.TCPSite(web_runner, config.node.listen_host, config.node.listen_port)
    await site.start()
    log.info("node %s (operator %s) serving %s on %s:%d; %d repositories, %d worker(s), mqtt %s",
             config.node.id, config.node.operator, config.node.public_url,
             config.node.listen_host, config.node.listen_port, len(config.repositories),
             config.build.parallel,
             f"{config.mqtt.host}:{config.mqtt.port}" if publisher else "disabled")
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(pool.run(), name="workers")]
    if publisher is not None:
        tasks.append(asyncio.create_task(publisher.run(), name="publisher"))
    witnesses = [WitnessClient(w, session) for w in config.log.witnesses]
    tasks.append(asyncio.create_task(run_log(
        node_log, witnesses, float(config.log.checkpoint_interval),
        (lambda s: publisher.publish_checkpoint(s.served())) if publisher else None,
    ), name="log"))
    watcher.start()
    try:
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        died = [t for t in done if t is not stopper]
        for t in died:
            log.error("task %s stopped unexpectedly: %r", t.get_name(),
                      t.exception() if not t.cancelled() else "cancelled")
        stopper.cancel()
        log.info("stopping: no new jobs; running builds get %.0fs", grace)
    finally:
        watcher.stop()
        await pool.shutdown(grace)
        if publisher is not None:
            await _drain(store, publisher)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if publisher is not None:
            await publisher.goodbye()
        await web_runner.cleanup()
    if died:
        # Exit non-zero so that systemd (Restart=on-failure) starts a fresh process.
        raise DaemonError(f"{', '.join(t.get_name() for t in died)} stopped unexpectedly")


async def _drain(store: Store, publisher: Publisher) -> None:
    """Give the publisher a few seconds to send what the last builds stored."""
    if not publisher.connected:
        return
    publisher.wake()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            await publisher.drained.wait()
