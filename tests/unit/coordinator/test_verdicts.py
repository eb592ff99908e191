"""The dashboard's verdict classes, from per-output digests: one named case per class."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.verdicts import (
    envelope_class,
    open_conflicts,
    output_class,
    reproducibility,
    tampered_artifacts,
)

PUB, BI, OTHER = "a" * 64, "b" * 64, "c" * 64


@pytest.mark.parametrize(
    ("verdict", "rebuilt", "buildinfo", "repository", "expected"),
    [
        ("reproduced", PUB, PUB, PUB, "reproduced"),
        ("mismatch", OTHER, PUB, PUB, "unreproducible"),  # old statements say mismatch
        ("unreproducible", OTHER, PUB, PUB, "unreproducible"),
        ("mismatch", BI, BI, PUB, "tampered"),  # computed before statements say so
        ("tampered", BI, BI, PUB, "tampered"),
        ("missing-rebuild", None, PUB, PUB, "unreproducible"),
        ("missing-upstream", PUB, PUB, None, "unreproducible"),
    ],
)
def test_output_class(verdict: str, rebuilt: str | None, buildinfo: str | None,
                      repository: str | None, expected: str) -> None:
    assert output_class(verdict, rebuilt, buildinfo, repository) == expected


def out(verdict: str, rebuilt: str, buildinfo: str = PUB, repository: str = PUB,
        name: str = "x.deb") -> dict[str, Any]:
    return {"name": name, "verdict": verdict, "rebuilt": rebuilt, "buildinfo": buildinfo,
            "repository": repository}


def test_envelope_class() -> None:
    assert envelope_class("revocation", None, []) is None
    assert envelope_class("failure", "build: dpkg-buildpackage exited 2", []) == "failed"
    assert envelope_class("failure", "fetch: buildinfo answered HTTP 404", []) == "error"
    assert envelope_class("failure", "environment: no snapshot", []) == "error"
    assert envelope_class("rebuild", None, [out("reproduced", PUB)]) == "reproduced"
    assert envelope_class(
        "rebuild", None, [out("reproduced", PUB), out("mismatch", OTHER, name="y")]
    ) == "unreproducible"
    assert envelope_class(
        "rebuild", None, [out("mismatch", OTHER), out("mismatch", BI, BI, PUB, "y")]
    ) == "tampered"


def test_reproducibility_counts_only_build_outcomes() -> None:
    assert reproducibility({}) is None
    assert reproducibility({"error": 7}) is None  # configuration 404s are no outcome
    assert reproducibility({"reproduced": 1, "failed": 1, "error": 50}) == 0.5
    assert reproducibility({"reproduced": 1, "tampered": 1, "unreproducible": 2}) == 0.5


def entry(rebuilder: str, o: dict[str, Any], revoked: bool = False) -> dict[str, Any]:
    return {"rebuilder": rebuilder, "kind": "rebuild", "revoked": revoked,
            "envelope": f"env-{rebuilder}", "outputs": [o]}


def test_tampered_artifacts_latest_unrevoked_only() -> None:
    t = out("mismatch", BI, BI, PUB)
    found = tampered_artifacts([entry("rb-a", t), entry("rb-b", t), entry("rb-c", out(
        "reproduced", PUB))])
    assert found == [{"artifact": "x.deb", "buildinfo": BI, "repository": PUB,
                      "rebuilders": ["rb-a", "rb-b"], "envelope": "env-rb-a"}]
    assert tampered_artifacts([entry("rb-a", t, revoked=True)]) == []
    # a later attestation (the repository was fixed) replaces the earlier one
    fixed = out("reproduced", BI, BI, BI)
    assert tampered_artifacts([entry("rb-a", t), entry("rb-a", fixed)]) == []


def test_disagreement_resolved_by_revocation() -> None:
    conflicts = [{"rebuilder": "rb-a", "sha256": PUB, "envelope": "e1"},
                 {"rebuilder": "rb-b", "sha256": OTHER, "envelope": "e2"}]
    assert open_conflicts(conflicts, {}) == conflicts
    assert open_conflicts(conflicts, {"e2": "compromised builder"}) == []
