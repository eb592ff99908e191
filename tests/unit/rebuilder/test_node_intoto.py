"""The node's in-toto v0.9 links for apt-transport-in-toto (rebuilder/intoto.py, docs/api.md).

Real store filled by the real JobRunner, the real API on a free port; signatures checked with
securesystemslib over its canonical JSON, which is what in-toto checks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signature, SSlibKey  # type: ignore[attr-defined]

from rebuilder.api import create_app
from rebuilder.cli import main as cli_main
from rebuilder.db import Store
from rebuilder.intoto import apt_deb_name
from rebuilder.queue import JobRunner
from tests.unit.rebuilder.node_helpers import amake_node, failed, job, mismatch, reproduced, serve
from verifier.keys import load_private_key, raw_public_key

_LINK_FIELDS = {"_type", "name", "materials", "products", "byproducts", "command", "environment"}


@pytest.fixture
async def node(tmp_path: Path) -> Any:
    cfg = await amake_node(tmp_path)
    store = await Store.open(cfg.node.db_path)
    key = load_private_key(cfg.node.signing_key)
    outcomes = {
        "hello": reproduced,
        "attr": reproduced,
        "evil": lambda j: mismatch(j, tmp_path / "work-reports"),
        "broken": failed,
    }

    async def builder(j: Any, work: Path) -> Any:
        return outcomes[j.source](j)

    jobs = [job("hello", "2.10-3"), job("evil", "1.0-1"), job("broken", "1.0-1"),
            job("attr", "1:2.5.1-4", published={
                "attr_2.5.1-4_amd64.deb": (reproduced(job("x")).outputs[0].rebuilt, "http://x/a"),
                "libattr1_2.5.1-4_amd64.deb": (reproduced(job("y")).outputs[0].rebuilt,
                                               "http://x/b"),
            })]
    runner = JobRunner(cfg, store, key, builder)
    await store.add_jobs(jobs)
    while (claimed := await store.claim_job()) is not None:
        await runner.run(claimed)
    async with serve(create_app(cfg), cfg.node.listen_port) as base, \
            aiohttp.ClientSession() as session:
        yield cfg, base, session, store
    await store.close()


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as r:
        return r.status, await r.json()


async def test_reproduced_package_gets_a_link_signed_as_securesystemslib_checks(node: Any) -> None:
    cfg, base, session, _ = node
    status, doc = await _get(session, f"{base}/v1/node")
    assert status == 200
    key = load_private_key(cfg.node.signing_key).public_key()
    sslib = SSlibKey.from_crypto(key, scheme="ed25519")
    assert doc["intoto"]["keyid"] == sslib.keyid != doc["keyid"]
    assert doc["intoto"]["key"]["keyval"]["public"] == raw_public_key(key).hex()

    status, link = await _get(session, f"{base}/sources/hello/2.10-3/metadata")
    assert status == 200, link
    signed = link["signed"]
    assert set(signed) == _LINK_FIELDS
    assert signed["_type"] == "link" and signed["name"] == "rebuild"
    want = reproduced(job("hello", "2.10-3")).outputs[0].rebuilt
    assert signed["products"] == {"hello_2.10-3_amd64.deb": {"sha256": want}}
    assert list(signed["materials"]) == ["hello_2.10-3_amd64.buildinfo"]
    [sig] = link["signatures"]
    assert sig["keyid"] == sslib.keyid
    sslib.verify_signature(Signature(sig["keyid"], sig["sig"]),
                           encode_canonical(signed).encode())  # raises if it does not verify


async def test_same_link_bytes_on_every_request(node: Any) -> None:
    _, base, session, _ = node
    bodies = []
    for _ in range(2):
        async with session.get(f"{base}/sources/hello/2.10-3/metadata") as r:
            bodies.append(await r.read())
    assert bodies[0] == bodies[1]


async def test_epoch_arrives_percent_encoded_and_names_apts_file(node: Any) -> None:
    _, base, session, _ = node
    # The transport builds the URL from APT's file name, where ':' is written %3a.
    status, link = await _get(session, f"{base}/sources/libattr1/1%3a2.5.1-4/metadata")
    assert status == 200, link
    assert list(link["signed"]["products"]) == [apt_deb_name("libattr1", "1:2.5.1-4", "amd64")]
    assert list(link["signed"]["products"]) == ["libattr1_1%3a2.5.1-4_amd64.deb"]
    # Another epoch is another package: the pool file name alone cannot tell them apart.
    status, body = await _get(session, f"{base}/sources/libattr1/2.5.1-4/metadata")
    assert status == 404, body
    status, body = await _get(session, f"{base}/sources/libattr1/2%3a2.5.1-4/metadata")
    assert status == 404, body


@pytest.mark.parametrize(("path", "why"), [
    ("evil/1.0-1", "mismatch"),
    ("broken/1.0-1", "failed build"),
    ("hello/2.10-4", "other version"),
    ("nosuch/1.0-1", "unknown package"),
])
async def test_only_reproduced_outputs_get_a_link(node: Any, path: str, why: str) -> None:
    _, base, session, _ = node
    status, body = await _get(session, f"{base}/sources/{path}/metadata")
    assert status == 404, why
    assert "has not reproduced" in body["error"]


@pytest.mark.parametrize("path", ["Hello/1.0", "hello/%20x", "hello/1.0;rm", "a/" + "9" * 300])
async def test_bad_names_are_400(node: Any, path: str) -> None:
    _, base, session, _ = node
    status, body = await _get(session, f"{base}/sources/{path}/metadata")
    assert status == 400, body


async def test_revoked_attestation_stops_its_link(node: Any) -> None:
    cfg, base, session, store = node
    status, _ = await _get(session, f"{base}/sources/hello/2.10-3/metadata")
    assert status == 200
    [j] = [j for j in await store.jobs_for_package("hello", "2.10-3")]
    build = await store.latest_build(j.id)
    target = build["envelope_sha256"]
    conf = str(cfg.node.state_dir / "config.toml")
    code = await asyncio.to_thread(
        cli_main, ["revoke", "--config", conf, target, "--reason", "compromised toolchain"])
    assert code == 0
    status, body = await _get(session, f"{base}/sources/hello/2.10-3/metadata")
    assert status == 404, body
