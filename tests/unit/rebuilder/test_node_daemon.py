"""The daemon wiring (watcher -> workers -> store -> API) with outcome values standing in for the
build pipeline, a real repository server and real SQLite; and the schema migration path."""

from __future__ import annotations

import asyncio
import configparser
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from rebuilder._schema import MIGRATIONS, SCHEMA_VERSION, _split_sql
from rebuilder.daemon import run_daemon
from rebuilder.db import Store
from tests.support import free_port, wait_for
from tests.unit.rebuilder.node_helpers import amake_node, reproduced, serve
from tests.unit.rebuilder.test_node_indexes import PACKAGES
from tests.unit.rebuilder.test_node_watch import write_repo


def _fake_factory(config: Any, session: aiohttp.ClientSession) -> Any:
    async def builder(job: Any, work: Path) -> Any:
        return reproduced(job)

    return builder


async def test_daemon_queues_builds_serves_and_stops(tmp_path: Path) -> None:
    root = tmp_path / "www"
    write_repo(root, PACKAGES)
    app = web.Application()
    app.router.add_static("/", root)
    async with serve(app, free_port()) as base:
        cfg = await amake_node(tmp_path, "--no-mqtt", "--architectures", "amd64,all",
                               repo_url=f"{base}/debian")
        stop = asyncio.Event()
        task = asyncio.create_task(run_daemon(cfg, stop=stop, grace=1, install_signals=False,
                                              builder_factory=_fake_factory))
        store = await Store.open(cfg.node.db_path, readonly=True)

        async def all_done() -> bool:
            c = await store.counts()
            return bool(c["done"] == 3 and c["queued"] == 0)

        await wait_for(all_done, 20, "three jobs done")
        async with aiohttp.ClientSession() as s, \
                s.get(f"{cfg.node.public_url}/v1/attestations?since=0") as r:
            assert len((await r.json())["attestations"]) == 3
        stop.set()
        async with asyncio.timeout(20):
            await task
        await store.close()


async def test_v1_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    for statement in _split_sql(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("INSERT INTO jobs (repository, source, version, arch, buildinfo_url, published,"
                 " state, queued_at) VALUES ('r', 's', '1', 'amd64', 'http://x', '{}', 'queued',"
                 " 'now')")
    conn.commit()
    conn.close()
    with_old = await Store.open(path)
    assert await with_old.schema_version() == SCHEMA_VERSION
    job = await with_old.job(1)
    assert job is not None and job.dsc_url is None and job.source == "s"
    await with_old.close()


def test_systemd_unit_is_hardened() -> None:
    unit = Path(__file__).parents[3] / "rebuilder" / "systemd" / "repro-quorum-rebuilder.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(unit.read_text())
    svc = parser["Service"]
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    assert svc["ProtectHome"] == "yes" and svc["PrivateTmp"] == "yes"
    assert svc["ReadWritePaths"] == "/var/lib/repro-quorum/rebuilder"
    assert svc["User"] != "root"
    # The operator guide's and the Ansible role's layout.
    assert svc["User"] == "rq-rebuilder"
    assert svc["ExecStart"].startswith("/opt/repro-quorum/venv/bin/rebuilder run --config "
                                       "/etc/repro-quorum/rebuilder/config.toml")
    assert svc["KillSignal"] == "SIGTERM"
    # bubblewrap needs namespaces and netlink: these must not be restricted.
    assert "RestrictNamespaces" not in svc
    # ... and a /proc it may mount over: these would make every build fail.
    for breaks_bwrap in ("ProtectKernelTunables", "ProtectKernelLogs", "ProtectProc"):
        assert breaks_bwrap not in svc, breaks_bwrap
    assert "AF_NETLINK" in svc["RestrictAddressFamilies"]
    # an unprivileged bwrap cannot mount the build's /proc where parts of /proc are hidden
    assert "ProtectKernelTunables" not in svc and "ProtectKernelLogs" not in svc
    # per-build cgroups below the service's own: delegated, and writable
    assert svc["Delegate"] == "yes" and "ProtectControlGroups" not in svc
