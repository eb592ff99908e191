"""The node says at start which build limits are only advisory; status and /metrics show it."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rebuilder import limits, sandbox
from rebuilder.cli import main
from rebuilder.daemon import run_daemon
from rebuilder.metrics import DURATION_BUCKETS, NodeState, render
from tests.support import metric, metric_samples, wait_for
from tests.unit.rebuilder.node_helpers import amake_node, make_node, reproduced


def _advisory_memory() -> tuple[sandbox.Enforcement, ...]:
    return (
        sandbox.Enforcement("memory", False, "none: cgroup v2 /x is not delegated"),
        sandbox.Enforcement("pids", True, "cgroup v2 /x"),
        sandbox.Enforcement("disk", True, "build tree on its own ext4 image (loop mount)"),
        sandbox.Enforcement("time", True, "the node kills the whole sandbox at the timeout"),
    )


def test_advisory_limit_is_logged_recorded_and_shown_by_status(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = make_node(tmp_path)
    assert cfg.path is not None
    capsys.readouterr()
    assert main(["status", "--config", str(cfg.path)]) == 0
    assert "build limits: unknown: the node has not started" in capsys.readouterr().out

    monkeypatch.setattr(sandbox, "enforcement", _advisory_memory)
    monkeypatch.setattr(limits, "_current", None)  # restored after the test
    with caplog.at_level(logging.INFO, logger="rebuilder.limits"):
        limits.announce(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "build limit memory (8192 MiB) is ONLY ADVISORY on this node: "
        "none: cgroup v2 /x is not delegated"
    ]
    assert main(["status", "--config", str(cfg.path)]) == 0
    out = capsys.readouterr().out
    assert "ADVISORY ONLY: memory" in out
    assert "memory  8192 MiB         advisory  none: cgroup v2 /x is not delegated" in out
    assert main(["status", "--config", str(cfg.path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)["limits"]
    assert [(e["limit"], e["enforced"]) for e in record["limits"]] == [
        ("memory", False), ("pids", True), ("disk", True), ("time", True)
    ]
    text = render(NodeState("rb-x", 0, 0, 0, {}, {}, (0,) * len(DURATION_BUCKETS), 0, 0.0,
                            limits=tuple(limits.current() or ())))
    assert {k: v for k, v in metric_samples(text).items()
            if k[0] == "rq_sandbox_limit_enforced"} == {
        ("rq_sandbox_limit_enforced", frozenset({("limit", "memory")})): 0,
        ("rq_sandbox_limit_enforced", frozenset({("limit", "pids")})): 1,
        ("rq_sandbox_limit_enforced", frozenset({("limit", "disk")})): 1,
        ("rq_sandbox_limit_enforced", frozenset({("limit", "time")})): 1,
    }


def test_a_corrupt_record_is_reported_not_trusted(tmp_path: Path) -> None:
    (tmp_path / limits.FILE_NAME).write_text('{"limits": [{"limit": "memory"}]}')
    assert "is not a limits record" in str(limits.read(tmp_path))
    (tmp_path / limits.FILE_NAME).write_bytes(b"x" * (limits.MAX_FILE_BYTES + 1))
    assert "too large" in str(limits.read(tmp_path))


def _fake_factory(config: Any, session: aiohttp.ClientSession) -> Any:
    async def builder(job: Any, work: Path) -> Any:
        return reproduced(job)

    return builder


async def test_running_node_exposes_this_machines_limits_in_metrics(tmp_path: Path) -> None:
    cfg = await amake_node(tmp_path, "--no-mqtt")
    stop = asyncio.Event()
    task = asyncio.create_task(run_daemon(cfg, stop=stop, grace=1, install_signals=False,
                                          builder_factory=_fake_factory))
    try:
        async def metrics_up() -> bool:
            try:
                async with aiohttp.ClientSession() as s, \
                        s.get(f"{cfg.node.public_url}/metrics") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(metrics_up, 20, "the node's API")
        async with aiohttp.ClientSession() as s, s.get(f"{cfg.node.public_url}/metrics") as r:
            text = await r.text()
        expected = {e.limit: int(e.enforced) for e in sandbox.enforcement()}
        for name, value in expected.items():
            assert metric(text, "rq_sandbox_limit_enforced", limit=name) == value
        record = limits.read(cfg.node.state_dir)
        assert isinstance(record, dict) and len(record["limits"]) == 4
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task
