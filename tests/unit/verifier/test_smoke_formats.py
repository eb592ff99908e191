from datetime import UTC, datetime

import pytest

from verifier import (
    BadDataError,
    Envelope,
    OutputVerdict,
    PackageIdentity,
    RebuildStatement,
    Subject,
    generate_private_key,
    parse_statement,
    sign,
)


def _statement() -> RebuildStatement:
    now = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
    return RebuildStatement(
        package=PackageIdentity("debian", "hello", "1.0-1", "amd64"),
        subjects=(Subject("hello_1.0-1_amd64.deb", "a" * 64),),
        builder_id="https://rb.example/alpha",
        started_on=now,
        finished_on=now,
        invocation_id="1",
        buildinfo_uri="http://repo.example/buildinfo/hello_1.0-1_amd64.buildinfo",
        buildinfo_sha256="b" * 64,
        repository="http://repo.example/debian stable",
        verdicts=(OutputVerdict("hello_1.0-1_amd64.deb", "reproduced", rebuilt="a" * 64),),
    )


def test_sign_serialize_parse_round_trip() -> None:
    key = generate_private_key()
    env = Envelope.from_bytes(sign(_statement().to_bytes(), key).to_bytes())
    assert env.verify(key.public_key())
    assert parse_statement(env.payload) == _statement()


def test_other_key_does_not_verify() -> None:
    env = sign(_statement().to_bytes(), generate_private_key())
    assert not env.verify(generate_private_key().public_key())


def test_oversized_envelope_is_refused_before_parsing() -> None:
    with pytest.raises(BadDataError, match="limit"):
        Envelope.from_bytes(b" " * (1024 * 1024 + 1))
