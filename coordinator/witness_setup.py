"""Wiring of the witness into the coordinator's application: its key (created on first start),
the logs it accepts (every registered rebuilder's, keyed by origin), and its routes."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from coordinator.config import CoordinatorConfig
from coordinator.witness import Witness, add_witness_routes
from verifier.keys import generate_private_key, load_private_key, save_private_key
from verifier.tlog.note import ALG_COSIGNATURE_V1, NoteSigner, NoteVerifier

__all__ = ["known_logs", "setup_witness", "witness_signer"]

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
