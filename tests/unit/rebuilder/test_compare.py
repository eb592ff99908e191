"""The verdict table of compare_outputs (pure): only published files are judged."""

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
    "rebuilt-differs": (B, A, A, "unreproducible"),
    "repository-tampered": (A, A, B, "tampered"),
    "buildinfo-disagrees": (A, B, A, "unreproducible"),
    "all-differ": (A, B, C, "unreproducible"),
    "not-in-buildinfo-differs": (A, None, B, "unreproducible"),
    "not-rebuilt": (None, A, A, "missing-rebuild"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_verdicts(case: str) -> None:
    rebuilt, buildinfo, published, expected = CASES[case]
    c = compare_outputs(
        {DEB: rebuilt} if rebuilt else {},
        {DEB: buildinfo} if buildinfo else {},
        {DEB: published},
    )
    (v,) = c.verdicts
    assert (v.name, v.verdict) == (DEB, expected)
    assert (v.rebuilt, v.buildinfo, v.repository) == (rebuilt, buildinfo, published)
    assert c.unpublished == ()


def test_only_buildinfo_is_not_judged() -> None:
    c = compare_outputs({}, {DEB: A}, {})
    assert c.verdicts == () and c.unpublished == ()


def test_a_rebuilt_file_not_published_is_a_byproduct() -> None:
    c = compare_outputs({DEB: A}, {DEB: A}, {})
    assert c.verdicts == () and c.unpublished == ((DEB, A),)


def test_unpublished_dbgsym_is_a_byproduct_but_a_published_one_is_judged() -> None:
    dbg = "hello-dbgsym_1.0_amd64.deb"
    c = compare_outputs({DEB: A, dbg: B}, {DEB: A, dbg: B}, {DEB: A})
    assert [(v.name, v.verdict) for v in c.verdicts] == [(DEB, "reproduced")]
    assert c.unpublished == ((dbg, B),)
    c = compare_outputs({DEB: A, dbg: B}, {DEB: A, dbg: B}, {DEB: A, dbg: C})
    assert [(v.name, v.verdict) for v in c.verdicts] == [(dbg, "tampered"), (DEB, "reproduced")]


def test_sorted_by_name() -> None:
    names = ["b_1_all.deb", "a_1_all.deb", "c_1_all.deb"]
    c = compare_outputs(dict.fromkeys(names, A), {}, dict.fromkeys(names, A))
    assert [v.name for v in c.verdicts] == sorted(names)


def test_other_architecture_outputs_belong_to_another_job() -> None:
    """An ``amd64 all`` build judged for the amd64 job: the unpublished _all.deb is a byproduct."""
    doc = "hello-doc_1.0_all.deb"
    rebuilt = {DEB: A, doc: B}
    c = compare_outputs(rebuilt, rebuilt, {DEB: A})
    assert [(v.name, v.verdict) for v in c.verdicts] == [(DEB, "reproduced")]
    assert c.unpublished == ((doc, B),)
    # published with the job, it is judged
    c = compare_outputs(rebuilt, rebuilt, {DEB: A, doc: C})
    assert [(v.name, v.verdict) for v in c.verdicts] == [(doc, "tampered"), (DEB, "reproduced")]
    # a published file the build did not produce is a mismatch for that file
    c = compare_outputs({DEB: A}, rebuilt, {DEB: A, doc: B})
    assert [(v.name, v.verdict) for v in c.verdicts] == [
        (doc, "missing-rebuild"), (DEB, "reproduced")]
