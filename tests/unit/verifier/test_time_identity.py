"""Time, identity and counting (issue 11): dates that dodge max_age_days, operator names that
count twice, a key file with two keys."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from tests.unit.verifier._vectors import load_case, make_vectors
from tests.unit.verifier.test_policy import entry, pem
from verifier.decision import Status, decide
from verifier.dsse import sign
from verifier.errors import BadDataError, ConfigError
from verifier.policy import Policy
from verifier.statement import Subject, parse_statement

mv = make_vectors()
_, ARTIFACT, POLICY, _, NOW = load_case("quorum_reached")


def gamma_agrees(**times: object) -> bytes:
    stmt = mv.rebuild("rb-gamma", (Subject(mv.DEB_NAME, ARTIFACT.sha256),))
    stmt = dataclasses.replace(stmt, **times)
    return sign(stmt.to_bytes(), mv.private_key("rb-gamma")).to_bytes()


def test_started_after_finished_is_refused_at_construction_and_parsing() -> None:
    with pytest.raises(BadDataError, match=r"startedOn .* is after finishedOn"):
        gamma_agrees(started_on=NOW, finished_on=NOW - timedelta(hours=1))
    ok = mv.rebuild("rb-gamma", (Subject(mv.DEB_NAME, ARTIFACT.sha256),))
    payload = ok.to_bytes().replace(
        b'"startedOn":"', b'"startedOn":"2099-01-01T00:00:00Z","x":"', 1
    )
    with pytest.raises(BadDataError, match="is after finishedOn"):
        parse_statement(payload)
    env = sign(payload, mv.private_key("rb-gamma")).to_bytes()
    gamma = decide(ARTIFACT, POLICY, {"rb-gamma": [env]}, NOW).rebuilders[2]
    assert gamma.status == Status.INVALID and "is after finishedOn" in gamma.detail


def test_future_dated_attestation_is_invalid_and_cannot_dodge_max_age() -> None:
    policy = dataclasses.replace(POLICY, max_age_days=1)
    future = NOW + timedelta(days=400)
    env = gamma_agrees(started_on=future, finished_on=future)
    gamma = decide(ARTIFACT, policy, {"rb-gamma": [env]}, NOW).rebuilders[2]
    assert gamma.status == Status.INVALID
    assert "future-dated" in gamma.detail and "clock skew" in gamma.detail


def test_clock_skew_is_allowed_up_to_the_policy_bound() -> None:
    soon = NOW + timedelta(minutes=9)
    env = gamma_agrees(started_on=soon, finished_on=soon)
    assert decide(ARTIFACT, POLICY, {"rb-gamma": [env]}, NOW).rebuilders[2].status == "agrees"
    strict = dataclasses.replace(POLICY, max_clock_skew_minutes=5)
    assert decide(ARTIFACT, strict, {"rb-gamma": [env]}, NOW).rebuilders[2].status == "invalid"


@pytest.mark.parametrize("operator", ["OP-A", "op-a ", "op\u2010a", "Alpha University", ""])
def test_operator_outside_the_grammar_is_refused_naming_the_entry(operator: str) -> None:
    text = "threshold = 1\n" + entry("rb-a", operator=operator or " ", key=pem("rb-a"))
    with pytest.raises(ConfigError, match="rebuilder 'rb-a'"):
        Policy.from_toml(text, Path("."))


def test_operator_ids_in_the_grammar_are_compared_exactly() -> None:
    text = "threshold = 2\n" + entry("rb-a", operator="op-a", key=pem("rb-a")) + entry(
        "rb-b", operator="op-a", key=pem("rb-b")
    )
    with pytest.raises(ConfigError, match="distinct operators"):
        Policy.from_toml(text, Path("."))
    fine = "threshold = 2\n" + entry("rb-a", operator="op.a_1", key=pem("rb-a")) + entry(
        "rb-b", operator="op-b", key=pem("rb-b")
    )
    assert Policy.from_toml(fine, Path(".")).threshold == 2


def test_public_key_with_two_pem_blocks_is_refused() -> None:
    two = pem("rb-a") + pem("rb-b")
    text = "threshold = 1\n" + entry("rb-a", key=two)
    with pytest.raises(ConfigError, match="rebuilder 'rb-a' public_key is unusable: PEM holds 2"):
        Policy.from_toml(text, Path("."))


def test_clock_skew_setting_is_bounded() -> None:
    text = "threshold = 1\nmax_clock_skew_minutes = 100000\n" + entry("rb-a", key=pem("rb-a"))
    with pytest.raises(ConfigError, match="max_clock_skew_minutes"):
        Policy.from_toml(text, Path("."))
