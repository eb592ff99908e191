"""Rebuilder orchestration overhead per job: everything but the sandboxed build commands.

A real node pipeline (host mode, real bwrap, real dpkg-buildpackage) rebuilds the small
``rq-hello`` package from a test repository served on loopback, then signs, stores and publishes
the attestation to a real mosquitto. The time spent inside the sandboxed commands (unpacking the
source, dpkg-buildpackage) is measured around the pipeline's sandbox call and subtracted; what
remains is fetching, hashing, comparing, signing, storing and publishing. Target: median < 300 ms.
The baseline is the sandboxed build time itself, in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

import rebuilder.debian.build as build_module
from rebuilder.cli import main as cli_main
from rebuilder.config import load_config
from rebuilder.db import Store
from rebuilder.debian.node import make_builder
from rebuilder.publish import flush_once
from rebuilder.queue import JobRunner
from rqdemo.testrepo import build_test_repository, serve_repository
from tests.support import free_port, running_mosquitto
from verifier.keys import load_private_key

PACKAGE = "rq-hello"


async def _run(quick: bool, tmp: Path) -> dict[str, Any]:
    iterations = 3 if quick else 8
    repo = await asyncio.to_thread(build_test_repository, tmp / "repo")
    sandbox_time = 0.0
    original = build_module._sandboxed

    async def timed(*args: Any, **kwargs: Any) -> Any:
        nonlocal sandbox_time
        t = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            sandbox_time += time.perf_counter() - t

    build_module._sandboxed = timed  # type: ignore[assignment]  # instrumentation only
    (tmp / "mq").mkdir()
    try:
        with running_mosquitto(tmp / "mq") as broker:
            async with serve_repository(repo.path) as base:
                port = free_port()
                with contextlib.redirect_stdout(io.StringIO()):
                    rc = await asyncio.to_thread(cli_main, [
                        "init", "--dir", str(tmp / "node"), "--id", "rb-bench", "--operator", "b",
                        "--public-url", f"http://127.0.0.1:{port}", "--listen",
                        f"127.0.0.1:{port}", "--mqtt-port", str(broker.port),
                        "--repository-url", base, "--signed-by", str(repo.keyring)])
                assert rc == 0
                logging.getLogger("rebuilder").setLevel(logging.WARNING)
                cfg = load_config(tmp / "node" / "config.toml")
                store = await Store.open(cfg.node.db_path)
                key = load_private_key(cfg.node.signing_key)
                totals, sandboxed, overheads = [], [], []
                async with aiohttp.ClientSession() as session:
                    runner = JobRunner(cfg, store, key, make_builder(cfg, session))
                    template = repo.package(PACKAGE).job(base, with_dsc=True)
                    for i in range(iterations + 1):  # the first one warms caches
                        job = replace(template, repository=f"bench{i}")
                        await store.add_jobs([job])
                        sandbox_time = 0.0
                        t = time.perf_counter()
                        claimed = await store.claim_job()
                        assert claimed is not None
                        result = await runner.run(claimed)
                        sent = await flush_once(cfg, store)
                        total = time.perf_counter() - t
                        if result.verdict != "reproduced" or sent != 1:
                            raise AssertionError(f"unexpected result {result} (sent {sent})")
                        if i == 0:
                            continue
                        totals.append(total)
                        sandboxed.append(sandbox_time)
                        overheads.append(total - sandbox_time)
                await store.close()
    finally:
        build_module._sandboxed = original  # type: ignore[assignment]
    med = statistics.median(overheads)
    return {
        "package": PACKAGE,
        "iterations": iterations,
        "job_total_median_ms": round(statistics.median(totals) * 1000, 1),
        "sandboxed_build_median_ms": round(statistics.median(sandboxed) * 1000, 1),
        "overhead_median_ms": round(med * 1000, 1),
        "overhead_max_ms": round(max(overheads) * 1000, 1),
        "overhead_ratio_vs_build": round(med / statistics.median(sandboxed), 3),
        "target_median_ms": 300,
        "meets_target": med < 0.300,
    }


def main(quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_run(quick, Path(tmp)))


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(main("--quick" in sys.argv), indent=2))
