"""Real signed attestations for the coordinator's tests and benchmarks, and a stand-in node.

Every envelope made here is a genuine Ed25519 DSSE envelope over a genuine statement: the
coordinator under test cannot tell it from a rebuilder's. ``StandInNode`` serves them in the
node API's shapes (docs/api.md) from a real aiohttp server, for tests that need a rebuilder
without running builds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from tests.support import free_port
from verifier.dsse import Envelope, sign
from verifier.keys import Ed25519PrivateKey, generate_private_key, keyid, public_key_pem
from verifier.statement import (
    OutputVerdict,
    PackageIdentity,
    RebuildStatement,
    RevocationStatement,
    Subject,
)
from verifier.verdicts import classify

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Signer:
    id: str
    operator: str = ""
    key: Ed25519PrivateKey = field(default_factory=generate_private_key)
    url: str = "http://127.0.0.1:1"

    def __post_init__(self) -> None:
        self.operator = self.operator or f"{self.id}-operator"

    @property
    def public_pem(self) -> str:
        return public_key_pem(self.key.public_key())

    def rebuild(
        self,
        source: str,
        version: str,
        outputs: dict[str, str],
        upstream: dict[str, str] | None = None,
        arch: str = "amd64",
        invocation: str = "build-1",
        report_url: str | None = None,
        buildinfo: dict[str, str] | None = None,
        suite: str = "stable",
    ) -> Envelope:
        """An attestation: ``outputs`` maps artifact name -> the digest this rebuilder got;
        ``upstream`` what the repository serves and ``buildinfo`` what the buildinfo declares
        (both default to ``outputs``, then ``buildinfo`` to ``upstream``)."""
        upstream = upstream if upstream is not None else outputs
        listed = buildinfo if buildinfo is not None else upstream
        verdicts = []
        for name, digest in outputs.items():
            ok = upstream.get(name) == digest
            verdicts.append(
                OutputVerdict(
                    name=name,
                    verdict=classify(digest, listed.get(name), upstream.get(name, "")),
                    rebuilt=digest,  # type: ignore[arg-type]
                    buildinfo=listed.get(name),  # type: ignore[arg-type]
                    repository=upstream.get(name),  # type: ignore[arg-type]
                    report_url=None if ok else report_url,
                )
            )
        st = RebuildStatement(
            package=PackageIdentity("debian", source, version, arch),
            subjects=tuple(Subject(n, d) for n, d in outputs.items()),  # type: ignore[arg-type]
            builder_id=f"https://rebuilders.example/{self.id}",
            started_on=T0,
            finished_on=T0,
            invocation_id=invocation,
            buildinfo_uri=f"http://repo.example/buildinfo/{source}_{version}_{arch}.buildinfo",
            buildinfo_sha256=sha(f"{source}{version}"),  # type: ignore[arg-type]
            repository=f"http://repo.example/debian {suite}",
            verdicts=tuple(verdicts),
            builder_version="0.1.0",
        )
        return sign(st.to_bytes(), self.key)

    def failure(self, source: str, version: str, reason: str = "build failed") -> Envelope:
        st = RebuildStatement(
            package=PackageIdentity("debian", source, version, "amd64"),
            subjects=(),
            builder_id=f"https://rebuilders.example/{self.id}",
            started_on=T0,
            finished_on=T0,
            invocation_id="build-f",
            buildinfo_uri="http://repo.example/x.buildinfo",
            buildinfo_sha256=sha("x"),  # type: ignore[arg-type]
            repository="http://repo.example/debian stable",
            failure=reason,
        )
        return sign(st.to_bytes(), self.key)

    def revoke(
        self, envelope: Envelope, reason: str = "builder was compromised", legacy: bool = False
    ) -> Envelope:
        """A revocation of ``envelope`` (v2, by payload digest; ``legacy``: v1, by envelope)."""
        st = RevocationStatement(
            revoked=envelope.digest() if legacy else envelope.payload_digest(),  # type: ignore[arg-type]
            reason=reason,
            builder_id=f"https://rebuilders.example/{self.id}",
            revoked_on=T0,
            legacy=legacy,
        )
        return sign(st.to_bytes(), self.key)

    def config_entry(self, directory: Path) -> str:
        """A [[rebuilder]] TOML table for this signer, its public key in a file."""
        key_file = directory / f"{self.id}.pub"
        key_file.write_text(self.public_pem)
        return (
            f'[[rebuilder]]\nid = "{self.id}"\noperator = "{self.operator}"\n'
            f'url = "{self.url}"\npublic_key_file = "{key_file}"\n'
        )


def coordinator_toml(
    directory: Path,
    signers: list[Signer],
    mqtt_port: int | None,
    listen_port: int,
    catchup_interval: float = 60,
    online_after: float = 120,
) -> Path:
    parts = [
        "[coordinator]\n"
        f'listen = "127.0.0.1:{listen_port}"\n'
        f'public_url = "http://127.0.0.1:{listen_port}"\n'
        f'database = "{directory / "coordinator.db"}"\n'
        f"catchup_interval = {catchup_interval}\n"
        f"online_after = {online_after}\n",
        "[mqtt]\n"
        + (f"enabled = true\nport = {mqtt_port}\n" if mqtt_port else "enabled = false\n"),
    ]
    parts += [s.config_entry(directory) for s in signers]
    path = directory / "coordinator.toml"
    path.write_text("\n".join(parts))
    return path


@dataclass
class StandInNode:
    """A real aiohttp server answering the node API's catch-up, report and log requests."""

    signer: Signer
    envelopes: list[Envelope] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)  # id -> HTML
    logs: dict[str, str] = field(default_factory=dict)
    junk: bytes | None = None  # when set, /v1/attestations answers this instead
    log: dict[str, str] | None = None  # the transparency log /v1/node describes, if any
    requests: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/attestations", self._attestations)
        app.router.add_get("/v1/reports/{id}.html", self._report)
        app.router.add_get("/v1/builds/{id}/log", self._log)
        app.router.add_get("/v1/node", self._node)
        return app

    async def _attestations(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.junk is not None:
            return web.Response(body=self.junk, content_type="application/json")
        since = int(request.query.get("since", "0"))
        limit = min(int(request.query.get("limit", "100")), 1000)
        page = self.envelopes[since : since + limit]
        nxt = since + len(page)
        return web.json_response(
            {
                "attestations": [
                    {"cursor": str(since + i + 1), "envelope": json.loads(e.to_bytes())}
                    for i, e in enumerate(page)
                ],
                "next": str(nxt),
                "more": nxt < len(self.envelopes),
            }
        )

    async def _report(self, request: web.Request) -> web.Response:
        html = self.reports.get(request.match_info["id"])
        if html is None:
            raise web.HTTPNotFound()
        return web.Response(
            text=html,
            content_type="text/html",
            headers={
                "Content-Security-Policy": "sandbox; default-src 'none'; "
                "style-src 'unsafe-inline'; img-src data:"
            },
        )

    async def _log(self, request: web.Request) -> web.Response:
        text = self.logs.get(request.match_info["id"])
        if text is None:
            raise web.HTTPNotFound()
        return web.Response(text=text)

    async def _node(self, request: web.Request) -> web.Response:
        doc: dict[str, object] = {
            "id": self.signer.id, "operator": self.signer.operator,
            "public_key": self.signer.public_pem,
            "keyid": keyid(self.signer.key.public_key()),
        }
        if self.log is not None:
            doc["log"] = self.log
        return web.json_response(doc)


@asynccontextmanager
async def serving(app: web.Application, port: int | None = None) -> AsyncIterator[str]:
    """Run ``app`` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
