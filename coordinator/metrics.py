"""Prometheus exposition of the coordinator: ingest counters, database totals, rebuilders.

``GET /metrics`` gathers one ``CoordinatorState`` (app.py) and ``render`` writes it through
``CoordinatorCollector``, a collector of prometheus_client's API yielding metric families from
that state (names, labels and types as docs/coordinator.md lists them)::

    text = render(CoordinatorState(ingest.metrics, await store.totals(), ...))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from coordinator.checks import DROP_REASONS
from coordinator.mqtt5 import PACKET_DROP_REASONS
from coordinator.service import STATUS_DROP_REASONS, Metrics
from coordinator.store import Totals

__all__ = ["SOURCES", "CoordinatorCollector", "CoordinatorState", "render"]

SOURCES = ("mqtt", "http")  # where attestations arrive from


@dataclass(frozen=True)
class CoordinatorState:
    """What one scrape shows."""

    ingest: Metrics
    totals: Totals
    queued: int  # messages received and not yet checked
    mqtt_connected: bool
    packets_dropped: Mapping[str, int] | None  # by reason; None without an MQTT link
    rebuilders: Sequence[tuple[str, bool]]  # (id, online), in configuration order


def _counter(name: str, doc: str, label: str,
             values: Sequence[tuple[str, float]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in values:
        family.add_metric([key], value)
    return family


class CoordinatorCollector(Collector):
    def __init__(self, state: CoordinatorState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s, m = self.state, self.state.ingest
        yield _counter("rq_coordinator_received_total",
                       "Attestation messages received, by source.", "source",
                       [(src, m.received[src]) for src in SOURCES])
        yield _counter("rq_coordinator_ingested_total",
                       "Verified envelopes newly stored, by source.", "source",
                       [(src, m.ingested[src]) for src in SOURCES])
        yield CounterMetricFamily("rq_coordinator_duplicates_total",
                                  "Verified envelopes already stored.", value=m.duplicates)
        yield _counter("rq_coordinator_dropped_total",
                       "Messages dropped before storing, by reason.", "reason",
                       [(why, m.dropped[why]) for why in DROP_REASONS])
        yield CounterMetricFamily("rq_coordinator_status_invalid_total",
                                  "Status messages that failed validation.",
                                  value=m.status_invalid)
        yield _counter("rq_coordinator_status_dropped_total",
                       "Status messages dropped, by reason.", "reason",
                       [(why, m.status_dropped[why]) for why in STATUS_DROP_REASONS])
        packets = s.packets_dropped
        yield _counter("rq_coordinator_mqtt_packets_dropped_total",
                       "Malformed MQTT packets, by reason.", "reason",
                       [(why, packets.get(why, 0) if packets is not None else 0)
                        for why in PACKET_DROP_REASONS])
        yield GaugeMetricFamily("rq_coordinator_stored_envelopes", "Envelopes in the database.",
                                value=s.totals.envelopes)
        yield GaugeMetricFamily("rq_coordinator_disagreements", "Disagreements recorded.",
                                value=s.totals.disagreements)
        yield CounterMetricFamily("rq_coordinator_tampered_total",
                                  "Stored attestations reporting tampering.", value=m.tampered)
        yield GaugeMetricFamily("rq_coordinator_ingest_queue",
                                "Messages received and not yet checked.", value=s.queued)
        yield GaugeMetricFamily("rq_coordinator_mqtt_connected",
                                "1 while connected to the broker.", value=int(s.mqtt_connected))
        online = GaugeMetricFamily("rq_coordinator_rebuilder_online",
                                   "1 when the rebuilder was heard from recently.",
                                   labels=["rebuilder"])
        for rid, is_online in s.rebuilders:
            online.add_metric([rid], int(is_online))
        yield online
        yield _counter("rq_coordinator_catchup_errors_total",
                       "Failed HTTP catch-ups, by rebuilder.", "rebuilder",
                       [(rid, m.catchup_errors[rid]) for rid, _ in s.rebuilders])


def render(state: CoordinatorState) -> str:
    """The Prometheus text exposition of ``state``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoordinatorCollector(state))
    return generate_latest(registry).decode()
