"""The node's witness client against the real coordinator witness on a real aiohttp server:
the 409 answer teaches it the witness's size, a down witness delays but loses nothing, and a
cosignature by another key is refused."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from coordinator.witness import Witness, add_witness_routes
from rebuilder.config import WitnessConfig
from rebuilder.cosign import WitnessClient, cosign_round
from rebuilder.db import NewAttestation, Store
from rebuilder.tlog import LogSettings, NodeLog
from tests.support import free_port
from verifier.keys import generate_private_key
from verifier.tlog.note import ALG_COSIGNATURE_V1, Note, NoteSigner

ORIGIN = "rb.example/log"


def _att(i: int) -> NewAttestation:
    env = b'{"n":%d}' % i
    return NewAttestation(hashlib.sha256(env).hexdigest(), env, "revocation", None, None, None,
                          ())


@contextlib.asynccontextmanager
async def _witness(tmp: Path, signer: NoteSigner, log_key: NoteSigner,
                   port: int) -> AsyncIterator[Witness]:
    app = web.Application()
    holder: list[Witness] = []

    async def make() -> Witness:
        w = await Witness.open(tmp / "witness.db", signer, {ORIGIN: ("rb", log_key.verifier)})
        holder.append(w)
        return w

    add_witness_routes(app, "/witness", make)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield holder[0]
    finally:
        await runner.cleanup()


async def test_resync_after_409_and_witness_down_loses_nothing(tmp_path: Path) -> None:
    key = generate_private_key()
    log_key = NoteSigner(ORIGIN, key)
    wsigner = NoteSigner("w.example/w", generate_private_key(), ALG_COSIGNATURE_V1)
    store = await Store.open(tmp_path / "state.db")
    node_log = await NodeLog.open(store, LogSettings(ORIGIN, "x", tmp_path / "log"), log_key)
    port = free_port()
    cfg = WitnessConfig(wsigner.name, wsigner.vkey, f"http://127.0.0.1:{port}/witness")
    async with aiohttp.ClientSession() as session:
        await store.add_attestations_bulk([_att(i) for i in range(3)])
        await node_log.checkpoint()
        # The witness is down: no cosignature, the checkpoint is still served, nothing lost.
        assert await cosign_round(node_log, [WitnessClient(cfg, session)]) == 0
        async with _witness(tmp_path, wsigner, log_key, port):
            assert await cosign_round(node_log, [WitnessClient(cfg, session)]) == 1
            await store.add_attestations_bulk([_att(i) for i in range(3, 8)])
            await node_log.checkpoint()
            fresh = WitnessClient(cfg, session)  # a restarted node: believes old size 0
            assert await cosign_round(node_log, [fresh]) == 1  # 409 "3", then proof 3 -> 8
            assert fresh.known_size == 8
            served = Note.from_bytes((tmp_path / "log" / "checkpoint").read_bytes())
            assert [s.name for s in served.verify([wsigner.verifier])] == [wsigner.name]
            # A witness answering with another key's cosignature is not believed.
            impostor = WitnessConfig(wsigner.name, NoteSigner(
                wsigner.name, generate_private_key(), ALG_COSIGNATURE_V1).vkey, cfg.url)
            await store.add_attestations_bulk([_att(8)])
            await node_log.checkpoint()
            assert await cosign_round(node_log, [WitnessClient(impostor, session)]) == 0
    await store.close()
