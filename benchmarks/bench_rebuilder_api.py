"""Rebuilder API: GET /v1/attestations?digest= over 100,000 stored signed attestations vs /healthz.

Synthetic but real attestations (signed RebuildStatements, two subjects each) are inserted in bulk
through the node's store; a real aiohttp server on loopback answers sequential requests for
random stored digests. Target: p99 < 10 ms; the /healthz baseline in the same run shows how much
of that is HTTP itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from rebuilder.api import create_app
from rebuilder.config import parse_config
from rebuilder.db import NewAttestation, Store
from tests.support import free_port
from verifier.dsse import Envelope, sign
from verifier.keys import generate_private_key, save_private_key
from verifier.statement import (
    Digest,
    PackageIdentity,
    RebuildStatement,
    Subject,
    parse_statement,
)


def _attestations(n: int, key: Any) -> tuple[list[NewAttestation], list[str]]:
    """``n`` distinct signed statements. One real ``RebuildStatement`` is serialized with
    sentinel values that are then substituted (same length, so still valid canonical JSON):
    building each statement from scratch would make the setup, not the lookups, dominate."""
    t = datetime(2026, 1, 1, tzinfo=UTC)
    s1, s2, name = "a" * 64, "b" * 64, "pkgxxxxxxxxx"
    template = RebuildStatement(
        package=PackageIdentity("debian", name, "1.0-1", "amd64"),
        subjects=(Subject(f"{name}_1.0-1_amd64.deb", Digest(s1)),
                  Subject(f"{name}-doc_1.0-1_all.deb", Digest(s2))),
        builder_id="http://127.0.0.1/v1/node", started_on=t, finished_on=t,
        invocation_id=f"bench/{name}/1", buildinfo_uri=f"http://h/{name}.buildinfo",
        buildinfo_sha256=Digest(s1), repository="http://h stable",
    ).to_bytes()
    items: list[NewAttestation] = []
    digests: list[str] = []
    for i in range(n):
        d1 = hashlib.sha256(b"deb%d" % i).hexdigest()
        d2 = hashlib.sha256(b"doc%d" % i).hexdigest()
        pkg = f"pkg{i:09d}"
        payload = (template.replace(s1.encode(), d1.encode()).replace(s2.encode(), d2.encode())
                   .replace(name.encode(), pkg.encode()))
        env = sign(payload, key)
        items.append(NewAttestation(
            envelope_sha256=env.digest(), envelope=env.to_bytes(), kind="rebuild",
            source=pkg, version="1.0-1", arch="amd64",
            subjects=((f"{pkg}_1.0-1_amd64.deb", d1), (f"{pkg}-doc_1.0-1_all.deb", d2)),
        ))
        digests.append(d1)
    return items, digests


def _percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(statistics.median(s) * 1000, 3),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 3),
        "max_ms": round(s[-1] * 1000, 3),
    }


async def _run(quick: bool) -> dict[str, Any]:
    n_att = 20_000 if quick else 100_000
    n_req = 300 if quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        key = generate_private_key()
        save_private_key(key, d / "signing.pem")
        port = free_port()
        cfg = parse_config({"node": {"id": "bench", "operator": "bench",
                                     "listen": f"127.0.0.1:{port}", "signing_key": "signing.pem",
                                     "public_url": f"http://127.0.0.1:{port}"}}, d)
        store = await Store.open(cfg.node.db_path)
        t0 = time.perf_counter()
        items, digests = await asyncio.to_thread(_attestations, n_att, key)
        t_sign = time.perf_counter() - t0
        check = parse_statement(Envelope.from_bytes(items[-1].envelope).payload)
        if not isinstance(check, RebuildStatement) or check.subjects[0].sha256 != digests[-1]:
            raise AssertionError("the synthetic statements do not parse back")
        t0 = time.perf_counter()
        for i in range(0, n_att, 10_000):
            await store.add_attestations_bulk(items[i:i + 10_000])
        t_insert = time.perf_counter() - t0
        await store.close()

        runner = web.AppRunner(create_app(cfg), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}"
        rng = random.Random(7)
        lookups: list[float] = []
        health: list[float] = []
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(20):  # warm up both paths
                    async with session.get(f"{base}/healthz") as r:
                        await r.read()
                    async with session.get(
                            f"{base}/v1/attestations?digest=sha256:{digests[0]}") as r:
                        await r.read()
                for _ in range(n_req):
                    t = time.perf_counter()
                    async with session.get(f"{base}/healthz") as r:
                        await r.read()
                    health.append(time.perf_counter() - t)
                    want = rng.choice(digests)
                    t = time.perf_counter()
                    async with session.get(f"{base}/v1/attestations?digest=sha256:{want}") as r:
                        body = await r.json()
                    lookups.append(time.perf_counter() - t)
                    if len(body["attestations"]) != 1:
                        raise AssertionError(f"lookup of {want} returned {body}")
        finally:
            await runner.cleanup()
    look, base_p = _percentiles(lookups), _percentiles(health)
    return {
        "attestations_stored": n_att,
        "requests": n_req,
        "sign_per_attestation_us": round(t_sign / n_att * 1e6, 1),
        "bulk_insert_per_attestation_us": round(t_insert / n_att * 1e6, 1),
        "digest_lookup": look,
        "healthz_baseline": base_p,
        "p99_ratio_vs_healthz": round(look["p99_ms"] / base_p["p99_ms"], 2),
        "target_p99_ms": 10,
        "meets_target": look["p99_ms"] < 10,
    }


def main(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(main("--quick" in sys.argv), indent=2))
