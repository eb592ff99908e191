"""Prometheus exposition of the node's state, computed from the database at scrape time.

Everything is read from SQLite, so the figures survive restarts and the API process needs no
shared memory with the workers. ``node_state`` reads one ``NodeState``; ``NodeCollector``
(prometheus_client's collector API) turns it into metric families, ``render`` into text::

    text = render(await node_state(store, "rb-alpha", disk))

Metric names: ``rq_node_info{id,version}``, ``rq_queue_length``, ``rq_running_builds``,
``rq_builds_total{verdict}``, ``rq_build_duration_seconds`` (histogram), ``rq_outbox_backlog``,
``rq_attestations_total{kind}``, ``rq_sandbox_limit_enforced{limit}`` (from the daemon's
start-up check, ``rebuilder.limits``), and from the state filesystem ``rq_state_free_bytes``,
``rq_state_min_free_bytes`` and ``rq_intake_paused`` (1 while a full disk stops the workers).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from rebuilder import __version__, limits
from rebuilder.db import Store
from rebuilder.recovery import DiskStatus
from verifier.verdicts import JOB_VERDICTS

__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS", "NodeCollector", "NodeState", "node_state",
           "render", "render_metrics"]

DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)
# The text format prometheus_client's generate_latest writes (0.0.4; names are plain ASCII).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ATTESTATION_KINDS = ("rebuild", "failure", "revocation")


def _le(v: float) -> str:
    """A bucket bound as the node has always written it: ``1``, ``5``, ... (not ``1.0``)."""
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


@dataclass(frozen=True)
class NodeState:
    """What one scrape shows, read from the database and the state filesystem."""

    node_id: str
    queued: int
    running: int
    backlog: int
    verdicts: dict[str, int]  # finished attempts by verdict
    kinds: dict[str, int]  # stored attestations by kind
    duration_buckets: tuple[int, ...]  # cumulative, one per DURATION_BUCKETS bound
    duration_count: int
    duration_sum: float
    limits: tuple[dict[str, Any], ...] = ()  # rebuilder.limits entries ({limit, enforced})
    disk: DiskStatus | None = None


async def node_state(store: Store, node_id: str, disk: DiskStatus | None = None) -> NodeState:
    counts = await store.counts()
    cumulative, total, dsum = await store.duration_histogram(DURATION_BUCKETS)
    return NodeState(
        node_id=node_id,
        queued=counts["queued"],
        running=counts["running"],
        backlog=counts["backlog"],
        verdicts=await store.build_verdicts(),
        kinds=await store.attestation_kinds(),
        duration_buckets=tuple(cumulative),
        duration_count=total,
        duration_sum=dsum,
        limits=tuple(limits.current() or ()),
        disk=disk,
    )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(family: CounterMetricFamily | GaugeMetricFamily,
              values: Sequence[tuple[str, float]]) -> CounterMetricFamily | GaugeMetricFamily:
    for label, value in values:
        family.add_metric([label], value)
    return family


class NodeCollector(Collector):
    """The node's metric families from one ``NodeState`` (names, labels and types as always)."""

    def __init__(self, state: NodeState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state
        info = GaugeMetricFamily("rq_node_info", "This node's identity.",
                                 labels=["id", "version"])
        info.add_metric([s.node_id, __version__], 1)
        yield info
        yield _gauge("rq_queue_length", "Jobs waiting for a worker.", s.queued)
        yield _gauge("rq_running_builds", "Jobs being built now.", s.running)
        yield _labelled(
            CounterMetricFamily("rq_builds_total", "Finished build attempts by verdict.",
                                labels=["verdict"]),
            [(v, s.verdicts.get(v, 0)) for v in JOB_VERDICTS])
        yield HistogramMetricFamily(
            "rq_build_duration_seconds", "Wall time of finished build attempts.",
            buckets=[*((_le(b), n) for b, n in zip(DURATION_BUCKETS, s.duration_buckets,
                                                   strict=True)),
                     ("+Inf", s.duration_count)],
            sum_value=s.duration_sum)
        yield _gauge("rq_outbox_backlog",
                     "Attestations stored but not yet acknowledged by the broker.", s.backlog)
        yield _labelled(
            CounterMetricFamily("rq_attestations_total", "Signed attestations stored, by kind.",
                                labels=["kind"]),
            [(k, s.kinds.get(k, 0)) for k in ATTESTATION_KINDS])
        if s.limits:
            yield _labelled(
                GaugeMetricFamily("rq_sandbox_limit_enforced",
                                  "1 if the kernel enforces this build limit, 0 if it is only"
                                  " advisory.", labels=["limit"]),
                [(str(e["limit"]), int(bool(e["enforced"]))) for e in s.limits])
        if s.disk is not None:
            yield _gauge("rq_state_free_bytes",
                         "Free bytes on the state directory's filesystem.", s.disk.free_bytes)
            yield _gauge("rq_state_min_free_bytes",
                         "Below this free space the node takes no job.", s.disk.min_free_bytes)
            yield _gauge("rq_intake_paused",
                         "1 while a full state filesystem stops the workers.",
                         int(s.disk.paused))


def render(state: NodeState) -> str:
    """The Prometheus text exposition of ``state``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(state))
    return generate_latest(registry).decode()


async def render_metrics(store: Store, node_id: str, disk: DiskStatus | None = None) -> str:
    return render(await node_state(store, node_id, disk))
