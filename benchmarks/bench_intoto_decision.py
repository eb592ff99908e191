"""A 2-of-3 decision through in-toto's verifylib (apt-transport-in-toto's path) vs verifier's.

Three real nodes (real store, JobRunner and API) reproduce one package; the same nodes serve both
their DSSE envelopes and their in-toto links. in-toto's side is exactly what the transport runs
after a download: ``in_toto_verify(layout, layout_keys)`` in a directory holding the links and
the .deb, with bookworm's in-toto 1.3.1 under the system Python, the layout signed by a fresh
OpenPGP key (the key exported once, as the transport exports it once per package); it includes
running the layout's inspection command. verifier's side is ``decide`` over the same nodes'
envelopes. Both are timed per decision, in the same run, in CPU seconds of the deciding process
and in wall time (which includes the inspection's child process). Reported as the ratio
in-toto / verifier (no target: the issue asks for the figure).
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from rebuilder.api import create_app
from rebuilder.db import Store
from rebuilder.queue import JobRunner
from tests.integration._intoto import (
    SYSTEM_PYTHON,
    installer_key,
    link_file_name,
    require_intoto,
    sign_layout,
    stop_agent,
)
from tests.unit.rebuilder.node_helpers import amake_node, job, reproduced, serve
from verifier.cli import main as verifier_main
from verifier.debian import read_deb_identity, sha256_file
from verifier.decision import Artifact, decide
from verifier.keys import load_private_key, public_key_pem
from verifier.policy import Policy
from verifier.statement import Digest

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors"
DEB = VECTORS / "debs" / "hello_1.0-1_amd64.deb"

_TIMED = """
import sys, time
import securesystemslib.gpg.functions
import in_toto.verifylib
from in_toto.models.metadata import Metablock
layout = Metablock.load(sys.argv[1])
keys = securesystemslib.gpg.functions.export_pubkeys([sys.argv[2]], homedir=sys.argv[3])
n = int(sys.argv[4])
in_toto.verifylib.in_toto_verify(layout, keys)  # warm up, and fail loudly if it does not pass
t0, w0 = time.process_time(), time.perf_counter()
for _ in range(n):
    in_toto.verifylib.in_toto_verify(layout, keys)
print(repr(((time.process_time() - t0) / n, (time.perf_counter() - w0) / n)))
"""


async def _nodes(tmp: Path) -> tuple[list[Any], dict[str, list[bytes]], list[dict[str, Any]]]:
    digest = Digest(sha256_file(DEB))
    configs, envelopes, links = [], {}, []
    for i in range(3):
        cfg = await amake_node(tmp / f"n{i}", node_id=f"rb-{i}")
        store = await Store.open(cfg.node.db_path)

        async def builder(j: Any, work: Path) -> Any:
            return reproduced(j)

        await store.add_jobs([job("hello", "1.0-1", published={DEB.name: (digest, "http://x")})])
        runner = JobRunner(cfg, store, load_private_key(cfg.node.signing_key), builder)
        while (claimed := await store.claim_job()) is not None:
            await runner.run(claimed)
        async with serve(create_app(cfg), cfg.node.listen_port) as base, \
                aiohttp.ClientSession() as session:
            async with session.get(f"{base}/sources/hello/1.0-1/metadata") as r:
                links.append(await r.json())
            async with session.get(f"{base}/v1/attestations?digest=sha256:{digest}") as r:
                body = await r.json()
        envelopes[cfg.node.id] = [json.dumps(e).encode() for e in body["attestations"]]
        configs.append(cfg)
        await store.close()
    return configs, envelopes, links


def main(quick: bool = False) -> dict[str, object]:
    require_intoto_or_raise()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        configs, envelopes, links = asyncio.run(_nodes(tmp))
        policy_path = tmp / "policy.toml"
        pems = [public_key_pem(load_private_key(c.node.signing_key).public_key())
                for c in configs]
        policy_path.write_text("threshold = 2\n" + "".join(
            f'\n[[rebuilder]]\nid = "{c.node.id}"\noperator = "op-{i}"\n'
            f'url = "{c.node.public_url}"\npublic_key = """{pem}"""\n'
            for i, (c, pem) in enumerate(zip(configs, pems, strict=True))))
        policy = Policy.load(policy_path)
        layout = tmp / "root.layout"
        assert verifier_main(["intoto-layout", "--policy", str(policy_path), "--out",
                              str(layout)]) == 0
        home = tmp / "gnupg"
        fpr = installer_key(home)
        sign_layout(layout, fpr, home)
        stop_agent(home)
        work = tmp / "verify"
        work.mkdir()
        for link in links:
            (work / link_file_name(link)).write_text(json.dumps(link))
        (work / DEB.name).write_bytes(DEB.read_bytes())

        n = 20 if quick else 100
        r = subprocess.run([SYSTEM_PYTHON, "-c", _TIMED, str(layout), fpr, str(home), str(n)],
                           cwd=work, capture_output=True, text=True, timeout=600, check=False,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
        if r.returncode != 0:
            raise RuntimeError(f"in-toto verification failed: {r.stderr[-2000:]}")
        stop_agent(home)  # export_pubkeys may have started it again
        intoto_s, intoto_wall = ast.literal_eval(r.stdout.strip().splitlines()[-1])

        artifact = Artifact(Digest(hashlib.sha256(DEB.read_bytes()).hexdigest()),
                            read_deb_identity(DEB))
        now = datetime.now(UTC)
        result = decide(artifact, policy, envelopes, now)
        assert result.accepted, result.reasons
        m = 200 if quick else 2000
        t0, w0 = time.process_time(), time.perf_counter()
        for _ in range(m):
            decide(artifact, policy, envelopes, now)
        verifier_s = (time.process_time() - t0) / m
        verifier_wall = (time.perf_counter() - w0) / m
    return {
        "intoto_verifylib_ms": round(intoto_s * 1e3, 3),
        "verifier_decide_ms": round(verifier_s * 1e3, 3),
        "ratio_intoto_over_verifier": round(intoto_s / verifier_s, 1),
        # Wall time also counts the inspection command in-toto runs for every decision.
        "intoto_wall_ms": round(intoto_wall * 1e3, 3),
        "verifier_wall_ms": round(verifier_wall * 1e3, 3),
        "wall_ratio": round(intoto_wall / verifier_wall, 1),
        "decisions": {"intoto": n, "verifier": m},
    }


def require_intoto_or_raise() -> None:
    try:
        require_intoto()
    except BaseException as e:  # pytest.fail raises outside a test: report it as a failure
        raise RuntimeError(str(e)) from None


if __name__ == "__main__":
    print(main(quick=True))
