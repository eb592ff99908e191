"""The node never signs what a verifier would refuse (issue 13): one validation path for
building and parsing statements, and a parse of every payload before it is signed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rebuilder.attest import NodeIdentity, rebuild_statement, sign_statement
from tests.unit.rebuilder.node_helpers import failed, job, reproduced, sha
from verifier.errors import BadDataError
from verifier.keys import generate_private_key
from verifier.statement import RebuildStatement, parse_statement

KEY = generate_private_key()
NODE = NodeIdentity("rb-test", "https://rb-test.example/", "0.1.0")


def statement_of(outcome, **kw):  # type: ignore[no-untyped-def]
    return rebuild_statement(outcome, NODE, invocation_id=kw.get("invocation", "rb-test/1/1"),
                             repository=kw.get("repository", "local"), reports={})


def test_long_buildinfo_uri_is_refused_before_signing() -> None:
    """Before: built and signed, then refused by every verifier (limit 2048 on parsing only)."""
    j = replace(job(), buildinfo_url="http://x.example/" + "a" * 3000)
    with pytest.raises(BadDataError, match="buildinfo uri"):
        statement_of(reproduced(j))


def test_an_output_name_verifiers_refuse_is_signed_as_a_failure_naming_the_rule() -> None:
    j = job(published={"evil name.deb": (sha("x"), "http://x/pool/a.deb")})
    st_ = statement_of(reproduced(j))
    assert st_.failed and st_.failure is not None
    assert st_.failure.startswith("internal: the result could not be attested")
    assert "verdict name" in st_.failure
    env = sign_statement(st_.to_bytes(), KEY)
    assert parse_statement(env.payload) == st_


def test_sign_statement_parses_first() -> None:
    good = statement_of(reproduced(job())).to_bytes()
    assert sign_statement(good, KEY).payload == good
    d = json.loads(good)
    d["predicate"]["buildDefinition"]["externalParameters"]["buildinfo"]["uri"] = "u" * 3000
    with pytest.raises(BadDataError, match="buildinfo uri"):
        sign_statement(json.dumps(d).encode(), KEY)
    with pytest.raises(BadDataError, match="lone surrogate"):
        sign_statement(good.replace(b'"local"', b'"\\ud800"'), KEY)


def test_failed_outcome_keeps_its_stage() -> None:
    st_ = statement_of(failed(job()))
    assert st_.failure == "fetch: HTTP 404 for the buildinfo"


_text = st.text(
    alphabet=st.one_of(st.characters(), st.sampled_from("\ud800\udfff\x00\n\"\\é😀")),
    max_size=5000,
)
_lengths = st.one_of(_text, st.integers(0, 5000).map(lambda n: "x" * n))
_names = st.one_of(
    st.text(alphabet="abc+~:_-. /1", min_size=0, max_size=300),
    st.integers(0, 400).map(lambda n: "a" * n + ".deb"),
)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    uri=_lengths,
    repository=_lengths,
    invocation=_lengths,
    output=_names,
    source=_names,
    version=_names,
)
def test_whatever_the_node_builds_a_verifier_parses(
    uri: str, repository: str, invocation: str, output: str, source: str, version: str
) -> None:
    """Property over field lengths and characters: a statement is either refused when it is
    built, or it parses back equal; and what sign_statement signs always parses."""
    try:
        j = replace(
            job(source="hello", published={output: (sha(output), "http://x/pool/a.deb")}),
            buildinfo_url=uri, source=source, version=version,
        )
        st_ = statement_of(reproduced(j), invocation=invocation, repository=repository)
    except BadDataError:
        return
    assert isinstance(st_, RebuildStatement)
    env = sign_statement(st_.to_bytes(), KEY)  # raises if a verifier would refuse it
    back = parse_statement(env.payload)
    assert back == st_ and back.to_dict() == st_.to_dict()
