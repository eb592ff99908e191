"""The node's /metrics: families, types and labels from one NodeState, read back with
prometheus_client's parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from rebuilder import __version__
from rebuilder.metrics import DURATION_BUCKETS, NodeState, render
from rebuilder.recovery import DiskStatus
from tests.support import metric, metric_samples

STATE = NodeState(
    node_id='rb-"odd"\nid', queued=4, running=1, backlog=2,
    verdicts={"reproduced": 5, "tampered": 1},
    kinds={"rebuild": 6, "revocation": 1},
    duration_buckets=(1, 2, 2, 3, 3, 3, 3, 3, 4), duration_count=5, duration_sum=9000.5,
    limits=({"limit": "memory", "enforced": False}, {"limit": "pids", "enforced": True}),
    disk=DiskStatus(free_bytes=10**9, min_free_bytes=10**8, paused=True, reason="full"),
)


def test_every_family_has_its_type() -> None:
    types = {f.name: f.type for f in text_string_to_metric_families(render(STATE))}
    assert types == {
        "rq_node_info": "gauge", "rq_queue_length": "gauge", "rq_running_builds": "gauge",
        "rq_builds": "counter", "rq_build_duration_seconds": "histogram",
        "rq_outbox_backlog": "gauge", "rq_attestations": "counter",
        "rq_sandbox_limit_enforced": "gauge", "rq_state_free_bytes": "gauge",
        "rq_state_min_free_bytes": "gauge", "rq_intake_paused": "gauge",
    }  # the parser names counters without their _total suffix


def test_values_and_labels() -> None:
    text = render(STATE)
    assert "# TYPE rq_builds_total counter" in text  # the exposed name keeps _total
    assert metric(text, "rq_node_info", id='rb-"odd"\nid', version=__version__) == 1
    assert metric(text, "rq_queue_length") == 4 and metric(text, "rq_running_builds") == 1
    assert metric(text, "rq_outbox_backlog") == 2
    # every verdict and kind is listed, the absent ones as 0
    assert metric(text, "rq_builds_total", verdict="reproduced") == 5
    assert metric(text, "rq_builds_total", verdict="failed") == 0
    assert metric(text, "rq_attestations_total", kind="failure") == 0
    assert metric(text, "rq_attestations_total", kind="revocation") == 1
    assert metric(text, "rq_sandbox_limit_enforced", limit="memory") == 0
    assert metric(text, "rq_sandbox_limit_enforced", limit="pids") == 1
    assert metric(text, "rq_intake_paused") == 1
    assert metric(text, "rq_state_free_bytes") == 10**9


def test_histogram_buckets_keep_their_bounds() -> None:
    samples = metric_samples(render(STATE))
    buckets = {dict(labels)["le"]: v for (name, labels), v in samples.items()
               if name == "rq_build_duration_seconds_bucket"}
    assert list(buckets) == ["1", "5", "15", "60", "300", "900", "1800", "3600", "7200", "+Inf"]
    assert list(buckets.values()) == [1, 2, 2, 3, 3, 3, 3, 3, 4, 5]
    assert samples[("rq_build_duration_seconds_sum", frozenset())] == 9000.5
    assert samples[("rq_build_duration_seconds_count", frozenset())] == 5
    assert len(DURATION_BUCKETS) == 9


def test_without_limits_or_disk_those_families_are_absent() -> None:
    bare = NodeState("rb-a", 0, 0, 0, {}, {}, (0,) * len(DURATION_BUCKETS), 0, 0.0)
    names = {f.name for f in text_string_to_metric_families(render(bare))}
    assert names.isdisjoint({"rq_sandbox_limit_enforced", "rq_state_free_bytes",
                             "rq_intake_paused"})
    assert "rq_queue_length" in names
