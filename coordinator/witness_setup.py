"""Wiring of the witness into the coordinator's application: its key (created on first start),
the logs it accepts (every registered rebuilder's, keyed by origin), and its routes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from coordinator.appstate import CONFIG, HTTP, MQTT, STORE
from coordinator.config import CoordinatorConfig
from coordinator.monitor import Monitor
from coordinator.witness import WITNESS_KEY, Witness, add_witness_routes
from verifier.keys import generate_private_key, load_private_key, save_private_key
from verifier.tlog.note import ALG_COSIGNATURE_V1, NoteSigner, NoteVerifier

__all__ = ["MONITOR_KEY", "known_logs", "proofs_for", "setup_witness", "witness_signer"]

MONITOR_KEY = web.AppKey("monitor", Monitor)

log = logging.getLogger("coordinator.witness")


def _local(config: CoordinatorConfig, p: Path) -> Path:
    return p if p.is_absolute() else config.database.parent / p


def witness_signer(config: CoordinatorConfig) -> NoteSigner:
    path = _local(config, config.witness.key_file)
    if not path.exists():
        save_private_key(generate_private_key(), path)
        log.info("created witness key %s", path)
    signer = NoteSigner(config.witness_name, load_private_key(path), ALG_COSIGNATURE_V1)
    return signer


def known_logs(config: CoordinatorConfig) -> dict[str, tuple[str, NoteVerifier]]:
    """origin -> (rebuilder id, the checkpoint key: the rebuilder's own key named origin)."""
    return {r.origin: (r.id, NoteVerifier.ed25519(r.origin, r.public_key))
            for r in config.rebuilders}


def setup_witness(app: web.Application, config: CoordinatorConfig) -> None:
    if not config.witness.enabled:
        return

    async def make() -> Witness:
        signer = witness_signer(config)
        w = await Witness.open(_local(config, config.witness.state), signer, known_logs(config))
        log.info("witness %s (%s) for %d logs", signer.name, signer.vkey, len(w.logs))
        return w

    add_witness_routes(app, config.witness.prefix, make)
    app.cleanup_ctx.append(_monitor_ctx)


async def _monitor_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    monitor = await Monitor.open(_local(config, config.witness.state).with_name("monitor.db"),
                                 config, app[STORE], app[HTTP])
    witness = app[WITNESS_KEY]

    async def witnessed(origin: str) -> tuple[int, bytes] | None:
        latest = await witness.latest(origin)
        return (latest.size, latest.root) if latest else None

    async def publish(topic: str, payload: bytes) -> bool:
        link = app.get(MQTT)
        client = getattr(link, "_client", None)
        if link is None or client is None or not link.connected.is_set():
            return False
        await client.publish(topic, payload, qos=1, timeout=10)
        return True

    monitor.witnessed = witnessed
    monitor.publish = publish
    app[MONITOR_KEY] = monitor

    async def loop() -> None:
        while True:
            try:
                await monitor.round()
            except Exception:  # the next round tries again
                log.exception("log monitor round failed")
            await asyncio.sleep(config.witness.monitor_interval)

    task = asyncio.create_task(loop(), name="log monitor")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await monitor.close()


async def proofs_for(app: web.Application, bodies: list[bytes]) -> dict[str, Any]:
    """Envelope sha256 -> inclusion proof (or None) from the monitor's mirror of the logs."""
    monitor = app.get(MONITOR_KEY)
    out: dict[str, Any] = {}
    for body in bodies:
        digest = hashlib.sha256(body).hexdigest()
        out[digest] = await monitor.proof_for(digest) if monitor is not None else None
    return out
