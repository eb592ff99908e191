"""The ecosystem seam: a second ecosystem registered by name drives the statement's grammar and
buildType and the daemon's builder, with nothing generic changed (docs/ARCHITECTURE.md §3.2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rebuilder import ecosystem as node_ecosystems
from rebuilder.daemon import make_builder
from rebuilder.outcome import RebuildOutcome
from tests.unit.rebuilder.node_helpers import amake_node, job, reproduced
from verifier import ecosystem as ecosystems
from verifier.debian import BUILD_TYPE
from verifier.errors import BadDataError
from verifier.statement import PackageIdentity, RebuildStatement, Subject, parse_statement

TOY_BUILD_TYPE = "https://repro-quorum.dev/buildtypes/toy-rebuild/v1"


class Toy(ecosystems.Ecosystem):
    name = "toy"
    build_type = TOY_BUILD_TYPE

    def lookup_problem(self, name: object, version: object) -> str | None:
        if not isinstance(name, str) or not name.isupper():
            return f"package name {name!r} is not an upper-case toy name"
        if not isinstance(version, str) or not version.isdigit():
            return f"package version {version!r} is not a toy version"
        return None

    def package_problem(self, name: object, version: object, architecture: object) -> str | None:
        return self.lookup_problem(name, version) or (
            None if architecture == "any" else "package architecture must be 'any'")

    def subject_name(self, name: str, version: str, architecture: str) -> str:
        return f"{name}-{version}.toy"

    def read_identity(self, path: Path) -> Any:
        raise NotImplementedError


class ToyNode(node_ecosystems.NodeEcosystem):
    name = "toy"
    built: list[str] = []

    def watcher(self, *args: Any) -> Any:
        raise NotImplementedError

    def builder(self, config: Any, session: aiohttp.ClientSession) -> Any:
        async def build(j: Any, work_dir: Path) -> RebuildOutcome:
            self.built.append(f"{j.ecosystem}:{j.source}")
            return reproduced(j)

        return build


@pytest.fixture
def toy() -> Iterator[Toy]:
    eco = ecosystems.register(Toy())
    node_ecosystems.register(ToyNode())
    try:
        yield eco
    finally:  # the registries are process-wide: leave them as found
        del ecosystems._REGISTRY["toy"], ecosystems._BY_BUILD_TYPE[TOY_BUILD_TYPE]
        del node_ecosystems._REGISTRY["toy"]


def _statement(package: PackageIdentity, subject: str) -> RebuildStatement:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    return RebuildStatement(
        package=package, subjects=(Subject(subject, "ab" * 32),), builder_id="https://rb/a",
        started_on=now, finished_on=now, invocation_id="1", buildinfo_uri="http://r/b",
        buildinfo_sha256="cd" * 32, repository="http://r/toy")


def test_a_registered_ecosystem_gives_the_statement_its_grammar_and_build_type(toy: Toy) -> None:
    stmt = _statement(PackageIdentity("toy", "HELLO", "7", "any"), toy.subject_name("HELLO", "7",
                                                                                    "any"))
    signed = stmt.to_bytes()
    assert json.loads(signed)["predicate"]["buildDefinition"]["buildType"] == TOY_BUILD_TYPE
    assert parse_statement(signed) == stmt
    with pytest.raises(BadDataError, match="upper-case toy name"):
        PackageIdentity("toy", "hello", "7", "any")  # Debian's grammar is not the toy's
    with pytest.raises(BadDataError, match="package name 'HELLO' is not a Debian"):
        PackageIdentity("debian", "HELLO", "7", "amd64")


def test_a_package_must_be_of_its_build_types_ecosystem(toy: Toy) -> None:
    d = json.loads(_statement(PackageIdentity("toy", "HELLO", "7", "any"), "HELLO-7.toy")
                   .to_bytes())
    d["predicate"]["buildDefinition"]["buildType"] = BUILD_TYPE  # Debian's, for a toy package
    with pytest.raises(BadDataError, match="package ecosystem 'toy' is not that of buildType"):
        parse_statement(json.dumps(d).encode())


def test_a_node_ecosystem_needs_its_verifier_half() -> None:
    with pytest.raises(ValueError, match="no verifier half"):
        node_ecosystems.register(ToyNode())
    with pytest.raises(node_ecosystems.UnknownEcosystem, match=r"'toy' .* \(debian\)"):
        node_ecosystems.get("toy")


async def test_the_daemon_runs_each_job_through_its_ecosystems_builder(
    toy: Toy, tmp_path: Path
) -> None:
    cfg = await amake_node(tmp_path, "--no-mqtt")
    ToyNode.built.clear()
    async with aiohttp.ClientSession() as session:
        build = make_builder(cfg, session)
        outcome = await build(replace(job("HELLO", "7", "any"), ecosystem="toy"), tmp_path)
        with pytest.raises(node_ecosystems.UnknownEcosystem, match="'npm'"):
            await build(replace(job(), ecosystem="npm"), tmp_path)
    assert ToyNode.built == ["toy:HELLO"]
    assert outcome.job.package == PackageIdentity("toy", "HELLO", "7", "any")
