"""The coordinator's log monitor against a real aiohttp server serving a real node log (C2SP
tiles written by ``rebuilder.tlog``): a forked log (two trees of one size shown to two
clients), a rollback, an envelope served but never logged, and invalid entries are found,
recorded in the store and announced."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from coordinator.checks import Accepted, check_envelope
from coordinator.config import CoordinatorConfig, RebuilderConfig, WitnessConfig
from coordinator.monitor import LOG_INCONSISTENCY_TOPIC, Monitor
from coordinator.store import open_store as open_coordinator_store
from rebuilder.db import NewAttestation
from rebuilder.db import Store as NodeStore
from rebuilder.tlog import LogSettings, NodeLog
from tests.support import free_port
from tests.unit.coordinator.factory import Signer, sha
from verifier.dsse import Envelope
from verifier.keys import keyid
from verifier.tlog.inclusion import InclusionProof, LogPolicy, verify_envelope_proof
from verifier.tlog.note import NoteSigner


class LogServer:
    """Serves <root>/log as <url>/log; ``root`` can be switched to show another tree."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.asked: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.asked.append(request.match_info["tail"])
        path = self.root / "log" / request.match_info["tail"]
        if ".." in request.match_info["tail"] or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes())


@contextlib.asynccontextmanager
async def serving(server: LogServer) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/log/{tail:.+}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def build_log(directory: Path, signer: Signer, origin: str,
                    envelopes: list[bytes]) -> None:
    store = await NodeStore.open(directory / "state.db")
    node_log = await NodeLog.open(store, LogSettings(origin, "x", directory / "log"),
                                  NoteSigner(origin, signer.key))
    await store.add_attestations_bulk([
        NewAttestation(sha(e.decode()), e, "rebuild", "hello", "1", "amd64", ())
        for e in envelopes])
    await node_log.checkpoint()
    await store.close()


def envs(signer: Signer, names: list[str]) -> list[bytes]:
    return [signer.rebuild("hello", "1", {"hello_1_amd64.deb": sha(n)}, invocation=n).to_bytes()
            for n in names]


async def test_monitor_finds_fork_rollback_and_unlogged(tmp_path: Path) -> None:
    signer = Signer("rb-fork")
    published: list[bytes] = []
    server = LogServer(tmp_path / "a")
    async with serving(server) as url, aiohttp.ClientSession() as session:
        origin = url.split("://")[1] + "/log"
        a = envs(signer, ["e0", "e1", "e2", "e3"])
        await build_log(tmp_path / "a", signer, origin, a)
        b = [*a[:3], *envs(signer, ["other"])]  # same size, another fourth entry: a fork
        await build_log(tmp_path / "b", signer, origin, b)
        await build_log(tmp_path / "c", signer, origin, a[:2])  # a rollback to size 2
        rb = RebuilderConfig(id="rb-fork", operator="op", url=url,
                             public_key=signer.key.public_key())
        config = CoordinatorConfig(database=tmp_path / "coord.db", rebuilders=(rb,))
        store = await open_coordinator_store(config.database)
        monitor = await Monitor.open(tmp_path / "monitor.db", config, store, session, grace=0)

        async def publish(topic: str, payload: bytes) -> bool:
            assert topic == LOG_INCONSISTENCY_TOPIC
            published.append(payload)
            return True

        monitor.publish = publish
        try:
            # One envelope reached the coordinator (over MQTT, say) but is in no log.
            unlogged = Envelope.from_bytes(envs(signer, ["secret"])[0])
            acc = check_envelope(unlogged.to_bytes(), "rb-fork", signer.key.public_key(),
                                 keyid(signer.key.public_key()))
            assert isinstance(acc, Accepted)
            await store.ensure_rebuilders(["rb-fork"])
            await store.store_batch([acc], now=0)

            found = await monitor.round()
            kinds = sorted(f.kind for f in found)
            # All four logged entries never reached the coordinator, the fifth is unlogged.
            assert kinds == ["logged-not-served"] * 4 + ["unlogged-envelope"]
            assert unlogged.digest() in [f.evidence.get("envelope") for f in found]

            # The coordinator can prove inclusion from its mirror (/v1/attestations proofs=1).
            proof = await monitor.proof_for(hashlib.sha256(a[1]).hexdigest())
            assert proof is not None and proof["logIndex"] == "1"
            p = InclusionProof.from_dict(proof)
            verify_envelope_proof(a[1], p, signer.key.public_key(), LogPolicy())
            assert await monitor.proof_for(unlogged.digest()) is None

            server.root = tmp_path / "b"  # now the node shows another tree of size 4
            found = await monitor.round()
            assert [f.kind for f in found] == ["split-view"]

            server.root = tmp_path / "c"
            found = await monitor.round()
            assert [f.kind for f in found] == ["rollback"]

            recorded = await store.log_inconsistencies()
            assert {r.kind for r in recorded} == {"logged-not-served", "unlogged-envelope",
                                                     "split-view", "rollback"}
            assert len(published) == len(recorded)  # every finding announced once
            assert await store.log_inconsistencies(unpublished=True) == []
            assert await monitor.round() == []  # known findings are not reported again
        finally:
            await monitor.close()
            await store.close()


