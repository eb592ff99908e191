"""Our links and layout against Debian's own in-toto 1.3.1 verification (the transport's path).

Three real nodes (real store, real JobRunner, real API) serve links; ``verifier intoto-layout``
writes the layout from a policy, in-toto-sign signs it with a fresh OpenPGP key, and in-toto's
verifylib (system Python, bookworm's packages) decides, exactly as apt-transport-in-toto does
after a download.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rebuilder.api import create_app
from rebuilder.db import Store
from rebuilder.queue import JobRunner
from tests.integration._intoto import (
    installer_key,
    intoto_verify,
    link_file_name,
    require_intoto,
    sign_layout,
    stop_agent,
)
from tests.unit.rebuilder.node_helpers import amake_node, job, reproduced, serve
from verifier.cli import main as verifier_main
from verifier.keys import load_private_key, public_key_pem
from verifier.statement import Digest

DEB = b"!<arch>\nnot really a deb, but the bytes the repository serves\n"
DEB_NAME = "hello_2.10-3_amd64.deb"


async def _node_links(tmp_path: Path, n: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """n nodes that reproduced hello 2.10-3; their links as served, and their configs."""
    digest = Digest(hashlib.sha256(DEB).hexdigest())
    links, configs = [], []
    for i in range(n):
        cfg = await amake_node(tmp_path / f"n{i}", node_id=f"rb-{i}")
        configs.append(cfg)
        store = await Store.open(cfg.node.db_path)
        key = load_private_key(cfg.node.signing_key)

        async def builder(j: Any, work: Path) -> Any:
            return reproduced(j)

        await store.add_jobs([job("hello", "2.10-3",
                                  published={DEB_NAME: (digest, "http://x/pool/h.deb")})])
        runner = JobRunner(cfg, store, key, builder)
        while (claimed := await store.claim_job()) is not None:
            await runner.run(claimed)
        async with serve(create_app(cfg), cfg.node.listen_port) as base, \
                aiohttp.ClientSession() as session, \
                session.get(f"{base}/sources/hello/2.10-3/metadata") as r:
            assert r.status == 200, await r.text()
            links.append(await r.json())
        await store.close()
    return links, configs


def _policy(tmp_path: Path, configs: list[Any], threshold: int) -> Path:
    parts = [f"threshold = {threshold}\n"]
    for i, cfg in enumerate(configs):
        pem = public_key_pem(load_private_key(cfg.node.signing_key).public_key())
        parts.append(f'[[rebuilder]]\nid = "rb-{i}"\noperator = "op-{i}"\n'
                     f'url = "{cfg.node.public_url}"\npublic_key = """{pem}"""\n')
    path = tmp_path / "policy.toml"
    path.write_text("\n".join(parts))
    return path


@pytest.fixture
async def setup(tmp_path: Path) -> Any:
    require_intoto()
    links, configs = await _node_links(tmp_path, 3)
    policy = _policy(tmp_path, configs, threshold=2)
    layout = tmp_path / "root.layout"
    assert verifier_main(["intoto-layout", "--policy", str(policy), "--out", str(layout)]) == 0
    home = tmp_path / "gnupg"
    try:
        fpr = installer_key(home)
        sign_layout(layout, fpr, home)
        yield tmp_path, links, layout, fpr, home
    finally:
        stop_agent(home)


def _workdir(tmp_path: Path, name: str, links: list[dict[str, Any]], deb: bytes) -> Path:
    d = tmp_path / name
    d.mkdir()
    for link in links:
        (d / link_file_name(link)).write_text(json.dumps(link))
    (d / DEB_NAME).write_bytes(deb)
    return d


async def test_two_of_three_links_pass_debians_in_toto(setup: Any) -> None:
    tmp_path, links, layout, fpr, home = setup
    for count in (3, 2):
        d = _workdir(tmp_path, f"ok{count}", links[:count], DEB)
        r = intoto_verify(d, layout, fpr, home)
        assert r.returncode == 0, r.stderr
        shutil.rmtree(d)


async def test_one_link_is_below_the_threshold(setup: Any) -> None:
    tmp_path, links, layout, fpr, home = setup
    r = intoto_verify(_workdir(tmp_path, "one", links[:1], DEB), layout, fpr, home)
    assert r.returncode != 0
    want = "LinkNotFoundError: Step 'rebuild' requires '2' link metadata file(s), found '1'"
    assert want in r.stderr, r.stderr


async def test_tampered_deb_fails_debians_in_toto(setup: Any) -> None:
    tmp_path, links, layout, fpr, home = setup
    r = intoto_verify(_workdir(tmp_path, "bad", links, DEB + b"backdoor"), layout, fpr, home)
    assert r.returncode != 0
    assert "RuleVerificationError: 'DISALLOW *.deb' matched" in r.stderr, r.stderr


async def test_link_with_edited_product_fails_its_signature(setup: Any) -> None:
    tmp_path, links, layout, fpr, home = setup
    forged = [json.loads(json.dumps(link)) for link in links]
    evil = hashlib.sha256(DEB + b"backdoor").hexdigest()
    for link in forged:
        link["signed"]["products"][DEB_NAME]["sha256"] = evil
    r = intoto_verify(_workdir(tmp_path, "forged", forged, DEB + b"backdoor"), layout, fpr, home)
    assert r.returncode != 0
    assert "validly signed by different authorized functionaries. Only found '0'" in r.stderr, \
        r.stderr
