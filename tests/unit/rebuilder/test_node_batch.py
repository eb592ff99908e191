"""``POST /v1/attestations:batch`` on a node: per query, exactly what the two GETs answer
together, from a real store behind the real API; every malformed request refused by name."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rebuilder.api import create_app
from rebuilder.batch import MAX_BATCH_BYTES, MAX_QUERIES
from rebuilder.db import NewAttestation, Store
from tests.unit.coordinator.factory import Signer, sha
from tests.unit.rebuilder.node_helpers import amake_node, serve
from verifier.dsse import Envelope

NODE = Signer("rb-node")
H1, H2, H3 = sha("hello"), sha("hello-doc"), sha("other")
UNKNOWN = "0" * 64


def _stored(env: Envelope, source: str, version: str, subjects: dict[str, str],
            revokes: str | None = None) -> NewAttestation:
    return NewAttestation(
        envelope_sha256=env.digest(), envelope=env.to_bytes(),
        kind="revocation" if revokes else "rebuild", source=source, version=version,
        arch="amd64", subjects=tuple(subjects.items()), revokes=revokes,
    )


async def _fill(store: Store) -> None:
    """Two binaries of one source, a second rebuild of it (revoked, v2), another package that
    names the same digest, an unrelated package revoked the v1 way."""
    a = NODE.rebuild("hello", "1.0-1", {"hello_1.0-1_amd64.deb": H1,
                                        "hello-doc_1.0-1_all.deb": H2})
    b = NODE.rebuild("hello", "1.0-1", {"hello_1.0-1_amd64.deb": H1}, invocation="build-2")
    c = NODE.rebuild("evil", "2.0", {"hello_1.0-1_amd64.deb": H1})
    d = NODE.rebuild("other", "1.0", {"other_1.0_amd64.deb": H3})
    await store.add_attestation(_stored(a, "hello", "1.0-1", {"hello_1.0-1_amd64.deb": H1,
                                                             "hello-doc_1.0-1_all.deb": H2}))
    await store.add_attestation(_stored(b, "hello", "1.0-1", {"hello_1.0-1_amd64.deb": H1}))
    await store.add_attestation(_stored(NODE.revoke(b), "hello", "1.0-1", {},
                                        revokes=b.payload_digest()))
    await store.add_attestation(_stored(c, "evil", "2.0", {"hello_1.0-1_amd64.deb": H1}))
    await store.add_attestation(_stored(d, "other", "1.0", {"other_1.0_amd64.deb": H3}))
    await store.add_attestation(_stored(NODE.revoke(d, legacy=True), "other", "1.0", {},
                                        revokes=d.digest()))


QUERIES = [
    (H1, "hello", "1.0-1"),
    (H2, "hello", "1.0-1"),
    (H3, "other", "1.0"),
    (UNKNOWN, "hello", "1.0-1"),  # the package query alone finds something
    (H1, "nothing", "9"),  # the digest query alone
    (UNKNOWN, "nothing", "9"),
    (H1, "hello", "1.0-1"),  # the same query again
]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "s.db")
    await _fill(s)
    yield s
    await s.close()


async def _expected(store: Store, digest: str, source: str, version: str) -> list[bytes]:
    both = await store.attestations_by_digest(digest)
    both += await store.attestations_for_package(source, version)
    return list(dict.fromkeys(both))


async def test_store_answers_each_query_as_the_two_lookups_do(store: Store) -> None:
    got = await store.attestations_for_queries(QUERIES)
    want = [await _expected(store, *q) for q in QUERIES]
    assert got == want
    assert [len(x) for x in got] == [4, 3, 2, 3, 4, 0, 4]  # the vacuity check


async def test_store_answers_more_queries_than_one_statement_holds(store: Store) -> None:
    queries = [(sha(str(i)), f"pkg{i}", "1") for i in range(1200)] + QUERIES
    got = await store.attestations_for_queries(queries)
    assert got[:1200] == [[]] * 1200
    assert got[1200:] == [await _expected(store, *q) for q in QUERIES]


@pytest.fixture
async def node(tmp_path: Path, store: Store) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    cfg = await amake_node(tmp_path / "node")
    async with serve(create_app(cfg, store=store), cfg.node.listen_port) as base, \
            aiohttp.ClientSession() as session:
        yield base, session


def _body(queries: list[tuple[str, str, str]]) -> dict[str, Any]:
    return {"queries": [{"digest": f"sha256:{d}",
                         "package": {"ecosystem": "debian", "name": s, "version": v}}
                        for d, s, v in queries]}


async def _post(session: aiohttp.ClientSession, url: str, data: bytes,
                content_type: str = "application/json") -> tuple[int, Any]:
    async with session.post(url, data=data, headers={"Content-Type": content_type}) as r:
        return r.status, await r.json()


async def test_batch_answers_in_order_with_the_stored_bytes(
    node: tuple[str, aiohttp.ClientSession], store: Store
) -> None:
    base, session = node
    status, doc = await _post(session, f"{base}/v1/attestations:batch",
                              json.dumps(_body(QUERIES)).encode())
    assert status == 200
    assert [r["digest"] for r in doc["results"]] == [f"sha256:{d}" for d, _, _ in QUERIES]
    for r, q in zip(doc["results"], QUERIES, strict=True):
        got = [Envelope.from_dict(e).to_bytes() for e in r["attestations"]]
        assert got == await _expected(store, *q)


def _query(**change: Any) -> dict[str, Any]:
    q: dict[str, Any] = {"digest": f"sha256:{H1}",
                         "package": {"ecosystem": "debian", "name": "hello", "version": "1.0-1"}}
    q.update(change)
    return q


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"not json", 400, "not JSON"),
        (b"[1]", 400, "must be {"),
        (json.dumps({"queries": [], "x": 1}).encode(), 400, "must be {"),
        (json.dumps({"queries": []}).encode(), 400, "give 1 to 1000 queries, not 0"),
        (json.dumps({"queries": [_query()] * (MAX_QUERIES + 1)}).encode(), 400,
         "not 1001"),
        (json.dumps({"queries": [_query(), "x"]}).encode(), 400, "query 1 must be"),
        (json.dumps({"queries": [_query(digest="sha256:ABC")]}).encode(), 400,
         "query 0: digest must be"),
        (json.dumps({"queries": [_query(digest=f"sha512:{H1}")]}).encode(), 400,
         "query 0: digest must be"),
        (json.dumps({"queries": [_query(package={"ecosystem": "npm", "name": "a",
                                                  "version": "1"})]}).encode(), 400,
         "query 0: ecosystem 'npm' is not one this rebuilder builds"),
        (json.dumps({"queries": [_query(package={"ecosystem": "debian", "name": "Hello",
                                                  "version": "1"})]}).encode(), 400,
         "query 0: package name"),
        (json.dumps({"queries": [_query(package={"ecosystem": "debian", "name": "a",
                                                  "version": "1 x"})]}).encode(), 400,
         "query 0: package version"),
        (json.dumps({"queries": [_query(package={"name": "a"})]}).encode(), 400,
         "package must be"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "not JSON"),
        (b" " * (MAX_BATCH_BYTES + 1), 413, "over"),
    ],
    ids=["not-json", "not-object", "extra-key", "empty", "too-many", "not-a-query",
         "digest-case", "digest-algorithm", "ecosystem", "name", "version", "package-keys",
         "deep", "too-large"],
)
async def test_bad_batches_are_refused_by_name(
    node: tuple[str, aiohttp.ClientSession], body: bytes, status: int, needle: str
) -> None:
    base, session = node
    got, doc = await _post(session, f"{base}/v1/attestations:batch", body)
    assert got == status
    assert needle in doc["error"]


async def test_batch_wants_json(node: tuple[str, aiohttp.ClientSession]) -> None:
    base, session = node
    got, doc = await _post(session, f"{base}/v1/attestations:batch",
                           json.dumps(_body(QUERIES)).encode(), content_type="text/plain")
    assert got == 415 and "application/json" in doc["error"]
