"""End to end: a real node (host mode, real bwrap builds, real diffoscope) against a real test
repository over HTTP and a real mosquitto; every attestation is served, verifies and is published.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import lzma
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rebuilder.daemon import run_daemon
from rebuilder.db import Store
from rebuilder.publish import attestation_topic
from rqdemo.testrepo import build_test_repository, serve_repository
from tests.support import Mosquitto, wait_for
from tests.unit.rebuilder.node_helpers import Subscriber, amake_node
from verifier.debian import read_deb_identity
from verifier.decision import Artifact
from verifier.dsse import Envelope
from verifier.keys import load_public_key
from verifier.policy import Policy, TrustedRebuilder
from verifier.sources import check_online, open_fetcher
from verifier.statement import RebuildStatement, parse_statement

pytestmark = pytest.mark.slow


async def _finished(store: Store, n: int) -> bool:
    c = await store.counts()
    return bool(c["done"] + c["failed"] >= n and c["queued"] == 0 and c["running"] == 0)


async def _backlog_zero(store: Store) -> bool:
    return bool((await store.counts())["backlog"] == 0)


@contextlib.asynccontextmanager
async def running_node(cfg: Any) -> Any:
    stop = asyncio.Event()
    task = asyncio.create_task(run_daemon(cfg, stop=stop, grace=5, install_signals=False))
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await task


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as r:
        assert r.status == 200, f"{url}: HTTP {r.status}"
        return await r.json()


async def test_node_end_to_end(tmp_path: Path, mosquitto: Mosquitto) -> None:
    repo = await asyncio.to_thread(build_test_repository, tmp_path / "repo")
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        cfg = await amake_node(tmp_path, "--architectures", ",".join(repo.architectures),
                               mqtt_port=mosquitto.port, repo_url=base,
                               signed_by=repo.keyring)
        store = await Store.open(cfg.node.db_path, readonly=True)
        n_jobs = len(repo.packages)
        async with Subscriber(mosquitto.host, mosquitto.port,
                              attestation_topic(cfg.node.id)) as sub, running_node(cfg):
            await wait_for(lambda: _finished(store, n_jobs), 240, "every job finished",
                           interval=0.5)
            await wait_for(lambda: _backlog_zero(store), 30, "outbox drained")
            api = cfg.node.public_url
            node = await _get(session, f"{api}/v1/node")
            pub = load_public_key(node["public_key"])

            for pkg in repo.packages:
                job_row = await store.find_job(pkg.source, pkg.version, pkg.architecture)
                assert job_row is not None, pkg.source
                build = await _get(session, f"{api}/v1/builds/{job_row.id}")
                expected = {"reproducible": "reproduced"}.get(pkg.kind, pkg.kind)
                assert build["verdict"] == expected, (pkg.source, build)
                for out in build["outputs"]:
                    # Every attestation is found by the digest this node built...
                    found = await _get(
                        session, f"{api}/v1/attestations?digest=sha256:{out['rebuilt']}")
                    envs = [Envelope.from_dict(e) for e in found["attestations"]]
                    assert [e.digest() for e in envs] == [build["envelope_sha256"]]
                    assert envs[0].verify(pub)
                    st = parse_statement(envs[0].payload)
                    assert isinstance(st, RebuildStatement)
                    assert st.package == job_row.to_build_job().package
                    assert st.subject_named(out["name"]) is not None
                    # ...and names what was authenticated: the InRelease, signed by the
                    # repository's key (docs/formats.md, "What was authenticated")
                    release = st.resolved_dependencies[0]
                    assert release["uri"] == f"{base}/dists/stable/InRelease"
                    assert release["annotations"]["signer"] == job_row.release.signer  # type: ignore[union-attr]
                    assert re.fullmatch("[0-9A-F]{40}", release["annotations"]["signer"])
                    if out["verdict"] in ("unreproducible", "tampered"):
                        assert out["report_html_url"], out
                        async with session.get(out["report_html_url"]) as r:
                            assert r.status == 200
                            assert "sandbox" in r.headers["Content-Security-Policy"]
                            html = await r.read()
                        v = st.verdict_for(out["name"])
                        assert v is not None
                        assert v.report_sha256 == hashlib.sha256(html).hexdigest()
                if expected == "reproduced":
                    # ...and, when reproduced, by the published digest a verifier looks up.
                    for deb in pkg.debs:
                        found = await _get(
                            session, f"{api}/v1/attestations?digest=sha256:{deb.sha256}")
                        assert len(found["attestations"]) == 1, deb.name

            # The verifier's own quorum check (threshold 1, this node trusted) accepts
            # exactly the reproducible packages' published files.
            policy = Policy(threshold=1, rebuilders=(TrustedRebuilder(
                id=cfg.node.id, operator=cfg.node.operator, url=api, public_key=pub),))
            async with open_fetcher() as fetcher:
                for pkg in repo.packages:
                    for deb in pkg.debs:
                        artifact = Artifact(deb.sha256, read_deb_identity(repo.path / deb.path))
                        result = await check_online(artifact, policy, fetcher,
                                                    now=datetime.now(UTC))
                        assert result.accepted == (pkg.kind == "reproducible"), (
                            pkg.source, result)

            catch_up = await _get(session, f"{api}/v1/attestations?since=0&limit=1000")
            stored = [Envelope.from_dict(i["envelope"]).digest()
                      for i in catch_up["attestations"]]
            assert len(stored) == n_jobs
            await wait_for(lambda: _has_all(sub, stored), 30, "every attestation on MQTT")
        counts = collections.Counter(sub.received)
        assert set(counts) == set(stored)
        assert all(n == 1 for n in counts.values()), counts  # no crash here: exactly once
        await store.close()


async def _has_all(sub: Subscriber, digests: list[str]) -> bool:
    return set(digests) <= set(sub.received)


def _write_hostile_repo(root: Path, base_placeholder: str = "") -> None:
    """A repository whose Packages is valid but whose buildinfo is garbage, plus a second
    suite whose Packages is malformed and a third whose Release announces a huge index."""
    good = root / "dists" / "good" / "main" / "binary-amd64"
    good.mkdir(parents=True)
    packages = (b"Package: victim\nVersion: 1.0\nArchitecture: amd64\n"
                b"Filename: pool/victim_1.0_amd64.deb\nSHA256: " + b"5" * 64 + b"\n")
    xz = lzma.compress(packages)
    (good / "Packages.xz").write_bytes(xz)
    (root / "dists" / "good" / "Release").write_text(
        f"SHA256:\n {hashlib.sha256(xz).hexdigest()} {len(xz)} main/binary-amd64/Packages.xz\n")
    (root / "buildinfo").mkdir()
    (root / "buildinfo" / "victim_1.0_amd64.buildinfo").write_bytes(
        b"\x00\xff garbage \x00" * 1000)
    bad = root / "dists" / "bad" / "main" / "binary-amd64"
    bad.mkdir(parents=True)
    junk = b"Package: \x00\nVersion\n\n\n::::\n"
    (bad / "Packages").write_bytes(junk)
    (root / "dists" / "bad" / "Release").write_text(
        f"SHA256:\n {hashlib.sha256(junk).hexdigest()} {len(junk)} main/binary-amd64/Packages\n")
    huge = root / "dists" / "huge"
    huge.mkdir(parents=True)
    (huge / "Release").write_text(
        f"SHA256:\n {'6' * 64} {10 ** 12} main/binary-amd64/Packages\n")


async def test_node_survives_hostile_repository(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rebuilder")
    root = tmp_path / "www"
    _write_hostile_repo(root)
    async with serve_repository(root) as base, aiohttp.ClientSession() as session:
        cfg = await amake_node(tmp_path, "--no-mqtt", "--architectures", "amd64", "--trusted",
                               "--repository-url", base, "--suite", "good",
                               "--repository-name", "good",
                               "--repository-url", base, "--suite", "bad",
                               "--repository-name", "bad",
                               "--repository-url", base, "--suite", "huge",
                               "--repository-name", "huge", "--poll-interval", "1")
        store = await Store.open(cfg.node.db_path, readonly=True)
        async with running_node(cfg) as task:
            await wait_for(lambda: _finished(store, 1), 60, "the garbage job to finish")
            job_row = await store.find_job("victim", "1.0", "amd64")
            assert job_row is not None and job_row.state == "failed"
            build = await _get(session, f"{cfg.node.public_url}/v1/builds/{job_row.id}")
            assert build["verdict"] == "failed" and build["failure"]
            # The failure is signed and served (no subject: it never counts toward a quorum).
            items = (await _get(session, f"{cfg.node.public_url}/v1/attestations?since=0"))
            assert len(items["attestations"]) == 1
            st = parse_statement(Envelope.from_dict(items["attestations"][0]["envelope"]).payload)
            assert isinstance(st, RebuildStatement) and st.failed and not st.subjects
            # Further rounds of the bad suites keep being skipped; the daemon stays up.

            async def skipped_twice() -> bool:
                msgs = [r.getMessage() for r in caplog.records]
                return all(
                    sum(f"repository {n}: round skipped" in m for m in msgs) >= 2
                    for n in ("bad", "huge")
                )

            await wait_for(skipped_twice, 20, "two skipped rounds of each bad suite")
            assert not task.done()
            assert await _get(session, f"{cfg.node.public_url}/healthz") == {"status": "ok"}
            assert (await store.counts())["done"] + (await store.counts())["failed"] == 1
        await store.close()
