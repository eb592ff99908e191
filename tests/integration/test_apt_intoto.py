"""``apt-get install`` through Debian's apt-transport-in-toto, counting our rebuilders' links.

Three real nodes (host mode: real dpkg-buildpackage in real bubblewrap) rebuild the test
repository; ``verifier intoto-layout`` writes a 2-of-3 layout that a fresh OpenPGP key signs
(in-toto-sign); APT, with its own configuration (nothing from /etc/apt besides dpkg's status),
reaches the repository through ``intoto://``. A reproduced package installs; the tampered one is
refused by the transport; both are purged afterwards, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rebuilder.daemon import run_daemon
from rebuilder.db import Store
from rqdemo.testrepo import build_test_repository, serve_repository
from tests.integration._intoto import installer_key, require_intoto, sign_layout, stop_agent
from tests.support import wait_for
from tests.unit.rebuilder.node_helpers import amake_node
from verifier.cli import main as verifier_main
from verifier.keys import load_private_key, public_key_pem

pytestmark = pytest.mark.slow

GOOD, BAD = "rq-hello-c", "rq-tampered"


@contextlib.asynccontextmanager
async def _running(cfg: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_daemon(cfg, stop=stop, grace=5, install_signals=False))
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await task


async def _all_finished(store: Store, n: int) -> bool:
    c = await store.counts()
    return bool(c["done"] + c["failed"] >= n and c["queued"] == 0 and c["running"] == 0)


def _apt_config(root: Path, repo_url: str, rebuilders: list[str], layout: Path,
                fingerprint: str, gnupg: Path) -> Path:
    """APT's whole configuration for this test, in the list form the transport parses."""
    for d in ("apt.conf.d", "sources.list.d", "preferences.d", "lists/partial",
              "archives/partial", "cache"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text(
        f"deb [trusted=yes] {repo_url.replace('http://', 'intoto://')}/ stable main\n")
    rebuilder_lines = "".join(f'    "{u}";\n' for u in rebuilders)
    conf = root / "apt.conf"
    conf.write_text(
        f'Dir::Etc::SourceList "{root}/sources.list";\n'
        f'Dir::Etc::SourceParts "{root}/sources.list.d";\n'
        f'Dir::Etc::Parts "{root}/apt.conf.d";\n'  # not /etc/apt/apt.conf.d: no other hooks
        f'Dir::Etc::PreferencesParts "{root}/preferences.d";\n'
        f'Dir::State::Lists "{root}/lists";\n'
        f'Dir::Cache "{root}/cache";\n'
        f'Dir::Cache::Archives "{root}/archives";\n'
        'APT::Sandbox::User "root";\n'  # the method reads the layout and keyring from here
        'Acquire::Languages "none";\n'
        "APT::Intoto {\n"
        '  LogLevel {"20"};\n'
        f"  Rebuilders {{\n{rebuilder_lines}  }};\n"
        f'  Layout {{"{layout}"}};\n'
        f'  Keyids {{"{fingerprint}"}};\n'
        f'  GPGHomedir {{"{gnupg}"}};\n'
        "};\n"
    )
    return conf


def _apt(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "APT_CONFIG": str(conf),
           "DEBIAN_FRONTEND": "noninteractive", "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=120", *args],
                          env=env, capture_output=True, text=True, timeout=300)


def _installed(name: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True,
                       text=True, check=False)
    return r.returncode == 0 and "install ok installed" in r.stdout


@pytest.fixture
def purge_afterwards() -> Any:
    yield
    for name in (GOOD, BAD):
        if _installed(name):
            subprocess.run(["dpkg", "--purge", name], capture_output=True, check=False,
                           timeout=120)
    assert not _installed(GOOD) and not _installed(BAD), "cleanup left a test package installed"


async def test_apt_installs_reproduced_and_refuses_tampered(
    tmp_path: Path, purge_afterwards: None
) -> None:
    require_intoto()
    if os.geteuid() != 0:
        pytest.fail("this test installs packages with apt-get: run it as root (CI does)")
    assert not _installed(GOOD) and not _installed(BAD), "test packages installed beforehand"
    repo = await asyncio.to_thread(build_test_repository, tmp_path / "repo")
    n_jobs = len(repo.packages)
    async with serve_repository(repo.path) as base, contextlib.AsyncExitStack() as stack:
        cfgs = [await amake_node(tmp_path / f"n{i}", "--no-mqtt", "--architectures",
                                 ",".join(repo.architectures), node_id=f"rb-{i}", repo_url=base)
                for i in range(3)]
        stores = [await Store.open(c.node.db_path, readonly=True) for c in cfgs]
        for s in stores:
            stack.push_async_callback(s.close)
        for c in cfgs:
            await stack.enter_async_context(_running(c))
        for s in stores:
            await wait_for(lambda s=s: _all_finished(s, n_jobs), 900,  # type: ignore[misc]
                           "every node finished every job", interval=1)

        policy = tmp_path / "policy.toml"
        policy.write_text("threshold = 2\n" + "".join(
            f'\n[[rebuilder]]\nid = "{c.node.id}"\noperator = "op-{i}"\n'
            f'url = "{c.node.public_url}"\npublic_key = """'
            f'{public_key_pem(load_private_key(c.node.signing_key).public_key())}"""\n'
            for i, c in enumerate(cfgs)))
        layout = tmp_path / "root.layout"
        assert verifier_main(["intoto-layout", "--policy", str(policy), "--out",
                              str(layout)]) == 0
        gnupg = tmp_path / "gnupg"
        stack.callback(stop_agent, gnupg)
        fpr = await asyncio.to_thread(installer_key, gnupg)
        await asyncio.to_thread(sign_layout, layout, fpr, gnupg)
        conf = _apt_config(tmp_path / "apt", base, [c.node.public_url for c in cfgs],
                           layout, fpr, gnupg)

        r = await asyncio.to_thread(_apt, conf, "update")
        assert r.returncode == 0, r.stdout + r.stderr
        r = await asyncio.to_thread(_apt, conf, "install", "--no-install-recommends", GOOD)
        assert r.returncode == 0, r.stdout + r.stderr
        assert _installed(GOOD)
        assert "In-toto verification for" in r.stderr and "passed" in r.stderr, r.stderr

        r = await asyncio.to_thread(_apt, conf, "install", "--no-install-recommends", BAD)
        assert r.returncode != 0, r.stdout + r.stderr
        assert not _installed(BAD)
        assert f"In-toto verification for '{tmp_path}/apt/archives/partial/{BAD}_" in r.stderr
        assert "requires '2' link metadata file(s), found '0'" in r.stderr, r.stderr
