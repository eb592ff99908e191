"""The coordinator's /metrics: families, types and labels from one CoordinatorState, read back
with prometheus_client's parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from coordinator.checks import DROP_REASONS
from coordinator.metrics import CoordinatorState, render
from coordinator.mqtt5 import PACKET_DROP_REASONS
from coordinator.service import STATUS_DROP_REASONS, Metrics
from coordinator.store import Totals
from tests.support import metric, metric_samples


def _state(**changes: object) -> CoordinatorState:
    m = Metrics()
    m.received.update({"mqtt": 7, "http": 2})
    m.ingested.update({"mqtt": 5})
    m.duplicates = 3
    m.dropped.update({DROP_REASONS[0]: 4})
    m.status_dropped.update({STATUS_DROP_REASONS[0]: 1})
    m.catchup_errors.update({"rb-beta": 2})
    m.tampered = 1
    base: dict[str, object] = {
        "ingest": m, "totals": Totals(envelopes=5, disagreements=1, revocations=0),
        "queued": 6, "mqtt_connected": True,
        "packets_dropped": {PACKET_DROP_REASONS[0]: 9},
        "rebuilders": [("rb-alpha", True), ("rb-beta", False)],
    }
    base.update(changes)
    return CoordinatorState(**base)  # type: ignore[arg-type]


def test_every_family_has_its_type() -> None:
    types = {f.name: f.type for f in text_string_to_metric_families(render(_state()))}
    counters = {"received", "ingested", "duplicates", "dropped", "status_invalid",
                "status_dropped", "mqtt_packets_dropped", "tampered", "catchup_errors"}
    gauges = {"stored_envelopes", "disagreements", "ingest_queue", "mqtt_connected",
              "rebuilder_online"}
    assert types == {**{f"rq_coordinator_{n}": "counter" for n in counters},
                     **{f"rq_coordinator_{n}": "gauge" for n in gauges}}


def test_values_and_labels() -> None:
    text = render(_state())
    assert metric(text, "rq_coordinator_received_total", source="mqtt") == 7
    assert metric(text, "rq_coordinator_ingested_total", source="http") == 0
    assert metric(text, "rq_coordinator_duplicates_total") == 3
    assert metric(text, "rq_coordinator_dropped_total", reason=DROP_REASONS[0]) == 4
    assert metric(text, "rq_coordinator_status_invalid_total") == 1
    assert metric(text, "rq_coordinator_stored_envelopes") == 5
    assert metric(text, "rq_coordinator_ingest_queue") == 6
    assert metric(text, "rq_coordinator_mqtt_connected") == 1
    assert metric(text, "rq_coordinator_rebuilder_online", rebuilder="rb-beta") == 0
    assert metric(text, "rq_coordinator_catchup_errors_total", rebuilder="rb-beta") == 2
    assert metric(text, "rq_coordinator_mqtt_packets_dropped_total",
                  reason=PACKET_DROP_REASONS[0]) == 9
    samples = metric_samples(text)
    # every reason is listed, the ones never seen as 0
    dropped = {dict(k[1])["reason"] for k in samples if k[0] == "rq_coordinator_dropped_total"}
    assert dropped == set(DROP_REASONS)


def test_without_an_mqtt_link_packets_are_zero() -> None:
    text = render(_state(packets_dropped=None, mqtt_connected=False))
    assert metric(text, "rq_coordinator_mqtt_connected") == 0
    assert {metric(text, "rq_coordinator_mqtt_packets_dropped_total", reason=r)
            for r in PACKET_DROP_REASONS} == {0}
