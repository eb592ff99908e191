"""`verifier check` of 300 .debs: through a coordinator (batched) and against 5 rebuilders.

What an upgrade does: the real ``verifier check`` command, run as a user runs it, on 300 made-up
but well-formed .debs, each reproduced by 5 rebuilders (genuine signed attestations in real node
stores behind the real node API) and known to a real coordinator that caught up from them. The
servers run in their own process, so the command's time is its own. Baseline, same run: the same
command on one .deb through the coordinator (start-up, imports, one round trip). Targets: under
1 s through the coordinator, under 3 s directly, on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.integration._debs import make_deb
from tests.support import free_port, port_open, wait_until
from verifier.keys import generate_private_key, public_key_pem, save_private_key

DEBS = 300
REBUILDERS = 5
THRESHOLD = 3


def _prepare(d: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    """The .debs, and per rebuilder its key, port and node directory with a filled store."""
    from rebuilder.config import parse_config
    from rebuilder.db import NewAttestation, Store
    from verifier.dsse import sign
    from verifier.statement import Digest, OutputVerdict, PackageIdentity, RebuildStatement, Subject

    debs = []
    for i in range(DEBS):
        path = d / "debs" / f"pkg{i:03d}_1.0-1_amd64.deb"
        path.parent.mkdir(exist_ok=True)
        make_deb(path, f"pkg{i:03d}", "1.0-1", "amd64")
        debs.append(path)
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in debs]
    t = datetime.now(UTC).replace(microsecond=0)
    nodes = []
    for r in range(REBUILDERS):
        nd = d / f"rb-{r}"
        nd.mkdir()
        key = generate_private_key()
        save_private_key(key, nd / "signing.pem")
        port = free_port()
        items = []
        for i, digest in enumerate(digests):
            name = f"pkg{i:03d}"
            deb = f"{name}_1.0-1_amd64.deb"
            st = RebuildStatement(
                package=PackageIdentity("debian", name, "1.0-1", "amd64"),
                subjects=(Subject(deb, Digest(digest)),),
                builder_id=f"http://127.0.0.1:{port}/v1/node", started_on=t, finished_on=t,
                invocation_id=f"rb-{r}/{i}/1", buildinfo_uri=f"http://h/{name}.buildinfo",
                buildinfo_sha256=Digest(digest), repository="http://h stable",
                verdicts=(OutputVerdict(deb, "reproduced", rebuilt=Digest(digest),
                                        buildinfo=Digest(digest), repository=Digest(digest)),),
            )
            env = sign(st.to_bytes(), key)
            items.append(NewAttestation(envelope_sha256=env.digest(), envelope=env.to_bytes(),
                                        kind="rebuild", source=name, version="1.0-1",
                                        arch="amd64", subjects=((deb, digest),)))
        cfg = parse_config({"node": {"id": f"rb-{r}", "operator": f"op-{r}",
                                     "listen": f"127.0.0.1:{port}", "signing_key": "signing.pem",
                                     "public_url": f"http://127.0.0.1:{port}"}}, nd)

        async def fill(cfg: Any = cfg, items: list[Any] = items) -> None:
            store = await Store.open(cfg.node.db_path)
            await store.add_attestations_bulk(items)
            await store.close()

        asyncio.run(fill())
        nodes.append({"id": f"rb-{r}", "dir": str(nd), "port": port,
                      "pem": public_key_pem(key.public_key())})
    return debs, nodes


def _serve(d: str, nodes: list[dict[str, Any]], coord_port: int) -> None:
    """Every node API and the coordinator, in this (separate) process, until killed."""
    from aiohttp import web

    from coordinator.app import CATCHUP
    from coordinator.app import create_app as coordinator_app
    from coordinator.config import load_config
    from rebuilder.api import create_app as node_app
    from rebuilder.config import parse_config

    async def run() -> None:
        runners = []
        for n in nodes:
            cfg = parse_config({"node": {"id": n["id"], "operator": "x",
                                         "listen": f"127.0.0.1:{n['port']}",
                                         "signing_key": "signing.pem",
                                         "public_url": f"http://127.0.0.1:{n['port']}"}},
                               Path(n["dir"]))
            runner = web.AppRunner(node_app(cfg), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", n["port"]).start()
            runners.append(runner)
        app = coordinator_app(load_config(Path(d) / "coordinator.toml"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", coord_port).start()
        await app[CATCHUP].round()
        (Path(d) / "ready").write_text("ok")
        await asyncio.Event().wait()

    asyncio.run(run())


def _timed(argv: list[str], runs: int) -> tuple[float, float]:
    """Fastest of ``runs`` (wall, CPU) times of the command, which must exit 0 (all accepted).

    CPU is the command's own user + system time: on a machine others share, it moves less
    than the wall time does.
    """
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:6])}... exited {r.returncode}:"
                               f" {(r.stdout + r.stderr)[-1500:]}")
    return min(walls), min(cpus)


def main(quick: bool = False) -> dict[str, object]:
    runs = 2 if quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        debs, nodes = _prepare(d)
        policy = d / "policy.toml"
        policy.write_text(f"threshold = {THRESHOLD}\n" + "".join(
            f'\n[[rebuilder]]\nid = "{n["id"]}"\noperator = "op-{i}"\n'
            f'url = "http://127.0.0.1:{n["port"]}"\npublic_key = """{n["pem"]}"""\n'
            for i, n in enumerate(nodes)))
        coord_port = free_port()
        (d / "coordinator.toml").write_text(
            f'[coordinator]\nlisten = "127.0.0.1:{coord_port}"\n'
            f'public_url = "http://127.0.0.1:{coord_port}"\n'
            f'database = "{d / "coordinator.db"}"\ncatchup_interval = 3600\n'
            "[mqtt]\nenabled = false\n" + "".join(
                f'\n[[rebuilder]]\nid = "{n["id"]}"\noperator = "op-{i}"\n'
                f'url = "http://127.0.0.1:{n["port"]}"\npublic_key = """{n["pem"]}"""\n'
                for i, n in enumerate(nodes)))
        server = mp.get_context("spawn").Process(target=_serve, args=(tmp, nodes, coord_port),
                                                 daemon=True)
        server.start()
        try:
            wait_until(lambda: (d / "ready").exists() or not server.is_alive(), 120,
                       "the servers to start and the coordinator to catch up")
            if not server.is_alive():
                raise RuntimeError("the server process died")
            assert all(port_open(n["port"]) for n in nodes) and port_open(coord_port)
            # As an installed package is: byte-compiled (pip and dpkg compile at install time;
            # an editable checkout under PYTHONDONTWRITEBYTECODE=1 would compile every run).
            import verifier as verifier_package

            subprocess.run([sys.executable, "-m", "compileall", "-q",
                            str(Path(verifier_package.__file__).parent)],
                           check=True, capture_output=True)
            load_before = os.getloadavg()[0]
            verifier = str(Path(sys.executable).parent / "verifier")
            base = [verifier, "check", "--policy", str(policy)]
            coord = ["--coordinator", f"http://127.0.0.1:{coord_port}"]
            one = _timed([*base, *coord, str(debs[0])], runs)
            via_coordinator = _timed([*base, *coord, *map(str, debs)], runs)
            direct = _timed([*base, *map(str, debs)], runs)
            load_after = os.getloadavg()[0]
        finally:
            server.kill()
            server.join(10)
    return {
        "debs": DEBS,
        "rebuilders": REBUILDERS,
        "one_deb_via_coordinator_s": round(one[0], 3),
        "via_coordinator_s": round(via_coordinator[0], 3),
        "directly_s": round(direct[0], 3),
        "cpu_one_deb_s": round(one[1], 3),
        "cpu_via_coordinator_s": round(via_coordinator[1], 3),
        "cpu_directly_s": round(direct[1], 3),
        "via_coordinator_ratio_to_one_deb": round(via_coordinator[0] / one[0], 2),
        "directly_ratio_to_one_deb": round(direct[0] / one[0], 2),
        "target_via_coordinator_s": 1.0,
        "target_directly_s": 3.0,
        "met": via_coordinator[0] < 1.0 and direct[0] < 3.0,
        "runs_each": runs,
        "load_average_1min": f"{load_before:.1f} before, {load_after:.1f} after",
        "reported": f"fastest of {runs} runs of each command",
    }


if __name__ == "__main__":
    print(main(quick=True))
