"""Verdict classes the dashboard shows: reproduced, unreproducible, tampered, failed (no I/O).

An attestation's per-output annotations carry three digests: what the rebuilder built, what the
buildinfo declares and what the repository serves. From them::

    output_class(verdict, rebuilt, buildinfo, repository)
    -> "reproduced"      rebuilt = published
       "tampered"        rebuilt = buildinfo, but the repository serves other bytes
       "unreproducible"  anything else (old statements say "mismatch")

A failed build is ``failed`` when the build itself failed, and ``error`` when it never got to
build (the buildinfo or sources could not be fetched, the environment could not be pinned): an
``error`` is about the node's configuration or the network, not the package, so it does not count
toward reproducibility.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

__all__ = [
    "CLASSES",
    "OUTCOMES",
    "Class",
    "envelope_class",
    "open_conflicts",
    "output_class",
    "reproducibility",
    "tampered_artifacts",
]

Class = Literal["reproduced", "unreproducible", "tampered", "failed", "error"]
CLASSES: tuple[Class, ...] = ("reproduced", "unreproducible", "tampered", "failed", "error")
# Real build outcomes: what the reproducibility percentage counts.
OUTCOMES: tuple[Class, ...] = ("reproduced", "unreproducible", "tampered", "failed")
# Failure stages (the statement's failure text starts with "<stage>: ") that never built anything.
_NOT_BUILT = ("fetch:", "environment:")


def output_class(
    verdict: str, rebuilt: str | None, buildinfo: str | None, repository: str | None
) -> Class:
    if verdict == "tampered" or (
        rebuilt is not None
        and rebuilt == buildinfo
        and repository is not None
        and repository != buildinfo
    ):
        return "tampered"
    if verdict == "reproduced":
        return "reproduced"
    return "unreproducible"


def envelope_class(
    kind: str, failure: str | None, outputs: Iterable[Mapping[str, Any]]
) -> Class | None:
    """The class of one stored attestation (None for a revocation)."""
    if kind == "revocation":
        return None
    if kind == "failure":
        return "error" if (failure or "").startswith(_NOT_BUILT) else "failed"
    classes = {
        output_class(o["verdict"], o["rebuilt"], o["buildinfo"], o["repository"])
        for o in outputs
    }
    if "tampered" in classes:
        return "tampered"
    if classes == {"reproduced"}:
        return "reproduced"
    return "unreproducible"


def reproducibility(counts: Mapping[str, int]) -> float | None:
    """Share of real build outcomes whose rebuild matched the buildinfo (tampered ones did:
    the repository is at fault there, not the package). None when there is no outcome yet."""
    total = sum(counts.get(c, 0) for c in OUTCOMES)
    if not total:
        return None
    return (counts.get("reproduced", 0) + counts.get("tampered", 0)) / total


def tampered_artifacts(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Artifacts whose rebuilders reproduced the buildinfo while the repository serves other
    bytes, from ``Store.package_results`` (oldest first; each rebuilder's latest unrevoked
    rebuild counts, as on the package page)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in results:
        if entry["revoked"] or entry["kind"] != "rebuild":
            continue
        for o in entry["outputs"]:
            latest[(o["name"], entry["rebuilder"])] = {**o, "envelope": entry["envelope"]}
    found: dict[str, dict[str, Any]] = {}
    for (name, rebuilder), o in sorted(latest.items()):
        if output_class(o["verdict"], o["rebuilt"], o["buildinfo"], o["repository"]) != "tampered":
            continue
        a = found.setdefault(
            name,
            {"artifact": name, "buildinfo": o["buildinfo"], "repository": o["repository"],
             "rebuilders": [], "envelope": o["envelope"]},
        )
        a["rebuilders"].append(rebuilder)
    return list(found.values())


def open_conflicts(
    conflicts: list[dict[str, str]], revoked: Mapping[str, str]
) -> list[dict[str, str]]:
    """The conflicts of a disagreement that still stand once revoked attestations are left out;
    empty when what is left agrees (the disagreement was resolved by revocation)."""
    live = [c for c in conflicts if c["envelope"] not in revoked]
    return live if len({c["sha256"] for c in live}) > 1 else []
