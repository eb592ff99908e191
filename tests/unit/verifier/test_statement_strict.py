"""Strict parsing of signed statements and of JSON: every malformation is refused, by name.

A statement arrives signed, but a rebuilder's key signs whatever that rebuilder's software
produced: a buggy or hostile rebuilder must not get a half-valid statement counted.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from verifier import (
    BadDataError,
    OutputVerdict,
    PackageIdentity,
    RebuildStatement,
    RevocationStatement,
    Subject,
    parse_statement,
)
from verifier.dsse import strict_json_loads
from verifier.statement import format_time

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
DEB = "hello_1.0-1_amd64.deb"


def _statement() -> RebuildStatement:
    return RebuildStatement(
        package=PackageIdentity("debian", "hello", "1.0-1", "amd64"),
        subjects=(Subject(DEB, "a" * 64),),
        builder_id="https://rb.example/alpha",
        started_on=NOW,
        finished_on=NOW,
        invocation_id="1",
        buildinfo_uri="http://repo.example/buildinfo/hello_1.0-1_amd64.buildinfo",
        buildinfo_sha256="b" * 64,
        repository="http://repo.example/debian stable",
        verdicts=(
            OutputVerdict(
                DEB,
                "unreproducible",
                rebuilt="a" * 64,
                buildinfo="c" * 64,
                repository="c" * 64,
                report_sha256="d" * 64,
                report_url="https://rb.example/reports/1.html",
            ),
        ),
    )


def _parse(d: dict[str, Any]) -> object:
    return parse_statement(json.dumps(d).encode())


def _pred(d: dict[str, Any]) -> dict[str, Any]:
    return d["predicate"]  # type: ignore[no-any-return]


def _verdict(d: dict[str, Any]) -> dict[str, Any]:
    return _pred(d)["runDetails"]["byproducts"][0]  # type: ignore[no-any-return]


def _ext(d: dict[str, Any]) -> dict[str, Any]:
    return _pred(d)["buildDefinition"]["externalParameters"]  # type: ignore[no-any-return]


def _set(
    path: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: object
) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        path(d)[key] = value

    return change


def _top(d: dict[str, Any]) -> dict[str, Any]:
    return d


def _subject(d: dict[str, Any]) -> dict[str, Any]:
    return d["subject"][0]  # type: ignore[no-any-return]


def _package(d: dict[str, Any]) -> dict[str, Any]:
    return _ext(d)["package"]  # type: ignore[no-any-return]


def _meta(d: dict[str, Any]) -> dict[str, Any]:
    return _pred(d)["runDetails"]["metadata"]  # type: ignore[no-any-return]


def _builder(d: dict[str, Any]) -> dict[str, Any]:
    return _pred(d)["runDetails"]["builder"]  # type: ignore[no-any-return]


def _annotations(d: dict[str, Any]) -> dict[str, Any]:
    return _verdict(d)["annotations"]  # type: ignore[no-any-return]


# (change to a valid statement's dict, words the refusal must contain)
MALFORMED = {
    "predicate not an object": (_set(_top, "predicate", []), "predicate"),
    "unknown build type": (
        _set(lambda d: _pred(d)["buildDefinition"], "buildType", "https://x/"),
        "buildType",
    ),
    "subject list not a list": (_set(_top, "subject", {}), "subject"),
    "subject not an object": (_set(_top, "subject", ["x"]), "subject"),
    "subject without digest": (_set(_subject, "digest", None), "subject.digest"),
    "subject digest uppercase": (
        _set(lambda d: _subject(d)["digest"], "sha256", "A" * 64),
        "subject digest",
    ),
    "subject digest short": (
        _set(lambda d: _subject(d)["digest"], "sha256", "a" * 63),
        "subject digest",
    ),
    "subject digest not a string": (
        _set(lambda d: _subject(d)["digest"], "sha256", 7),
        "subject digest",
    ),
    "subject name with a slash": (_set(_subject, "name", "../etc/passwd"), "subject name"),
    "subject name not a string": (_set(_subject, "name", ["x"]), "subject name"),
    "subject name too long": (_set(_subject, "name", "a" * 256), "subject name"),
    "package not an object": (_set(_ext, "package", "hello"), "package"),
    "other ecosystem": (_set(_package, "ecosystem", "pypi"), "ecosystem"),
    "ecosystem not a string": (_set(_package, "ecosystem", ["debian"]), "ecosystem"),
    "package name missing": (_set(_package, "name", None), "package name"),
    "package version with a space": (_set(_package, "version", "1.0 1"), "package version"),
    "architecture not a string": (_set(_package, "architecture", 64), "package architecture"),
    "builder id missing": (_set(_builder, "id", None), "builder id"),
    "builder id too long": (_set(_builder, "id", "x" * 2049), "builder id"),
    "invocation id not a string": (_set(_meta, "invocationId", 1), "invocationId"),
    "finish time not a time": (_set(_meta, "finishedOn", "yesterday"), "finishedOn"),
    "finish time without zone": (_set(_meta, "finishedOn", "2026-11-21T12:00:00"), "time zone"),
    "buildinfo digest bad": (
        _set(lambda d: _ext(d)["buildinfo"]["digest"], "sha256", "z" * 64),
        "buildinfo",
    ),
    "buildinfo uri not a string": (_set(lambda d: _ext(d)["buildinfo"], "uri", 5), "uri"),
    "unknown verdict": (_set(_annotations, "verdict", "probably"), "verdict"),
    "verdict not a string": (_set(_annotations, "verdict", ["reproduced"]), "verdict"),
    "verdict digest bad": (
        _set(lambda d: _verdict(d)["digest"], "sha256", "0" * 65),
        "verdict rebuilt",
    ),
    "verdict buildinfo digest bad": (
        _set(_annotations, "buildinfo", {"sha256": "x"}),
        "verdict buildinfo",
    ),
    "verdict repository digest not an object": (
        _set(_annotations, "repository", "c" * 64),
        "verdict repository",
    ),
    "verdict report digest bad": (
        _set(lambda d: _annotations(d)["report"]["digest"], "sha256", "D" * 64),
        "verdict report_sha256",
    ),
    "verdict report uri not a string": (
        _set(lambda d: _annotations(d)["report"], "uri", {"x": 1}),
        "report url",
    ),
    "verdict name bad": (_set(_verdict, "name", "verdict:a b"), "verdict name"),
    "failure and subjects together": (
        lambda d: _pred(d)["runDetails"]["byproducts"].append(
            {"name": "failure", "annotations": {"reason": "no"}}
        ),
        "failed build",
    ),
    "no subject and no failure": (_set(_top, "subject", []), "no subject"),
    "too many subjects": (
        _set(_top, "subject", [{"name": DEB, "digest": {"sha256": "a" * 64}}] * 1001),
        "subject",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_statement_is_refused_naming_the_field(case: str) -> None:
    change, words = MALFORMED[case]
    d = copy.deepcopy(_statement().to_dict())
    change(d)
    with pytest.raises(BadDataError) as e:
        _parse(d)
    assert words in str(e.value), str(e.value)


def test_valid_statement_round_trips_with_every_verdict_field() -> None:
    stmt = _statement()
    assert parse_statement(stmt.to_bytes()) == stmt


def test_unknown_fields_are_kept_in_raw_and_ignored() -> None:
    d = _statement().to_dict()
    d["predicate"]["runDetails"]["metadata"]["x-extra"] = {"kept": True}
    parsed = _parse(d)
    assert isinstance(parsed, RebuildStatement)
    assert parsed.raw is not None
    assert parsed.raw["predicate"]["runDetails"]["metadata"]["x-extra"] == {"kept": True}


def test_revocation_with_bad_digest_is_refused() -> None:
    rev = RevocationStatement("e" * 64, "key compromised", "https://rb.example/alpha", NOW)
    d = rev.to_dict()
    assert parse_statement(rev.to_bytes()) == rev
    d["subject"][0]["digest"]["sha256"] = "E" * 64
    with pytest.raises(BadDataError, match="sha256"):
        _parse(d)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"x": {"b": 1, "c": 2, "b": 1}}', "duplicate key 'b'"),
        ('[{"a": 1}, {"a": 1, "a": 1}]', "duplicate key 'a'"),
        ('{"a": NaN}', "NaN"),
        ('{"a": -Infinity}', "Infinity"),
        ('{"a": 1} {"b": 2}', "Extra data"),
        ('{"a": 1', "not valid JSON"),
        ("", "not valid JSON"),
        ("   \n", "not valid JSON"),
        ('"\\ud800"x', "Extra data"),
    ],
)
def test_strict_json_refuses(text: str, words: str) -> None:
    with pytest.raises(BadDataError) as e:
        strict_json_loads(text, "thing")
    assert words in str(e.value) and "thing" in str(e.value)


def test_strict_json_refuses_invalid_utf8_and_deep_nesting() -> None:
    with pytest.raises(BadDataError, match="not UTF-8"):
        strict_json_loads(b'{"a": "\xff"}', "thing")
    with pytest.raises(BadDataError, match="not valid JSON"):
        strict_json_loads("[" * 100_000 + "]" * 100_000, "thing")


def test_strict_json_accepts_surrounding_whitespace() -> None:
    assert strict_json_loads(b' \t\r\n{"a": [1, 2.5, "x"]}\n ', "thing") == {"a": [1, 2.5, "x"]}


def test_format_time_is_utc_with_whole_seconds() -> None:
    assert format_time(NOW) == "2026-11-21T12:00:00Z"
    plus_two = timezone(timedelta(hours=2))
    assert format_time(datetime(2026, 11, 21, 14, 0, 0, 999, tzinfo=plus_two)) == (
        "2026-11-21T12:00:00Z"
    )
    assert format_time(datetime(900, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0900-01-02T03:04:05Z"
