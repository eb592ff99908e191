"""``rebuilder run``: the watcher, the workers, the publisher and the HTTP API in one process.

Start-up re-queues jobs left ``running`` by a crash (each gets a new attempt). SIGTERM/SIGINT
stop the watcher and the workers' intake, give running builds a grace period (then cancel and
re-queue them), let the publisher drain briefly, publish the retained offline status and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from rebuilder import _stopsignals, limits
from rebuilder import ecosystem as ecosystems
from rebuilder.api import create_app
from rebuilder.config import Config, RepositoryConfig
from rebuilder.cosign import WitnessClient, run_log
from rebuilder.db import Store
from rebuilder.outcome import BuildJob, RebuildOutcome
from rebuilder.publish import Publisher
from rebuilder.queue import Builder, JobRunner, WorkerPool
from rebuilder.recovery import DiskGuard, MiB, clean_leftovers
from rebuilder.tlog import NodeLog
from rebuilder.tlog_http import log_settings
from verifier.errors import VerifierError
from verifier.keys import load_private_key
from verifier.tlog.note import NoteSigner

__all__ = ["DEFAULT_GRACE_S", "DaemonError", "make_builder", "run_daemon"]

log = logging.getLogger("rebuilder.daemon")
DEFAULT_GRACE_S = 60.0
DRAIN_S = 5.0

class DaemonError(VerifierError):
    """A part of the daemon stopped on its own; the process should exit non-zero. Raised from
    the first error that stopped one (``__cause__``), when it raised one."""


BuilderFactory = Callable[[Config, aiohttp.ClientSession], Builder]


def make_builder(config: Config, session: aiohttp.ClientSession) -> Builder:
    """The production builder: each job runs through its ecosystem's builder
    (``rebuilder.ecosystem``; Debian: ``rebuilder.debian.node``), made once per ecosystem."""
    builders: dict[str, Builder] = {}

    async def builder(job: BuildJob, work_dir: Path) -> RebuildOutcome:
        if job.ecosystem not in builders:
            builders[job.ecosystem] = ecosystems.get(job.ecosystem).builder(config, session)
        return await builders[job.ecosystem](job, work_dir)

    return builder


async def run_daemon(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    grace: float = DEFAULT_GRACE_S,
    builder_factory: BuilderFactory = make_builder,
    install_signals: bool = True,
) -> None:
    stop = stop or asyncio.Event()
    # a stop signal since the process started (rebuilder/__main__.py) stops it now; one
    # during the shutdown is absorbed: SIGTERM means exit 0 whenever it comes
    detach = _stopsignals.attach(asyncio.get_running_loop(), stop.set) if install_signals \
        else None
    try:
        await _run(config, stop, grace, builder_factory)
    finally:
        if detach is not None:
            detach()


async def _run(config: Config, stop: asyncio.Event, grace: float,
               builder_factory: BuilderFactory) -> None:
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
    watchers = [  # one per ecosystem the configured repositories belong to
        ecosystems.get(eco).watcher(config, repos, store, session, lambda _j: pool.wake())
        for eco, repos in _by_ecosystem(config).items()
    ]

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
    for watcher in watchers:
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
        for watcher in watchers:
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
        causes = [t.exception() for t in died if not t.cancelled()]
        raise DaemonError(f"{', '.join(t.get_name() for t in died)} stopped unexpectedly"
                          ) from next((c for c in causes if c is not None), None)


def _by_ecosystem(config: Config) -> dict[str, tuple[RepositoryConfig, ...]]:
    grouped: dict[str, list[RepositoryConfig]] = {}
    for repo in config.repositories:
        grouped.setdefault(ecosystems.repository_ecosystem(repo), []).append(repo)
    return {eco: tuple(repos) for eco, repos in grouped.items()}


async def _drain(store: Store, publisher: Publisher) -> None:
    """Give the publisher a few seconds to send what the last builds stored."""
    if not publisher.connected:
        return
    publisher.wake()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            await publisher.drained.wait()
