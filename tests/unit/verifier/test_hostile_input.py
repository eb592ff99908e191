"""What one hostile source can send never fails the decision for the others (issue 11).

Each test names an attack that used to crash ``verifier check`` / ``apt-hook`` or slip past the
strict parsing, and checks that the source is now ``invalid`` with a reason while the honest
rebuilders still decide.
"""

from __future__ import annotations

import json

import pytest

from tests.unit.verifier._vectors import VECTORS, load_case, make_vectors
from verifier.decision import BadResponse, Status, decide
from verifier.dsse import Envelope, sign, strict_json_loads
from verifier.errors import BadDataError
from verifier.sources import ClientConfig, check_offline, envelopes_in
from verifier.statement import parse_statement

mv = make_vectors()
_, ARTIFACT, POLICY, _, NOW = load_case("quorum_reached")
A = (VECTORS / "attestations/agree-rb-alpha.json").read_bytes().strip()
B = (VECTORS / "attestations/agree-rb-beta.json").read_bytes().strip()
G = (VECTORS / "attestations/agree-rb-gamma.json").read_bytes().strip()


def deep(n: int) -> str:
    return "[" * n + "]" * n


def signed_by_gamma(payload: bytes) -> bytes:
    return sign(payload, mv.private_key("rb-gamma")).to_bytes()


def evidence_from(body: bytes) -> list[bytes] | BadResponse:
    """What ``ask`` makes of one answer: its envelopes, or a bad response."""
    try:
        return envelopes_in(body, "http://rb-gamma.invalid/v1/packages/x", ClientConfig())
    except BadDataError as e:
        return BadResponse(e.reason)


def test_deeply_nested_answer_from_one_rebuilder_is_only_that_rebuilders_problem() -> None:
    """983 levels (at the top of the stack; fewer under pytest): parsed, then re-serialized,
    it raised RecursionError out of check_online. Every depth around the parser's limit."""
    for depth in range(850, 1001):
        for body in (
            '{"attestations": [' + deep(depth) + "]}",
            '{"attestations": [{"payload": "", "signatures": ' + deep(depth) + "}]}",
        ):
            evidence = {"rb-alpha": [A], "rb-beta": [B], "rb-gamma": evidence_from(body.encode())}
            result = decide(ARTIFACT, POLICY, evidence, NOW)  # type: ignore[arg-type]
            assert result.accepted, (depth, result.reasons)
            assert result.rebuilders[2].status == Status.INVALID, depth


@pytest.mark.parametrize("depth", [5000, 100_000])
def test_deep_nesting_anywhere_is_bad_data_not_a_crash(depth: int) -> None:
    with pytest.raises(BadDataError, match="not valid JSON"):
        strict_json_loads('{"payloadType": ' + deep(depth) + "}", "envelope")
    body = ('{"attestations": [{"payload": ' + deep(depth) + "}]}").encode()
    evidence = {"rb-alpha": [A], "rb-beta": [B], "rb-gamma": evidence_from(body)}
    assert decide(ARTIFACT, POLICY, evidence, NOW).accepted  # type: ignore[arg-type]


def test_deeply_nested_signed_statement_is_malformed() -> None:
    payload = b'{"_type": ' + deep(50_000).encode() + b"}"
    result = decide(ARTIFACT, POLICY, {"rb-gamma": [signed_by_gamma(payload)]}, NOW)
    assert result.rebuilders[2].status == Status.INVALID
    assert "signed statement is malformed" in result.rebuilders[2].detail


def _gamma_statement_with(reason_json: str) -> bytes:
    """rb-gamma's agreement with its failure-free statement carrying an extra field."""
    stmt = json.loads(Envelope.from_bytes(G).payload)
    raw = json.dumps(stmt, sort_keys=True, separators=(",", ":"))
    return raw.replace('"predicate":{', '"predicate":{"x":' + reason_json + ",", 1).encode()


@pytest.mark.parametrize(
    ("value", "why"),
    [('"\\ud800"', "lone surrogate"), ('"a\\udfffb"', "lone surrogate"), ("1e999", "Infinity"),
     ("-1e999", "Infinity")],
)
def test_refused_json_is_refused_inside_the_signed_payload_too(value: str, why: str) -> None:
    payload = _gamma_statement_with(value)
    with pytest.raises(BadDataError, match=why):
        parse_statement(payload)
    result = decide(ARTIFACT, POLICY, {"rb-gamma": [signed_by_gamma(payload)]}, NOW)
    gamma = result.rebuilders[2]
    assert gamma.status == Status.INVALID and why in gamma.detail


def test_a_valid_surrogate_pair_and_ordinary_numbers_are_fine() -> None:
    assert parse_statement(_gamma_statement_with('["\\ud83d\\ude00", 1.5, 1e300]'))
    assert strict_json_loads(b'["\\\\ud800"]', "x") == ["\\ud800"]  # an escaped backslash


def test_time_out_of_range_in_utc_is_malformed_not_a_crash() -> None:
    """Year 1 at +01:00 parses, but is before datetime.min in UTC: printing it overflowed."""
    raw = Envelope.from_bytes(G).payload.replace(
        b'"finishedOn":"', b'"finishedOn":"0001-01-01T00:00:00+01:00","x":"', 1
    )
    result = decide(ARTIFACT, POLICY, {"rb-gamma": [signed_by_gamma(raw)]}, NOW)
    assert result.rebuilders[2].status == Status.INVALID
    assert "out of range" in result.rebuilders[2].detail


def test_pool_with_junk_of_every_kind_still_decides() -> None:
    junk = [deep(983).encode(), b"\xff\xfe", b"{}", b'{"payload": 1}', b"null", b"1e999",
            b'{"payloadType": "\\ud800"}']
    result = check_offline(ARTIFACT, POLICY, [*junk, A, B], NOW)
    assert result.accepted
