"""Coordinator ingest: signed attestations over a real mosquitto, verified and stored.

Several publisher processes publish genuine signed envelopes (QoS 1) to a mosquitto on a free
port, each PUBLISH exactly as a node's ``Publisher`` sends it (``attestation_message``: topic,
QoS, the ContentType property); the coordinator (a real ``coordinator run`` process, receiving
with coordinator/mqtt5.py) verifies and stores them. Measured:
the sustained rate until the last one is stored, nothing lost (the database count at the end).
Baseline, same run and same messages: the raw broker throughput to a plain subscriber.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from verifier.keys import generate_private_key, load_private_key, public_key_pem, save_private_key

PUBLISHERS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def make_messages(key_path: str, rebuilder: str, start: int, count: int) -> list[bytes]:
    """Genuine signed attestations (one per package version), as a node would publish them."""
    from tests.unit.coordinator.factory import Signer, sha

    signer = Signer(rebuilder, key=load_private_key(Path(key_path)))
    out = []
    for i in range(start, start + count):
        deb = f"pkg{i}_1.0-1_amd64.deb"
        env = signer.rebuild(f"pkg{i}", "1.0-1", {deb: sha(f"{rebuilder}{i}")},
                             invocation=f"{rebuilder}/{i}/1")
        out.append(env.to_bytes())
    return out


def publisher(port: int, key_path: str, rebuilder: str, start: int, count: int,
              ready: Any, go: Any) -> None:
    import paho.mqtt.client as mqtt

    from rebuilder.publish import attestation_message

    # Exactly what a node's Publisher sends: its topic, QoS and properties (ContentType).
    messages = [attestation_message(rebuilder, m)
                for m in make_messages(key_path, rebuilder, start, count)]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.wait()
    go.wait()
    infos = [
        client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain, properties=m.properties)
        for m in messages
    ]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def run_publishers(port: int, keys: list[tuple[str, str]], per: int) -> tuple[float, list[Any]]:
    ctx = mp.get_context("fork")
    ready = ctx.Barrier(len(keys) + 1)
    go = ctx.Event()
    procs = [
        ctx.Process(target=publisher, args=(port, key, rid, i * per, per, ready, go))
        for i, (rid, key) in enumerate(keys)
    ]
    for p in procs:
        p.start()
    ready.wait()  # every publisher has signed its messages and connected
    t0 = time.monotonic()
    go.set()
    return t0, procs


async def baseline(port: int, keys: list[tuple[str, str]], per: int) -> float:
    total = per * len(keys)
    got = 0
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as sub:
        await sub.subscribe("rq/v1/attestations/+", qos=1)
        t0, procs = await asyncio.to_thread(run_publishers, port, keys, per)
        async with asyncio.timeout(300):
            async for _ in sub.messages:
                got += 1
                if got == total:
                    break
        elapsed = time.monotonic() - t0
    for p in procs:
        p.join()
    return total / elapsed


def stored(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return int(c.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0])
    except sqlite3.Error:
        return 0


def run_coordinator(
    work: Path, port: int, keys: list[tuple[str, str]], entries: list[str], per: int, workers: int
) -> tuple[float, int]:
    """Start ``coordinator run`` on a fresh database, publish, wait until all are stored."""
    http_port = _free_port()
    db = work / f"c{workers}.db"
    (work / "coordinator.toml").write_text(
        f'[coordinator]\nlisten = "127.0.0.1:{http_port}"\ndatabase = "{db.name}"\n'
        f"catchup_interval = 3600\nverify_workers = {workers}\n\n"
        f"[mqtt]\nport = {port}\n\n" + "\n".join(entries)
    )
    with (work / "coordinator.log").open("ab") as log:
        coordinator = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "run", "--config",
             str(work / "coordinator.toml")],
            stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        _wait_port(http_port, 30)
        time.sleep(1.5)  # let it subscribe and start its workers
        total = per * len(keys)
        t0, procs = run_publishers(port, keys, per)
        deadline = time.monotonic() + 600
        while stored(db) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        for p in procs:
            p.join()
        return total / elapsed, stored(db)
    finally:
        coordinator.terminate()
        try:
            coordinator.wait(20)
        except subprocess.TimeoutExpired:
            coordinator.kill()
            coordinator.wait()


async def pipeline_capacity(work: Path, config_path: Path, keys: list[tuple[str, str]],
                            per: int) -> float:
    """The same messages through ``Ingest`` (check + store) in this process, without MQTT."""
    from coordinator.config import load_config
    from coordinator.service import Ingest
    from coordinator.store import open_store

    messages = [
        (rid, m) for i, (rid, key) in enumerate(keys) for m in make_messages(key, rid, i * per, per)
    ]
    config = load_config(config_path)
    store = await open_store(work / "pipeline.db")
    await store.ensure_rebuilders(rid for rid, _ in keys)
    ingest = Ingest(config, store)
    runner = asyncio.create_task(ingest.run())
    t0 = time.monotonic()
    for rid, m in messages:
        await ingest.submit(rid, m)
    await ingest.drained()
    elapsed = time.monotonic() - t0
    runner.cancel()
    assert (await store.totals()).envelopes == len(messages)
    await store.close()
    return len(messages) / elapsed


def main(quick: bool = False) -> dict[str, Any]:
    per = 2000 if quick else 10_000
    work = Path(tempfile.mkdtemp(prefix="rq-bench-ingest-"))
    broker = None
    try:
        port = _free_port()
        (work / "mosquitto.conf").write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_inflight_messages 1000\nmax_queued_messages 1000000\n"
        )
        broker = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c",
             str(work / "mosquitto.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_port(port)
        keys: list[tuple[str, str]] = []
        entries = []
        for i in range(PUBLISHERS):
            rid = f"rb-bench{i}"
            key = generate_private_key()
            save_private_key(key, work / f"{rid}.pem")
            keys.append((rid, str(work / f"{rid}.pem")))
            (work / f"{rid}.pub").write_text(public_key_pem(key.public_key()))
            entries.append(
                f'[[rebuilder]]\nid = "{rid}"\noperator = "op{i}"\n'
                f'url = "http://127.0.0.1:9"\npublic_key_file = "{rid}.pub"\n'
            )
        # The machine is shared: the baseline is measured right before and right after the
        # coordinator, and the ratio taken to their mean, so a load change between the phases
        # does not pass for a difference of the paths.
        base_before = asyncio.run(baseline(port, keys, per))
        total = per * len(keys)
        results = {2: run_coordinator(work, port, keys, entries, per, 2)}
        base_after = asyncio.run(baseline(port, keys, per))
        base_rate = (base_before + base_after) / 2
        results[0] = run_coordinator(work, port, keys, entries, per, 0)
        rate0, count0 = results[0]
        capacity = asyncio.run(pipeline_capacity(work, work / "coordinator.toml", keys, per))
        rate, count = results[2]
        return {
            "attestations": total,
            "publishers": PUBLISHERS,
            "stored_at_end": count,
            "coordinator_rate_per_s": round(rate),
            "lost": total - count,
            "verify_workers": 2,
            "coordinator_rate_in_process_per_s": round(rate0),
            "lost_in_process": total - count0,
            "check_and_store_without_mqtt_per_s": round(capacity),
            "baseline_broker_rate_per_s": round(base_rate),
            "baseline_before_after_per_s": [round(base_before), round(base_after)],
            "ratio_to_broker": round(rate / base_rate, 3),
            "target_ratio_to_broker": 0.8,
            "target_per_s": 3000,
            "cpus": os.cpu_count(),
        }
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(main(quick="--quick" in sys.argv))