async def test_monitor_finds_entries_not_signed_by_the_node(tmp_path: Path) -> None:
    signer, stranger = Signer("rb-x"), Signer("rb-stranger")
    server = LogServer(tmp_path / "a")
    async with serving(server) as url, aiohttp.ClientSession() as session:
        origin = url.split("://")[1] + "/log"
        await build_log(tmp_path / "a", signer, origin,
                        [*envs(signer, ["ok"]), *envs(stranger, ["theirs"]), b"not json"])
        rb = RebuilderConfig(id="rb-x", operator="op", url=url,
                             public_key=signer.key.public_key())
        config = CoordinatorConfig(database=tmp_path / "coord.db", rebuilders=(rb,))
        store = await open_coordinator_store(config.database)
        monitor = await Monitor.open(tmp_path / "monitor.db", config, store, session, grace=1e9)
        try:
            found = await monitor.round()
            assert sorted(f.detail.split(":")[0] for f in found) == [
                "rb-x's log entry 1 is not a valid envelope by rb-x",
                "rb-x's log entry 2 is not a valid envelope by rb-x"]
        finally:
            await monitor.close()
            await store.close()


async def test_monitor_reads_a_log_far_ahead_in_batches_over_rounds(tmp_path: Path) -> None:
    """A log 3 entry bundles ahead with a cap of 1 bundle per round: read over three rounds,
    resuming (across a restart of the monitor) where it stopped, each bundle fetched once, and
    verified only once read to its checkpoint; a fork shown meanwhile is still found."""
    signer = Signer("rb-far")
    server = LogServer(tmp_path / "a")
    async with serving(server) as url, aiohttp.ClientSession() as session:
        origin = url.split("://")[1] + "/log"
        a = envs(signer, [f"e{i}" for i in range(700)])
        await build_log(tmp_path / "a", signer, origin, a)
        rb = RebuilderConfig(id="rb-far", operator="op", url=url,
                             public_key=signer.key.public_key())
        config = CoordinatorConfig(database=tmp_path / "coord.db", rebuilders=(rb,),
                                   witness=WitnessConfig(monitor_batch=1))
        store = await open_coordinator_store(config.database)
        monitor = await Monitor.open(tmp_path / "monitor.db", config, store, session, grace=1e9)
        last = hashlib.sha256(a[-1]).hexdigest()
        try:
            assert await monitor.round() == []
            assert await monitor.proof_for(hashlib.sha256(a[0]).hexdigest()) is None
            await monitor.close()  # a restart: the next rounds resume from the stored point
            monitor = await Monitor.open(tmp_path / "monitor.db", config, store, session,
                                         grace=1e9)
            assert await monitor.round() == []
            assert await monitor.proof_for(last) is None  # read to 512 of 700: not verified
            assert await monitor.round() == []
            proof = await monitor.proof_for(last)
            assert proof is not None and (proof["logIndex"], proof["treeSize"]) == ("699", "700")
            verify_envelope_proof(a[-1], InclusionProof.from_dict(proof),
                                  signer.key.public_key(), LogPolicy())
            bundles = [p for p in server.asked if p.startswith("tile/entries/")]
            assert bundles == ["tile/entries/000", "tile/entries/001", "tile/entries/002.p/188"]

            # It grows to 1100 (read from 700 on), but while the monitor reads, the node starts
            # showing a tree of 1300 whose entry 900 differs: the mirror reaches size 1100 from
            # that tree's bundles (its own partial bundles only: size 1100's are read from full
            # ones) and finds it is not the checkpoint of 1100 the node showed first.
            b = [*a, *envs(signer, [f"e{i}" for i in range(700, 1100)])]
            await build_log(tmp_path / "b", signer, origin, b)
            c = [*b[:900], *envs(signer, [f"c{i}" for i in range(900, 1300)])]
            await build_log(tmp_path / "c", signer, origin, c)
            server.root = tmp_path / "b"
            assert await monitor.round() == []  # bundle 2, from entry 700
            server.root = tmp_path / "c"
            found = [*await monitor.round(), *await monitor.round()]
            assert [f.kind for f in found] == ["split-view"]
            assert "size 1100 does not match its entries" in found[0].detail
            assert "tile/entries/004.p/76" in server.asked and "tile/entries/004" in server.asked
            proof = await monitor.proof_for(last)  # the mirror stays at what it verified
            assert proof is not None and proof["treeSize"] == "700"
            # Once the node shows one tree again, the monitor reads it to the end.
            server.root = tmp_path / "b"
            for _ in range(3):
                assert await monitor.round() == []
            proof = await monitor.proof_for(hashlib.sha256(b[-1]).hexdigest())
            assert proof is not None and proof["treeSize"] == "1100"
        finally:
            await monitor.close()
            await store.close()

