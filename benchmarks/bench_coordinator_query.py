"""Coordinator queries: GET /v1/attestations?digest= latency over many stored attestations.

Every stored envelope is a genuine Ed25519-signed attestation (signed here, in worker
processes). The coordinator (a real ``coordinator run`` process) answers lookups by digest over
loopback while a publisher keeps sending new attestations over a real mosquitto (ingest
continues). Reported: p50/p99 latency, database size per attestation. Baseline, same run: the
latency of ``/healthz`` (the HTTP round trip without a lookup).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.bench_coordinator_ingest import _free_port, _wait_port
from coordinator.checks import Accepted, OutputRow
from coordinator.store import open_store
from verifier.dsse import sign
from verifier.keys import generate_private_key, load_private_key, public_key_pem, save_private_key

REBUILDERS = 3


def _template(rebuilder: str) -> bytes:
    from tests.unit.coordinator.factory import Signer

    signer = Signer(rebuilder)
    env = signer.rebuild("PKGNAME", "1.0-1", {"PKGNAME_1.0-1_amd64.deb": "a" * 64},
                         invocation=f"{rebuilder}/JOBID/1")
    return env.payload


def generate(args: tuple[str, str, int, int]) -> list[Accepted]:
    """Sign ``count`` distinct attestations for one rebuilder (run in a worker process)."""
    key_path, rebuilder, start, count = args
    key = load_private_key(Path(key_path))
    template = _template(rebuilder)
    out = []
    for i in range(start, start + count):
        name = f"pkg{i:07d}"
        digest = hashlib.sha256(f"{name}-{i % 7 == 0 and rebuilder}".encode()).hexdigest()
        payload = (
            template.replace(b"PKGNAME", name.encode())
            .replace(b"a" * 64, digest.encode())
            .replace(b"JOBID", str(i).encode())
        )
        env = sign(payload, key)
        body = env.to_bytes()
        deb = f"{name}_1.0-1_amd64.deb"
        out.append(
            Accepted(
                rebuilder=rebuilder,
                digest=hashlib.sha256(body).hexdigest(),
                body=body,
                kind="rebuild",
                source=name,
                version="1.0-1",
                architecture="amd64",
                verdict="reproduced",
                finished="2026-11-21T12:00:00Z",
                invocation=f"{rebuilder}/{i}/1",
                subjects=((deb, digest),),
                outputs=(OutputRow(deb, "reproduced", digest, digest, digest, None),),
                payload_digest=hashlib.sha256(payload).hexdigest(),
            )
        )
    return out


async def load(db: Path, keys: list[tuple[str, str]], per: int) -> tuple[float, list[str]]:
    """Store ``per`` attestations of each rebuilder (the same packages: they agree mostly)."""
    store = await open_store(db)
    await store.ensure_rebuilders(r for r, _ in keys)
    chunk = 5000
    jobs = [(k, r, s, min(chunk, per - s)) for r, k in keys for s in range(0, per, chunk)]
    sample: list[str] = []
    t0 = time.monotonic()
    loop = asyncio.get_running_loop()
    workers = max(1, os.cpu_count() or 2)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        pending = [loop.run_in_executor(pool, generate, j) for j in jobs[: workers + 1]]
        rest = jobs[workers + 1 :]
        while pending:
            items = await pending.pop(0)
            if rest:
                pending.append(loop.run_in_executor(pool, generate, rest.pop(0)))
            for i in range(0, len(items), 1000):
                await store.store_batch(items[i : i + 1000])
            sample.extend(a.subjects[0][1] for a in items[:: max(1, len(items) // 50)])
    await store.close()
    return time.monotonic() - t0, sample


def trickle(port: int, key_path: str, rebuilder: str, stop_after: float) -> None:
    """Keep publishing new signed attestations at a steady pace (ingest continues)."""
    import paho.mqtt.client as mqtt

    from tests.unit.coordinator.factory import Signer, sha

    signer = Signer(rebuilder, key=load_private_key(Path(key_path)))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + stop_after
    i = 0
    while time.monotonic() < deadline:
        for _ in range(20):
            env = signer.rebuild(f"live{i}", "1", {f"live{i}_1_amd64.deb": sha(f"live{i}")})
            client.publish(f"rq/v1/attestations/{rebuilder}", env.to_bytes(), qos=1)
            i += 1
        time.sleep(0.05)  # ~400 per second
    client.loop_stop()
    client.disconnect()


async def measure(base: str, digests: list[str], n: int) -> tuple[list[float], list[float]]:
    rng = random.Random(7)
    lookups: list[float] = []
    health: list[float] = []
    async with aiohttp.ClientSession() as s:
        for _ in range(50):  # warm up the connection and the page cache
            async with s.get(f"{base}/v1/attestations?digest=sha256:{rng.choice(digests)}") as r:
                await r.read()
        for i in range(n):
            d = rng.choice(digests) if i % 10 else hashlib.sha256(str(i).encode()).hexdigest()
            t = time.perf_counter()
            async with s.get(f"{base}/v1/attestations?digest=sha256:{d}") as r:
                body = await r.read()
                assert r.status == 200
            lookups.append(time.perf_counter() - t)
            if i % 10:
                assert json.loads(body)["attestations"], d
            t = time.perf_counter()
            async with s.get(f"{base}/healthz") as r:
                await r.read()
            health.append(time.perf_counter() - t)
    return lookups, health


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main(quick: bool = False) -> dict[str, Any]:
    total = 50_000 if quick else 1_000_000
    per = total // REBUILDERS
    queries = 2000 if quick else 10_000
    work = Path(tempfile.mkdtemp(prefix="rq-bench-query-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        keys: list[tuple[str, str]] = []
        entries = []
        for i in range(REBUILDERS):
            rid = f"rb-q{i}"
            key = generate_private_key()
            save_private_key(key, work / f"{rid}.pem")
            (work / f"{rid}.pub").write_text(public_key_pem(key.public_key()))
            keys.append((rid, str(work / f"{rid}.pem")))
            entries.append(f'[[rebuilder]]\nid = "{rid}"\noperator = "op{i}"\n'
                           f'url = "http://127.0.0.1:9"\npublic_key_file = "{rid}.pub"\n')
        db = work / "c.db"
        load_s, sample = asyncio.run(load(db, keys, per))
        stored = per * REBUILDERS
        size = sum(p.stat().st_size for p in work.glob("c.db*"))

        port = _free_port()
        (work / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        procs.append(subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "m.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_port(port)
        http_port = _free_port()
        (work / "c.toml").write_text(
            f'[coordinator]\nlisten = "127.0.0.1:{http_port}"\ndatabase = "c.db"\n'
            f"catchup_interval = 3600\n\n[mqtt]\nport = {port}\n\n" + "\n".join(entries))
        with (work / "coordinator.log").open("ab") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "coordinator", "run", "--config", str(work / "c.toml")],
                stdout=subprocess.DEVNULL, stderr=log))
        _wait_port(http_port, 60)
        time.sleep(1.5)
        base = f"http://127.0.0.1:{http_port}"
        ctx = mp.get_context("spawn")
        publisher = ctx.Process(target=trickle, args=(port, keys[0][1], keys[0][0], 600))
        publisher.start()
        try:
            time.sleep(1)
            t0 = time.monotonic()
            lookups, health = asyncio.run(measure(base, sample, queries))
            query_s = time.monotonic() - t0
        finally:
            publisher.terminate()
            publisher.join()
        return {
            "stored_attestations": stored,
            "load_seconds": round(load_s, 1),
            "db_bytes_per_attestation": round(size / stored),
            "queries": queries,
            "lookup_p50_ms": round(pct(lookups, 50) * 1000, 2),
            "lookup_p99_ms": round(pct(lookups, 99) * 1000, 2),
            "baseline_healthz_p50_ms": round(pct(health, 50) * 1000, 2),
            "baseline_healthz_p99_ms": round(pct(health, 99) * 1000, 2),
            "p99_ratio_to_healthz": round(pct(lookups, 99) / pct(health, 99), 2),
            "query_phase_seconds": round(query_s, 1),
            "ingest_during_queries": "~400 signed attestations/s over MQTT",
            "target_p99_ms": 10,
        }
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv))
