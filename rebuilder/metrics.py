"""Prometheus text exposition of the node's state, computed from the database at scrape time.

Everything is read from SQLite, so the figures survive restarts and the API process needs no
shared memory with the workers. Metric names: ``rq_queue_length``, ``rq_running_builds``,
``rq_builds_total{verdict}``, ``rq_build_duration_seconds`` (histogram), ``rq_outbox_backlog``,
``rq_attestations_total{kind}``, ``rq_sandbox_limit_enforced{limit}`` (from the daemon's
start-up check, ``rebuilder.limits``), and from the state filesystem ``rq_state_free_bytes``,
``rq_state_min_free_bytes`` and ``rq_intake_paused`` (1 while a full disk stops the workers).
"""

from __future__ import annotations

from rebuilder import __version__, limits
from rebuilder.db import Store
from rebuilder.recovery import DiskStatus
from verifier.verdicts import JOB_VERDICTS

__all__ = ["DURATION_BUCKETS", "render_metrics"]

DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _fmt(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


async def render_metrics(store: Store, node_id: str, disk: DiskStatus | None = None) -> str:
    counts = await store.counts()
    verdicts = await store.build_verdicts()
    kinds = await store.attestation_kinds()
    cumulative, total, dsum = await store.duration_histogram(DURATION_BUCKETS)
    lines = [
        "# HELP rq_node_info This node's identity.",
        "# TYPE rq_node_info gauge",
        f'rq_node_info{{id="{node_id}",version="{__version__}"}} 1',
        "# HELP rq_queue_length Jobs waiting for a worker.",
        "# TYPE rq_queue_length gauge",
        f"rq_queue_length {counts['queued']}",
        "# HELP rq_running_builds Jobs being built now.",
        "# TYPE rq_running_builds gauge",
        f"rq_running_builds {counts['running']}",
        "# HELP rq_builds_total Finished build attempts by verdict.",
        "# TYPE rq_builds_total counter",
    ]
    for verdict in JOB_VERDICTS:
        lines.append(f'rq_builds_total{{verdict="{verdict}"}} {verdicts.get(verdict, 0)}')
    lines += [
        "# HELP rq_build_duration_seconds Wall time of finished build attempts.",
        "# TYPE rq_build_duration_seconds histogram",
    ]
    for bound, n in zip(DURATION_BUCKETS, cumulative, strict=True):
        lines.append(f'rq_build_duration_seconds_bucket{{le="{_fmt(bound)}"}} {n}')
    lines += [
        f'rq_build_duration_seconds_bucket{{le="+Inf"}} {total}',
        f"rq_build_duration_seconds_sum {_fmt(dsum)}",
        f"rq_build_duration_seconds_count {total}",
        "# HELP rq_outbox_backlog Attestations stored but not yet acknowledged by the broker.",
        "# TYPE rq_outbox_backlog gauge",
        f"rq_outbox_backlog {counts['backlog']}",
        "# HELP rq_attestations_total Signed attestations stored, by kind.",
        "# TYPE rq_attestations_total counter",
    ]
    for kind in ("rebuild", "failure", "revocation"):
        lines.append(f'rq_attestations_total{{kind="{kind}"}} {kinds.get(kind, 0)}')
    lines += limits.metrics_lines(limits.current())
    if disk is not None:
        lines += [
            "# HELP rq_state_free_bytes Free bytes on the state directory's filesystem.",
            "# TYPE rq_state_free_bytes gauge",
            f"rq_state_free_bytes {disk.free_bytes}",
            "# HELP rq_state_min_free_bytes Below this free space the node takes no job.",
            "# TYPE rq_state_min_free_bytes gauge",
            f"rq_state_min_free_bytes {disk.min_free_bytes}",
            "# HELP rq_intake_paused 1 while a full state filesystem stops the workers.",
            "# TYPE rq_intake_paused gauge",
            f"rq_intake_paused {int(disk.paused)}",
        ]
    return "\n".join(lines) + "\n"
