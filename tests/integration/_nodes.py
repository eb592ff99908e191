"""Real node APIs (rebuilder.api over real stores) holding signed reproductions of given .debs,
for tests of the installer's side that need genuine rebuilders without running rebuilds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from rebuilder.api import create_app
from rebuilder.config import parse_config
from rebuilder.db import NewAttestation, Store
from tests.support import free_port
from verifier.debian import read_deb_identity, sha256_file
from verifier.dsse import sign
from verifier.keys import generate_private_key, public_key_pem, save_private_key
from verifier.statement import Digest, OutputVerdict, PackageIdentity, RebuildStatement, Subject

__all__ = ["policy_toml", "real_nodes"]


def policy_toml(nodes: list[tuple[str, str, str]], threshold: int) -> str:
    """A verifier policy trusting ``nodes`` (id, url, public key PEM), each its own operator."""
    return f"threshold = {threshold}\n" + "".join(
        f'\n[[rebuilder]]\nid = "{rid}"\noperator = "op-{rid}"\nurl = "{url}"\n'
        f'public_key = """{pem}"""\n' for rid, url, pem in nodes)


@asynccontextmanager
async def real_nodes(tmp_path: Path, debs: list[Path], n: int,
                     names: Sequence[tuple[str, str]] = ()) -> AsyncIterator[
        tuple[list[tuple[str, str, str]], list[list[str]]]]:
    """``n`` real node APIs whose stores hold a signed reproduction of every .deb; yields
    (id, url, public key PEM) per node and the request paths each node saw. Node ``r`` is
    ``names[r]`` (id, operator) if given, else ``rb-<r>`` of ``op-<r>``; its directory is
    ``tmp_path/<id>``, its key ``keys/signing.pem`` there (as ``rebuilder init`` writes it)."""
    t = datetime.now(UTC).replace(microsecond=0)
    nodes, seen, runners = [], [], []
    try:
        for r in range(n):
            rid, operator = names[r] if names else (f"rb-{r}", f"op-{r}")
            nd = tmp_path / rid
            key = generate_private_key()
            save_private_key(key, nd / "keys" / "signing.pem")
            port = free_port()
            cfg = parse_config({"node": {"id": rid, "operator": operator,
                                         "listen": f"127.0.0.1:{port}",
                                         "signing_key": "keys/signing.pem",
                                         "public_url": f"http://127.0.0.1:{port}"}}, nd)
            store = await Store.open(cfg.node.db_path)
            for i, deb in enumerate(debs):
                ident, digest = read_deb_identity(deb), sha256_file(deb)
                name = ident.subject_name
                st = RebuildStatement(
                    package=PackageIdentity("debian", ident.source, ident.source_version,
                                            ident.architecture),
                    subjects=(Subject(name, digest),),
                    builder_id=f"{cfg.node.public_url}/v1/node", started_on=t, finished_on=t,
                    invocation_id=f"{rid}/{i}", buildinfo_uri="http://h/x.buildinfo",
                    buildinfo_sha256=Digest(digest), repository="http://h stable",
                    verdicts=(OutputVerdict(name, "reproduced", rebuilt=digest,
                                            buildinfo=digest, repository=digest),))
                env = sign(st.to_bytes(), key)
                await store.add_attestation(NewAttestation(
                    envelope_sha256=env.digest(), envelope=env.to_bytes(), kind="rebuild",
                    source=ident.source, version=ident.source_version,
                    arch=ident.architecture, subjects=((name, digest),)))
            paths: list[str] = []

            @web.middleware
            async def record(request: web.Request, handler: object,
                             paths: list[str] = paths) -> web.StreamResponse:
                paths.append(f"{request.method} {request.path}")
                return await handler(request)  # type: ignore[operator, no-any-return]

            app = create_app(cfg, store=store)
            app.middlewares.insert(0, record)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append((runner, store))
            nodes.append((rid, cfg.node.public_url, public_key_pem(key.public_key())))
            seen.append(paths)
        yield nodes, seen
    finally:
        for runner, store in runners:
            await runner.cleanup()
            await store.close()
