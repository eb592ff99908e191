"""Helpers for the rebuilder node's unit tests: a node directory made by ``rebuilder init``
(with its store open: ``NodeStore``), outcome values (pure data) and a running API server on a
free port."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from rebuilder.cli import main as cli_main
from rebuilder.config import Config, load_config
from rebuilder.db import Store
from rebuilder.outcome import BuildJob, OutputResult, RebuildOutcome
from rebuilder.queue import Builder, JobRunner
from tests.support import free_port
from verifier.keys import Ed25519PrivateKey, load_private_key
from verifier.statement import Digest


def sha(text: str) -> Digest:
    return Digest(hashlib.sha256(text.encode()).hexdigest())


def make_node(tmp_path: Path, *extra: str, node_id: str = "rb-test", mqtt_port: int = 1883,
              repo_url: str | None = None, signed_by: Path | None = None) -> Config:
    port = free_port()
    args = ["init", "--dir", str(tmp_path / "node"), "--id", node_id, "--operator", "op-test",
            "--public-url", f"http://127.0.0.1:{port}", "--listen", f"127.0.0.1:{port}",
            "--mqtt-port", str(mqtt_port), *extra]
    if repo_url:
        args += ["--repository-url", repo_url, "--suite", "stable", "--poll-interval", "1"]
        # a test repository's keyring, or an unsigned repository made by the test itself
        args += ["--signed-by", str(signed_by)] if signed_by else ["--trusted"]
    assert cli_main(args) == 0
    return load_config(tmp_path / "node" / "config.toml")


def job(source: str = "hello", version: str = "1.0-1", arch: str = "amd64",
        published: dict[str, tuple[Digest, str]] | None = None) -> BuildJob:
    return BuildJob(
        source=source, version=version, architecture=arch, repository="local",
        buildinfo_url=f"http://127.0.0.1:1/buildinfo/{source}_{version}_{arch}.buildinfo",
        published=published if published is not None else {
            f"{source}_{version}_{arch}.deb": (sha(f"{source}{version}"), "http://x/pool/a.deb")
        },
    )


def reproduced(j: BuildJob) -> RebuildOutcome:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    outputs = tuple(
        OutputResult(name=name, verdict="reproduced", rebuilt=d, buildinfo=d, repository=d)
        for name, (d, _) in sorted(j.published.items())
    )
    return RebuildOutcome(job=j, started_on=t, finished_on=t + timedelta(seconds=3),
                          buildinfo_sha256=sha("buildinfo"), outputs=outputs,
                          internal_parameters={"backend": "bwrap"},
                          resolved_dependencies=({"uri": "pkg:deb/debian/gcc@12"},))


def mismatch(j: BuildJob, report_dir: Path) -> RebuildOutcome:
    base = reproduced(j)
    report_dir.mkdir(parents=True, exist_ok=True)
    html = report_dir / "r.html"
    html.write_text("<html><script>alert(1)</script>diff</html>")
    txt = report_dir / "r.txt"
    txt.write_text("--- a\n+++ b\n")
    outs = tuple(replace(o, verdict="unreproducible", rebuilt=sha("other" + o.name),
                         report_html=html, report_txt=txt) for o in base.outputs)
    log = report_dir / "build.log"
    log.write_text("building...\n")
    return replace(base, outputs=outs, log_path=log)


def failed(j: BuildJob) -> RebuildOutcome:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return RebuildOutcome(job=j, started_on=t, finished_on=t, buildinfo_sha256=None,
                          failure="HTTP 404 for the buildinfo", failure_stage="fetch")


@contextlib.asynccontextmanager
async def serve(app: web.Application, port: int) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def amake_node(tmp_path: Path, *extra: str, **kw: object) -> Config:
    """``make_node`` from async code (``rebuilder init`` runs its own event loop)."""
    import asyncio

    return await asyncio.to_thread(lambda: make_node(tmp_path, *extra, **kw))  # type: ignore[arg-type]


@dataclass
class NodeStore:
    """A node made by ``rebuilder init`` with its state store open (the ``node_store``
    fixture of tests/unit/rebuilder/conftest.py, which closes the store)."""

    config: Config
    store: Store
    key: Ed25519PrivateKey

    def runner(self, builder: Builder, **kw: Any) -> JobRunner:
        return JobRunner(self.config, self.store, self.key, builder, **kw)


@contextlib.asynccontextmanager
async def open_node_store(tmp_path: Path, *extra: str) -> AsyncIterator[NodeStore]:
    config = await amake_node(tmp_path, *extra)
    store = await Store.open(config.node.db_path)
    try:
        yield NodeStore(config, store, load_private_key(config.node.signing_key))
    finally:
        await store.close()


class Subscriber:
    """A test MQTT subscriber counting attestations by envelope sha256 (real aiomqtt client)."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.host, self.port, self.topic = host, port, topic
        self.received: list[str] = []
        self.payloads: dict[str, bytes] = {}
        self._task: object = None

    async def __aenter__(self) -> Subscriber:
        import asyncio

        import aiomqtt

        self._client = aiomqtt.Client(self.host, self.port,
                                      protocol=aiomqtt.ProtocolVersion.V5)
        await self._client.__aenter__()
        await self._client.subscribe(self.topic, qos=1)
        ready = asyncio.Event()

        async def collect() -> None:
            ready.set()
            async for message in self._client.messages:
                payload = message.payload
                assert isinstance(payload, bytes | bytearray)
                digest = hashlib.sha256(bytes(payload)).hexdigest()
                self.received.append(digest)
                self.payloads[digest] = bytes(payload)

        self._task = asyncio.create_task(collect())
        await ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        assert isinstance(self._task, asyncio.Task)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._client.__aexit__(None, None, None)
