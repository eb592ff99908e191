"""Verdict classes end to end in the node: compare, outcome, statement, store migration."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rebuilder._schema import MIGRATIONS, _split_sql
from rebuilder.attest import NodeIdentity, rebuild_statement
from rebuilder.compare import compare_outputs
from rebuilder.db import Store
from rebuilder.outcome import OutputResult, RebuildOutcome
from tests.unit.rebuilder.node_helpers import failed, job, reproduced, sha
from verifier.debian import BUILD_TYPE, BUILD_TYPE_V1
from verifier.statement import RebuildStatement, parse_statement
from verifier.verdicts import classify, job_verdict

A, B, C = sha("a"), sha("b"), sha("c")
IDENTITY = NodeIdentity("rb-test", "http://127.0.0.1:1/v1/node", "0.test")


@pytest.mark.parametrize(
    ("rebuilt", "buildinfo", "published", "expected"),
    [
        (A, A, A, "reproduced"),
        (A, None, A, "reproduced"),  # the buildinfo does not list the file
        (A, A, B, "tampered"),  # we built what the buildinfo says; the repository serves B
        (A, B, B, "unreproducible"),  # buildinfo and repository agree; our build differs
        (A, B, C, "unreproducible"),
        (A, None, B, "unreproducible"),  # no buildinfo checksum to call it tampering
        (A, B, A, "unreproducible"),  # the buildinfo does not describe what it built
        (None, A, A, "missing-rebuild"),
    ],
)
def test_classify(rebuilt: str | None, buildinfo: str | None, published: str,
                  expected: str) -> None:
    assert classify(rebuilt, buildinfo, published) == expected


def test_job_verdict_is_the_worst_file() -> None:
    assert job_verdict(["reproduced", "reproduced"], False) == "reproduced"
    assert job_verdict(["reproduced", "missing-rebuild"], False) == "unreproducible"
    assert job_verdict(["unreproducible", "tampered"], False) == "tampered"
    assert job_verdict([], False) == "unreproducible"
    assert job_verdict(["reproduced"], True) == "failed"


def test_only_published_files_are_judged() -> None:
    c = compare_outputs(
        {"p_1_amd64.deb": A, "p-dbgsym_1_amd64.deb": B, "q_1_all.deb": C},
        {"p_1_amd64.deb": A, "r_1_amd64.deb": C},
        {"p_1_amd64.deb": A, "r_1_amd64.deb": C},
    )
    assert [(v.name, v.verdict) for v in c.verdicts] == [
        ("p_1_amd64.deb", "reproduced"), ("r_1_amd64.deb", "missing-rebuild")]
    assert c.unpublished == (("p-dbgsym_1_amd64.deb", B), ("q_1_all.deb", C))


def _outcome_with_byproduct() -> RebuildOutcome:
    j = job()
    base = reproduced(j)
    return replace(base, unpublished=(("hello-dbgsym_1.0-1_amd64.deb", sha("dbg")),))


def test_unpublished_files_are_byproducts_not_subjects() -> None:
    st = rebuild_statement(_outcome_with_byproduct(), IDENTITY, invocation_id="rb/1/1",
                           repository="r", reports={})
    assert [s.name for s in st.subjects] == ["hello_1.0-1_amd64.deb"]
    d = st.to_dict()
    assert d["predicate"]["buildDefinition"]["buildType"] == BUILD_TYPE
    names = [b["name"] for b in d["predicate"]["runDetails"]["byproducts"]]
    assert "unpublished:hello-dbgsym_1.0-1_amd64.deb" in names
    back = parse_statement(st.to_bytes())
    assert isinstance(back, RebuildStatement)
    assert [(u.name, u.sha256) for u in back.unpublished] == [
        ("hello-dbgsym_1.0-1_amd64.deb", sha("dbg"))]
    assert back.verdict == "reproduced"


def test_tampered_job_statement() -> None:
    j = job()
    name = next(iter(j.published))
    out = OutputResult(name, "tampered", rebuilt=A, buildinfo=A, repository=j.published[name][0])
    st = rebuild_statement(replace(reproduced(j), outputs=(out,)), IDENTITY,
                           invocation_id="rb/1/1", repository="r", reports={})
    back = parse_statement(st.to_bytes())
    assert isinstance(back, RebuildStatement)
    assert back.verdict == "tampered" and back.verdicts[0].verdict == "tampered"
    assert [s.sha256 for s in back.subjects] == [A]


def test_no_published_file_rebuilt_is_a_failure() -> None:
    j = job()
    name = next(iter(j.published))
    out = OutputResult(name, "missing-rebuild", None, None, j.published[name][0])
    outcome = replace(reproduced(j), outputs=(out,), unpublished=(("other_1_amd64.deb", A),))
    assert outcome.verdict == "failed"
    st = rebuild_statement(outcome, IDENTITY, invocation_id="rb/1/1", repository="r", reports={})
    assert st.failed and st.subjects == () and "none of the published files" in (st.failure or "")


def test_unfetchable_buildinfo_records_no_digest() -> None:
    st = rebuild_statement(failed(job()), IDENTITY, invocation_id="rb/1/1", repository="r",
                           reports={})
    binfo = st.to_dict()["predicate"]["buildDefinition"]["externalParameters"]["buildinfo"]
    assert "digest" not in binfo
    back = parse_statement(st.to_bytes())
    assert isinstance(back, RebuildStatement) and back.buildinfo_sha256 is None


def test_a_rebuild_without_buildinfo_digest_is_refused() -> None:
    st = rebuild_statement(reproduced(job()), IDENTITY, invocation_id="rb/1/1", repository="r",
                           reports={})
    d = st.to_dict()
    del d["predicate"]["buildDefinition"]["externalParameters"]["buildinfo"]["digest"]
    import json

    from verifier.errors import BadDataError

    with pytest.raises(BadDataError, match=r"buildinfo\.digest"):
        parse_statement(json.dumps(d).encode())


def test_v1_statements_read_in_todays_words() -> None:
    st = rebuild_statement(reproduced(job()), IDENTITY, invocation_id="rb/1/1", repository="r",
                           reports={})
    d = st.to_dict()
    d["predicate"]["buildDefinition"]["buildType"] = BUILD_TYPE_V1
    byproducts = d["predicate"]["runDetails"]["byproducts"]
    byproducts[0]["annotations"]["verdict"] = "mismatch"
    byproducts.append({"name": "verdict:x_1_amd64.deb", "digest": {"sha256": B},
                       "annotations": {"verdict": "missing-upstream"}})
    import json

    back = parse_statement(json.dumps(d).encode())
    assert isinstance(back, RebuildStatement)
    assert [(v.name, v.verdict) for v in back.verdicts] == [
        ("hello_1.0-1_amd64.deb", "unreproducible")]
    assert back.verdict == "unreproducible"
    # v2 statements use only today's words
    d["predicate"]["buildDefinition"]["buildType"] = BUILD_TYPE
    from verifier.errors import BadDataError

    with pytest.raises(BadDataError, match="'mismatch' is not one of"):
        parse_statement(json.dumps(d).encode())


async def test_migration_maps_mismatch_and_keeps_references(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (2)")
    for script in MIGRATIONS[:2]:
        for statement in _split_sql(script):
            conn.execute(statement)
    conn.execute(
        "INSERT INTO jobs (id, repository, source, version, arch, buildinfo_url, published,"
        " state, queued_at) VALUES (1, 'local', 'hello', '1.0-1', 'amd64', 'http://x', '{}',"
        " 'done', 't')"
    )
    for bid, verdict in ((1, "mismatch"), (2, "reproduced"), (3, "failed")):
        conn.execute(
            "INSERT INTO builds (id, job_id, attempt, invocation_id, verdict, environment,"
            " started_at, finished_at, duration_s) VALUES (?, 1, ?, ?, ?, 'host', 't', 't', 1)",
            (bid, bid, f"rb/1/{bid}", verdict),
        )
    conn.execute("INSERT INTO outputs (build_id, name, verdict) VALUES (1, 'h.deb', 'mismatch')")
    conn.execute(
        "INSERT INTO attestations (envelope_sha256, envelope, kind, build_id, created_at)"
        " VALUES ('e', x'00', 'rebuild', 1, 't')"
    )
    conn.commit()
    conn.close()

    store = await Store.open(path)
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = ON")
    assert conn.execute("SELECT id, verdict FROM builds ORDER BY id").fetchall() == [
        (1, "unreproducible"), (2, "reproduced"), (3, "failed")]
    assert conn.execute("SELECT verdict FROM outputs").fetchall() == [("unreproducible",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    schema = " ".join(r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE sql"))
    assert "builds_copy" not in schema
    conn.execute(
        "INSERT INTO builds (job_id, attempt, invocation_id, verdict, environment, started_at,"
        " finished_at, duration_s) VALUES (1, 4, 'rb/1/4', 'tampered', 'host', 't', 't', 1)"
    )
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO builds (job_id, attempt, invocation_id, verdict, environment,"
            " started_at, finished_at, duration_s)"
            " VALUES (1, 5, 'rb/1/5', 'mismatch', 'host', 't', 't', 1)"
        )
    with pytest.raises(sqlite3.IntegrityError):  # outputs still reference builds
        conn.execute("INSERT INTO outputs (build_id, name, verdict) VALUES (99, 'x', 'tampered')")
    conn.close()
    _ = datetime.now(UTC)
