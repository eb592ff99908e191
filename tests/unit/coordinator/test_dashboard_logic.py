"""Pure parts of the dashboard: the per-artifact quorum table, the report cache, log links."""

from __future__ import annotations

from typing import Any

from coordinator.dashboard import ReportCache, _log_url, artifact_table

PUB, OTHER = "a" * 64, "b" * 64


def entry(rebuilder: str, rebuilt: str, revoked: bool = False, kind: str = "rebuild",
          env: str = "e") -> dict[str, Any]:
    return {
        "rebuilder": rebuilder, "kind": kind, "revoked": revoked, "envelope": env,
        "invocation": f"{rebuilder}/1/1",
        "outputs": [{"name": "x.deb", "rebuilt": rebuilt, "repository": PUB,
                     "verdict": "reproduced" if rebuilt == PUB else "unreproducible",
                     "buildinfo": PUB, "report_url": None}],
    }


def test_agreeing_rebuilders_are_those_with_the_published_digest() -> None:
    table = artifact_table(
        [entry("rb-a", PUB), entry("rb-b", OTHER), entry("rb-c", PUB)], ["rb-a", "rb-b", "rb-c"]
    )
    assert len(table) == 1
    assert table[0]["upstream"] == PUB
    assert table[0]["agreeing"] == ["rb-a", "rb-c"]
    assert [r for r, o in table[0]["cells"] if o and o["verdict"] == "unreproducible"] == ["rb-b"]


def test_revoked_and_failed_do_not_count_and_later_replaces_earlier() -> None:
    results = [
        entry("rb-a", PUB, revoked=True),
        entry("rb-b", OTHER),
        entry("rb-b", PUB, env="later"),
        {**entry("rb-c", PUB), "kind": "failure", "outputs": []},
    ]
    table = artifact_table(results, ["rb-a", "rb-b", "rb-c"])
    assert table[0]["agreeing"] == ["rb-b"]
    cells = dict(table[0]["cells"])
    assert cells["rb-a"] is None and cells["rb-c"] is None
    assert cells["rb-b"]["envelope"] == "later"


def test_report_cache_is_bounded_by_size() -> None:
    cache = ReportCache(limit=10)
    cache.put("a", b"12345")
    cache.put("b", b"12345")
    assert cache.get("a") == b"12345"  # a is now the most recent
    cache.put("c", b"123")
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    cache.put("huge", b"x" * 11)
    assert cache.get("huge") is None and cache.size <= 10


def test_log_links() -> None:
    assert _log_url("http://n", "rb-a/12/1") == "http://n/v1/builds/12/log"
    assert _log_url("http://n", "b-7") == "http://n/v1/builds/b-7/log"
    assert _log_url("http://n", "../../etc") is None
    assert _log_url(None, "b-7") is None


def test_one_timestamp_format() -> None:
    from coordinator.dashboard import timestamp

    assert timestamp("2026-11-21T12:00:00Z") == "2026-11-21 12:00:00 UTC"
    assert timestamp("2026-11-21T13:00:00+01:00") == "2026-11-21 12:00:00 UTC"
    assert timestamp(0.0) == "1970-01-01 00:00:00 UTC"
    assert timestamp(None) == "never"
    assert timestamp("garbage") == "garbage"


def test_chart_one_bar_per_day_outcomes_only() -> None:
    from datetime import UTC, datetime

    from coordinator.dashboard import chart

    today = datetime(2026, 11, 30, tzinfo=UTC)
    bars = chart([("2026-11-29", "reproduced", 3), ("2026-11-29", "unreproducible", 1),
                  ("2026-11-30", "error", 5)], today, days=3)
    assert [b["day"] for b in bars] == ["2026-11-28", "2026-11-29", "2026-11-30"]
    assert bars[0]["share"] is None and bars[0]["height"] == 0
    assert bars[1]["share"] == 0.75 and bars[1]["height"] == 45 and bars[1]["outcomes"] == 4
    assert bars[2]["share"] is None  # configuration errors are no build outcome


def test_published_digest_counts_each_rebuilder_once() -> None:
    """Five statements from one rebuilder claiming another published digest do not outvote two
    honest rebuilders (before, each statement was one vote)."""
    liar = [
        {**entry("rb-liar", OTHER, env=f"e{i}"),
         "outputs": [{**entry("rb-liar", OTHER)["outputs"][0], "repository": OTHER}]}
        for i in range(5)
    ]
    table = artifact_table(
        [*liar, entry("rb-a", PUB), entry("rb-b", PUB)], ["rb-liar", "rb-a", "rb-b"]
    )
    assert table[0]["upstream"] == PUB
    assert table[0]["agreeing"] == ["rb-a", "rb-b"]
    assert table[0]["upstream_disputed"]
