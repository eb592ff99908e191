"""Log inconsistencies the monitor recorded (``coordinator.monitor``), made readable for the
dashboard: what kind, what was said, and what was inconsistent (the checkpoints' sizes and
roots before and now, the envelope, the witness's root). Pure: dicts in, dicts out::

    views = [inconsistency_view(item) for item in await store.log_inconsistencies()]
"""

from __future__ import annotations

from typing import Any

__all__ = ["KIND_LABELS", "inconsistency_view"]

KIND_LABELS = {
    "split-view": "Split view",
    "rollback": "Rollback",
    "invalid-checkpoint": "Invalid checkpoint",
    "invalid-entry": "Invalid log entry",
    "unlogged-envelope": "Envelope served but not logged",
    "logged-not-served": "Logged but never served",
}
_MAX_TEXT = 2000


def _checkpoint(note: object) -> str | None:
    """``size N, root R`` of a checkpoint note's text (origin, size, root lines)."""
    if not isinstance(note, str) or not note:
        return None
    lines = note.split("\n")
    if len(lines) < 3:
        return note[:_MAX_TEXT]
    return f"size {lines[1][:30]}, root {lines[2][:60]} ({lines[0][:200]})"


def inconsistency_view(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` (a ``Store.log_inconsistencies`` row) plus ``label`` and ``facts``: the
    (label, value) pairs of its evidence worth showing."""
    raw = item.get("evidence")
    evidence: dict[str, Any] = raw if isinstance(raw, dict) else {}
    facts: list[tuple[str, str]] = []
    before, now = _checkpoint(evidence.get("old")), _checkpoint(evidence.get("new"))
    if before:
        facts.append(("checkpoint seen before", before))
    if now:
        facts.append(("checkpoint shown now", now))
    for key, label in (("envelope", "envelope sha256"), ("witness_root", "witness's root"),
                       ("checkpoint", "checkpoint served")):
        value = evidence.get(key)
        if isinstance(value, str) and value:
            facts.append((label, value[:_MAX_TEXT]))
    kind = str(item.get("kind", ""))
    return {**item, "label": KIND_LABELS.get(kind, kind), "facts": facts}
