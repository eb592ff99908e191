"""The verdict table of compare_outputs (pure)."""

from __future__ import annotations

import pytest

from rebuilder.compare import compare_outputs
from verifier.statement import Digest

A, B, C = Digest("a" * 64), Digest("b" * 64), Digest("c" * 64)
DEB = "hello_1.0_amd64.deb"

CASES = {
    # name: (rebuilt, buildinfo, published, expected verdict)
    "all-equal": (A, A, A, "reproduced"),
    "not-in-buildinfo": (A, None, A, "reproduced"),
    "rebuilt-differs": (B, A, A, "mismatch"),
    "repository-tampered": (A, A, B, "mismatch"),
    "buildinfo-disagrees": (A, B, A, "mismatch"),
    "all-differ": (A, B, C, "mismatch"),
    "not-published": (A, A, None, "missing-upstream"),
    "not-rebuilt": (None, A, A, "missing-rebuild"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_verdicts(case: str) -> None:
    rebuilt, buildinfo, published, expected = CASES[case]
    (v,) = compare_outputs(
        {DEB: rebuilt} if rebuilt else {},
        {DEB: buildinfo} if buildinfo else {},
        {DEB: published} if published else {},
    )
    assert (v.name, v.verdict) == (DEB, expected)
    assert (v.rebuilt, v.buildinfo, v.repository) == (rebuilt, buildinfo, published)


def test_only_buildinfo_is_not_judged() -> None:
    assert compare_outputs({}, {DEB: A}, {}) == []


def test_unpublished_dbgsym_is_not_judged_but_published_one_is() -> None:
    dbg = "hello-dbgsym_1.0_amd64.deb"
    verdicts = compare_outputs({DEB: A, dbg: B}, {DEB: A, dbg: B}, {DEB: A})
    assert [(v.name, v.verdict) for v in verdicts] == [(DEB, "reproduced")]
    verdicts = compare_outputs({DEB: A, dbg: B}, {DEB: A, dbg: B}, {DEB: A, dbg: C})
    assert [(v.name, v.verdict) for v in verdicts] == [(dbg, "mismatch"), (DEB, "reproduced")]


def test_sorted_by_name() -> None:
    names = ["b_1_all.deb", "a_1_all.deb", "c_1_all.deb"]
    verdicts = compare_outputs(dict.fromkeys(names, A), {}, dict.fromkeys(names, A))
    assert [v.name for v in verdicts] == sorted(names)


def test_other_architecture_outputs_belong_to_another_job() -> None:
    """An ``amd64 all`` build judged for the amd64 job: the unpublished _all.deb is not judged."""
    doc = "hello-doc_1.0_all.deb"
    rebuilt = {DEB: A, doc: B}
    verdicts = compare_outputs(rebuilt, rebuilt, {DEB: A}, architecture="amd64")
    assert [(v.name, v.verdict) for v in verdicts] == [(DEB, "reproduced")]
    # published with the job, it is judged
    verdicts = compare_outputs(rebuilt, rebuilt, {DEB: A, doc: C}, architecture="amd64")
    assert [(v.name, v.verdict) for v in verdicts] == [(doc, "mismatch"), (DEB, "reproduced")]
    # a missing output of the job's own architecture still counts
    verdicts = compare_outputs({doc: B}, rebuilt, {}, architecture="all")
    assert [(v.name, v.verdict) for v in verdicts] == [(doc, "missing-upstream")]
