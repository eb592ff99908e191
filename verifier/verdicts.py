"""The verdict vocabulary every surface uses (ARCHITECTURE §4.2): pure, no I/O.

Per published file, what a rebuild found::

    reproduced      rebuilt = published (and = the buildinfo's checksum, when it lists the file)
    unreproducible  rebuilt differs from the buildinfo's own checksum (or, with none, from the
                    published file): the build is not reproducible here
    tampered        rebuilt = the buildinfo's checksum, but the repository serves other bytes:
                    the attack this system exists to catch
    missing-rebuild the repository publishes the file and this rebuild did not produce it

Per job, the worst of its files: ``failed`` (no comparison at all) > ``tampered`` >
``unreproducible`` (which a ``missing-rebuild`` file also makes) > ``reproduced``::

    classify(rebuilt, buildinfo, published)         # 'tampered'
    job_verdict(["reproduced", "tampered"], False)  # 'tampered'

Statements of buildType v1 said ``mismatch`` for both unreproducible and tampered files and
``missing-upstream`` for unpublished ones; ``read_v1`` maps them (``mismatch`` reads as
``unreproducible``; ``missing-upstream`` entries are byproducts, not verdicts).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

__all__ = [
    "JOB_VERDICTS",
    "OUTPUT_VERDICTS",
    "JobVerdict",
    "OutputVerdictKind",
    "classify",
    "job_verdict",
    "read_v1",
]

OutputVerdictKind = Literal["reproduced", "unreproducible", "tampered", "missing-rebuild"]
JobVerdict = Literal["reproduced", "unreproducible", "tampered", "failed"]
OUTPUT_VERDICTS: frozenset[str] = frozenset(
    {"reproduced", "unreproducible", "tampered", "missing-rebuild"}
)
JOB_VERDICTS: tuple[JobVerdict, ...] = ("reproduced", "unreproducible", "tampered", "failed")
_V1 = {
    "reproduced": "reproduced",
    "mismatch": "unreproducible",
    "missing-rebuild": "missing-rebuild",
}


def classify(rebuilt: str | None, buildinfo: str | None, published: str) -> OutputVerdictKind:
    """The verdict for one published file, from the three digests (None: not there)."""
    if rebuilt is None:
        return "missing-rebuild"
    if rebuilt == published and (buildinfo is None or buildinfo == rebuilt):
        return "reproduced"
    if buildinfo is not None and buildinfo == rebuilt:
        return "tampered"  # we built what the buildinfo says; the repository serves other bytes
    return "unreproducible"


def job_verdict(outputs: Iterable[str], failed: bool) -> JobVerdict:
    """The class of one job from its files' verdicts (no file judged: unreproducible)."""
    if failed:
        return "failed"
    seen = set(outputs)
    if "tampered" in seen:
        return "tampered"
    if not seen or seen != {"reproduced"}:
        return "unreproducible"
    return "reproduced"


def read_v1(verdict: str) -> OutputVerdictKind | None:
    """A v1 statement's verdict word in today's words; None for a ``missing-upstream`` entry
    (an unpublished file, which is now a byproduct). Raises KeyError for anything else."""
    if verdict == "missing-upstream":
        return None
    return _V1[verdict]  # type: ignore[return-value]  # the values are OutputVerdictKind
