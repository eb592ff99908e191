"""``rebuilder.attest``: what one finished attempt's statement says (ARCHITECTURE §4.2, §4.3).

Pure values in and out: subjects are the published files this node rebuilt, byproducts are
``unpublished``, a failure has no subject and names its stage, reports are referenced by URL
and digest, and a revocation names the statement it withdraws.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from rebuilder.attest import (
    MAX_FAILURE_CHARS,
    NodeIdentity,
    ReportRef,
    rebuild_statement,
    revocation_statement,
    sign_statement,
)
from rebuilder.outcome import OutputResult, RebuildOutcome
from tests.unit.rebuilder.node_helpers import failed, job, reproduced, sha
from verifier.errors import BadDataError
from verifier.keys import generate_private_key
from verifier.statement import RevocationStatement, Subject, parse_statement

NODE = NodeIdentity("rb-test", "https://rb-test.example/", "0.1.0")
KEY = generate_private_key()
TWO = {
    "a_1.0-1_amd64.deb": (sha("a"), "http://x/pool/a.deb"),
    "b_1.0-1_amd64.deb": (sha("b"), "http://x/pool/b.deb"),
}


def _statement(outcome: RebuildOutcome, reports: dict[str, ReportRef] | None = None):  # type: ignore[no-untyped-def]
    return rebuild_statement(outcome, NODE, invocation_id="rb-test/7/2", repository="local",
                             reports=reports or {})


def test_subjects_are_the_published_files_this_node_rebuilt() -> None:
    base = reproduced(job(published=TWO))
    # b was not produced by this build: a verdict without a subject
    outputs = (base.outputs[0], replace(base.outputs[1], verdict="missing-rebuild",
                                        rebuilt=None))
    st = _statement(replace(base, outputs=outputs,
                            unpublished=(("a-dbgsym_1.0-1_amd64.deb", sha("dbg")),)))
    assert st.failure is None
    assert st.subjects == (Subject("a_1.0-1_amd64.deb", sha("a")),)
    assert [(v.name, v.verdict, v.rebuilt) for v in st.verdicts] == [
        ("a_1.0-1_amd64.deb", "reproduced", sha("a")),
        ("b_1.0-1_amd64.deb", "missing-rebuild", None),
    ]
    # a byproduct the repository does not publish is recorded, never a subject
    assert st.unpublished == (Subject("a-dbgsym_1.0-1_amd64.deb", sha("dbg")),)
    assert (st.invocation_id, st.builder_id, st.builder_version) == (
        "rb-test/7/2", NODE.builder_id, NODE.version)
    assert parse_statement(sign_statement(st.to_bytes(), KEY).payload) == st


def test_a_build_that_produced_none_of_the_published_files_is_a_failure() -> None:
    base = reproduced(job())
    outputs = tuple(replace(o, verdict="missing-rebuild", rebuilt=None) for o in base.outputs)
    st = _statement(replace(base, outputs=outputs))
    assert st.failure == (
        "internal: the build finished but produced none of the published files")
    assert st.subjects == ()
    assert st.failed


@pytest.mark.parametrize(("stage", "prefix"), [("build", "build: "), (None, "internal: ")])
def test_a_failure_names_its_stage_has_no_subject_and_is_clipped(stage: str | None,
                                                                 prefix: str) -> None:
    long = "x" * (MAX_FAILURE_CHARS * 2)
    outcome = replace(reproduced(job()), failure=long, failure_stage=stage)  # type: ignore[arg-type]
    st = _statement(outcome)
    assert st.subjects == () and st.verdicts == ()
    assert st.failure is not None and st.failure.startswith(prefix)
    assert len(st.failure) == MAX_FAILURE_CHARS and st.failure.endswith("…")
    assert parse_statement(sign_statement(st.to_bytes(), KEY).payload) == st


def test_a_failure_without_the_buildinfo_carries_no_digest_of_it() -> None:
    st = _statement(failed(job()))
    assert st.buildinfo_sha256 is None and st.failure == "fetch: HTTP 404 for the buildinfo"


def test_a_report_is_referenced_by_url_and_digest_on_its_output_only() -> None:
    base = reproduced(job(published=TWO))
    outputs = (replace(base.outputs[0], verdict="unreproducible", rebuilt=sha("other")),
               base.outputs[1])
    ref = ReportRef("https://rb-test.example/v1/reports/7-2-0.html", sha("report"))
    st = _statement(replace(base, outputs=outputs), {"a_1.0-1_amd64.deb": ref})
    by_name = {v.name: v for v in st.verdicts}
    assert (by_name["a_1.0-1_amd64.deb"].report_url,
            by_name["a_1.0-1_amd64.deb"].report_sha256) == (ref.url, ref.sha256)
    assert (by_name["b_1.0-1_amd64.deb"].report_url,
            by_name["b_1.0-1_amd64.deb"].report_sha256) == (None, None)


def test_the_environment_is_recorded_unless_the_pipeline_said_it() -> None:
    base = reproduced(job())
    assert _statement(base).internal_parameters["environment"] == base.environment
    said = replace(base, internal_parameters={"environment": "mmdebstrap:bookworm"})
    assert _statement(said).internal_parameters["environment"] == "mmdebstrap:bookworm"


def test_revocation_names_the_statement_and_the_node() -> None:
    when = datetime(2026, 3, 1, tzinfo=UTC)
    rv = revocation_statement(sha("statement"), "built from a compromised mirror", NODE, when)
    assert rv == RevocationStatement(revoked=sha("statement"),
                                     reason="built from a compromised mirror",
                                     builder_id=NODE.builder_id, revoked_on=when)
    assert parse_statement(sign_statement(rv.to_bytes(), KEY).payload) == rv
    with pytest.raises(BadDataError, match="revoked statement digest"):
        revocation_statement("not-a-digest", "why", NODE, when)


def test_output_result_without_a_rebuilt_file_is_never_a_subject() -> None:
    """The subject list is what verifiers match installed files against: an output this node
    did not build must not appear there, whatever its verdict says."""
    base = reproduced(job(published=TWO))
    outputs = tuple(OutputResult(o.name, "reproduced", None, o.buildinfo, o.repository)
                    for o in base.outputs)
    st = _statement(replace(base, outputs=outputs))
    assert st.subjects == () and st.failed
