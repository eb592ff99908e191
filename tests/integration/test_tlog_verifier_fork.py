"""A real node (``run_daemon``, its aiohttp API and C2SP tiles) that forks its log: the
verifier checks an artifact online, remembers the checkpoint, proves the node's next (grown)
checkpoint consistent with it from the served tiles, and, once the node shows a tree that does
not extend what it showed before, reports a split view found by that consistency check."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from rebuilder.config import Config, load_config
from rebuilder.daemon import run_daemon
from rebuilder.db import NewAttestation, Store
from tests.support import Mosquitto, wait_for
from tests.unit.coordinator.factory import Signer, sha
from tests.unit.rebuilder.node_helpers import amake_node
from verifier.cli import main as verifier_main
from verifier.dsse import Envelope
from verifier.keys import load_private_key, public_key_pem
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.note import Note

pytestmark = pytest.mark.slow

DEB = Path(__file__).parents[1] / "vectors" / "debs" / "hello_1.0-1_amd64.deb"
DEB_SHA = "2fe5b3121c4eb7f0498447afc10ca0fff140c19e43b00cedd420308f8c6af81e"


@contextlib.asynccontextmanager
async def _daemon(config: Config) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_daemon(config, stop=stop, install_signals=False, grace=1))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _store(config: Config, envelopes: list[tuple[Envelope, str]]) -> None:
    store = await Store.open(config.node.db_path)
    try:
        for env, digest in envelopes:
            real = digest == DEB_SHA
            await store.add_attestation(NewAttestation(
                envelope_sha256=env.digest(), envelope=env.to_bytes(), kind="rebuild",
                source="hello" if real else "fake", version="1.0-1", arch="amd64",
                subjects=(("hello_1.0-1_amd64.deb" if real else "fake.deb", digest),)))
    finally:
        await store.close()


async def _served_size(http: aiohttp.ClientSession, base: str) -> int | None:
    try:
        async with http.get(f"{base}/log/checkpoint") as r:
            if r.status != 200:
                return None
            return Checkpoint.from_text(Note.from_bytes(await r.read()).text).size
    except aiohttp.ClientConnectionError:  # still starting
        return None


async def test_verifier_detects_a_forked_log_by_consistency(
        tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    node = await amake_node(tmp_path, mqtt_port=mosquitto.port)
    assert node.path is not None
    with node.path.open("a") as f:
        f.write("\n[log]\ncheckpoint_interval = 1\n")
    node = load_config(node.path)
    base = node.node.public_url
    signer = Signer(node.node.id, key=load_private_key(node.node.signing_key), url=base)
    key_file = tmp_path / "node.pub"
    key_file.write_text(public_key_pem(load_private_key(node.node.signing_key).public_key()))
    state_file = tmp_path / "state.json"
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'threshold = 1\nwitness_threshold = 0\n[log]\nrequire_inclusion = true\n'
        f'state_file = "{state_file}"\n'
        f'[[rebuilder]]\nid = "{node.node.id}"\noperator = "op"\nurl = "{base}"\n'
        f'public_key_file = "{key_file}"\n')
    check = ["check", "--policy", str(policy), str(DEB)]

    def fake(name: str) -> tuple[Envelope, str]:
        return signer.rebuild("fake", "1.0-1", {"fake.deb": sha(name)}, invocation=name), sha(
            name)

    real = (signer.rebuild("hello", "1.0-1", {"hello_1.0-1_amd64.deb": DEB_SHA},
                           invocation="b-real"), DEB_SHA)

    def remembered() -> int:
        logs = json.loads(state_file.read_text())["logs"]
        assert len(logs) == 1
        return int(next(iter(logs.values()))["size"])

    async with aiohttp.ClientSession() as http:
        async with _daemon(node):
            await _store(node, [fake("a0"), real])

            async def sized(n: int) -> bool:
                return await _served_size(http, base) == n

            await wait_for(lambda: sized(2), 30, "a checkpoint of size 2")
            assert await asyncio.to_thread(verifier_main, check) == 0
            assert remembered() == 2
            # The log grows honestly: proved consistent from the tiles, then remembered.
            await _store(node, [fake("a2"), fake("a3"), fake("a4")])
            await wait_for(lambda: sized(5), 30, "a checkpoint of size 5")
            capsys.readouterr()
            assert await asyncio.to_thread(verifier_main, check) == 0
            assert remembered() == 5

        # The same node (key, URL) now shows another history: its first entries differ.
        forked = replace(node, node=replace(node.node, state_dir=tmp_path / "forked"))
        forked.node.state_dir.mkdir()
        async with _daemon(forked):
            await _store(forked, [fake("b0"), real, *(fake(f"b{i}") for i in range(2, 8))])
            await wait_for(lambda: sized(8), 30, "the forked log's checkpoint of size 8")
            capsys.readouterr()
            assert await asyncio.to_thread(verifier_main, check) == 1
            out = capsys.readouterr().out
            assert "split view" in out, out
            assert "not an extension of size 5" in out, out
            assert remembered() == 5  # the fork is not remembered
