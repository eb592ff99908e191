"""A real node (``run_daemon``) and a real coordinator-witness on loopback: the node's log is
checkpointed while the witness is down (nothing lost), cosigned once it is up, served as C2SP
tiles with the cosignature, announced retained on MQTT, and proofs in attestation answers
verify against the cosigned checkpoint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiomqtt
import pytest
from aiohttp import web

from coordinator.app import create_app as coordinator_app
from coordinator.config import load_config as load_coordinator_config
from coordinator.witness_setup import witness_signer
from rebuilder.config import Config, load_config
from rebuilder.daemon import run_daemon
from rebuilder.db import NewAttestation, Store
from rebuilder.publish import checkpoint_topic
from tests.support import Mosquitto, free_port, wait_for
from tests.unit.coordinator.factory import Signer, coordinator_toml, sha
from tests.unit.rebuilder.node_helpers import amake_node
from verifier.cli import main as verifier_main
from verifier.dsse import Envelope
from verifier.keys import generate_private_key, load_private_key, public_key_pem
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.merkle import leaf_hash, verify_inclusion
from verifier.tlog.note import ALG_COSIGNATURE_V1, Note, NoteSigner, NoteVerifier

pytestmark = pytest.mark.slow

DEB = Path(__file__).parents[1] / "vectors" / "debs" / "hello_1.0-1_amd64.deb"
DEB_SHA = "2fe5b3121c4eb7f0498447afc10ca0fff140c19e43b00cedd420308f8c6af81e"


def _policy(tmp_path: Path, node: Config, witness_vkey: str, threshold: int = 1) -> Path:
    key_file = tmp_path / "node.pub"
    key_file.write_text(public_key_pem(load_private_key(node.node.signing_key).public_key()))
    name = witness_vkey.split("+")[0]
    path = tmp_path / "policy.toml"
    path.write_text(
        f"threshold = 1\nwitness_threshold = {threshold}\n"
        f'[log]\nrequire_inclusion = true\nstate_file = "{tmp_path / "state.json"}"\n'
        f'[[witness]]\nname = "{name}"\nkey = "{witness_vkey}"\n'
        f'[[rebuilder]]\nid = "{node.node.id}"\noperator = "op"\nurl = "{node.node.public_url}"\n'
        f'public_key_file = "{key_file}"\n')
    return path


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    try:
        async with session.get(url) as r:
            return r.status, await r.read()
    except aiohttp.ClientConnectionError:  # the node is still starting
        return 0, b""


@contextlib.asynccontextmanager
async def _daemon(config: Config) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_daemon(config, stop=stop, install_signals=False, grace=1))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def _serve(app: web.Application, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def _store_envelopes(config: Config, envelopes: list[tuple[Envelope, str]]) -> None:
    store = await Store.open(config.node.db_path)
    try:
        for env, digest in envelopes:
            real = digest == DEB_SHA  # the others are of another package: no equivocation
            await store.add_attestation(NewAttestation(
                envelope_sha256=env.digest(), envelope=env.to_bytes(), kind="rebuild",
                source="hello" if real else "fake", version="1.0-1", arch="amd64",
                subjects=(("hello_1.0-1_amd64.deb" if real else "fake.deb", digest),)))
    finally:
        await store.close()


async def test_node_log_witnessed_by_the_coordinator(tmp_path: Path,
                                                     mosquitto: Mosquitto) -> None:
    node = await amake_node(tmp_path, mqtt_port=mosquitto.port)
    node_key = load_private_key(node.node.signing_key)
    coord_port = free_port()
    coord_dir = tmp_path / "coord"
    coord_dir.mkdir()
    signer = Signer(node.node.id, key=node_key, url=node.node.public_url)
    coord_cfg = load_coordinator_config(coordinator_toml(coord_dir, [signer], None, coord_port))
    witness = witness_signer(coord_cfg)  # creates the witness key the coordinator will use
    assert node.path is not None
    with node.path.open("a") as f:
        f.write(f'\n[log]\ncheckpoint_interval = 1\n\n[[witness]]\nname = "{witness.name}"\n'
                f'key = "{witness.vkey}"\nurl = "http://127.0.0.1:{coord_port}/witness"\n')
    node = load_config(node.path)
    base = node.node.public_url
    envs = [(signer.rebuild("fake", "1.0-1", {"fake.deb": sha(f"d{i}")},
                            invocation=f"b-{i}"), sha(f"d{i}")) for i in range(2)]
    envs.append((signer.rebuild("hello", "1.0-1", {"hello_1.0-1_amd64.deb": DEB_SHA},
                                invocation="b-real"), DEB_SHA))

    async with aiohttp.ClientSession() as http, _daemon(node):
        await _store_envelopes(node, envs)

        async def checkpoint() -> Note | None:
            status, body = await _get(http, f"{base}/log/checkpoint")
            return Note.from_bytes(body) if status == 200 else None

        async def sized(n: int) -> bool:
            note = await checkpoint()
            return note is not None and Checkpoint.from_text(note.text).size == n

        # The witness is down: the node checkpoints all the same.
        await wait_for(lambda: sized(3), 30, "a checkpoint of size 3")
        status, doc = await _get(http, f"{base}/v1/node")
        info = json.loads(doc)["log"]
        assert info["origin"] == base.split("://")[1] + "/log"
        assert info["url"] == base + "/log"
        node_vkey = NoteVerifier.from_vkey(info["vkey"])
        note = await checkpoint()
        assert note is not None and len(note.signatures) == 1
        note.verify([node_vkey])

        async with _serve(coordinator_app(coord_cfg), coord_port):
            status, body = await _get(http, f"http://127.0.0.1:{coord_port}/v1/witness")
            assert status == 200
            assert json.loads(body) == {"name": witness.name,
                                                      "vkey": witness.vkey}

            async def cosigned() -> bool:
                n = await checkpoint()
                return n is not None and len(n.signatures) == 2

            await wait_for(cosigned, 30, "the witness's cosignature on the served checkpoint")
            note = await checkpoint()
            assert note is not None
            assert [s.name for s in note.verify([witness.verifier])] == [witness.name]

            # More entries: a new checkpoint, consistent, cosigned again (old size 3 -> 5).
            more = [(signer.rebuild("fake", "1.0-1", {"fake.deb": sha(f"d{i}")},
                                    invocation=f"b-{i}"), sha(f"d{i}")) for i in range(3, 5)]
            await _store_envelopes(node, more)

            async def cosigned5() -> bool:
                n = await checkpoint()
                return (n is not None and Checkpoint.from_text(n.text).size == 5
                        and len(n.signatures) == 2)

            await wait_for(cosigned5, 30, "a cosigned checkpoint of size 5")

        # An attestation answer with proofs: index, proof and cosigned checkpoint verify.
        status, body = await _get(http, f"{base}/v1/attestations?digest=sha256:{sha('d1')}"
                                  "&proofs=1")
        assert status == 200, body
        answer = json.loads(body)
        env = envs[1][0]
        proof = answer["proofs"][env.digest()]
        cp_note = Note.from_bytes(proof["checkpoint"]["envelope"].encode())
        cp_note.verify([node_vkey])
        cp_note.verify([witness.verifier])
        cp = Checkpoint.from_text(cp_note.text)
        assert (proof["logIndex"], proof["treeSize"]) == ("1", str(cp.size))
        verify_inclusion(1, cp.size, leaf_hash(env.to_bytes()),
                         [base64.b64decode(h) for h in proof["hashes"]], cp.root)

        # verifier bundle, then an offline check that demands the cosigned inclusion proof.
        policy = _policy(tmp_path, node, witness.vkey)
        out = tmp_path / "bundle"
        assert await asyncio.to_thread(verifier_main, [
            "bundle", "--policy", str(policy), "--out", str(out), str(DEB)]) == 0
        lines = (out / "hello_1.0-1_amd64.deb.intoto.jsonl").read_bytes().splitlines()
        assert len(lines) == 1 and b'"inclusionProof"' in lines[0]
        check = ["check", "--policy", str(policy), "--attestations", str(out), str(DEB)]
        assert await asyncio.to_thread(verifier_main, check) == 0
        state = json.loads((tmp_path / "state.json").read_text())
        assert [v["size"] for v in state["logs"].values()] == [5]
        # Online, the node's package and digest answers carry the proofs too.
        assert await asyncio.to_thread(verifier_main, [
            "check", "--policy", str(policy), str(DEB)]) == 0
        # Cosigned by no witness this policy trusts: the same bundle does not count.
        (tmp_path / "strict").mkdir()
        other = NoteSigner("other.example/w", generate_private_key(), ALG_COSIGNATURE_V1)
        strict = _policy(tmp_path / "strict", node, other.vkey)
        assert await asyncio.to_thread(verifier_main, [
            "check", "--policy", str(strict), "--attestations", str(out), str(DEB)]) == 1
        # A tampered audit path makes the attestation invalid.
        doc = json.loads(lines[0])
        h = base64.b64decode(doc["inclusionProof"]["hashes"][0])
        doc["inclusionProof"]["hashes"][0] = base64.b64encode(bytes([h[0] ^ 1]) + h[1:]).decode()
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "x.intoto.jsonl").write_text(json.dumps(doc) + "\n")
        assert await asyncio.to_thread(verifier_main, [
            "check", "--policy", str(policy), "--attestations", str(bad), str(DEB)]) == 1

        # Tiles as files and over HTTP.
        status, tile = await _get(http, f"{base}/log/tile/0/000.p/5")
        assert status == 200 and tile == (node.log_dir / "tile/0/000.p/5").read_bytes()
        assert tile[32:64] == leaf_hash(env.to_bytes())
        status, _ = await _get(http, f"{base}/log/tile/0/../../state.db")
        assert status == 404

        # The latest served checkpoint is retained on MQTT.
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as c:
            await c.subscribe(checkpoint_topic(node.node.id), qos=1)
            async with asyncio.timeout(10):
                async for message in c.messages:
                    assert message.retain
                    payload = message.payload
                    assert isinstance(payload, bytes)
                    retained = Note.from_bytes(payload)
                    assert Checkpoint.from_text(retained.text).size == 5
                    break
