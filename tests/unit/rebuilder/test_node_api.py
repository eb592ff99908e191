"""The node's HTTP API against a real store filled by the real JobRunner (docs/api.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rebuilder.api import REPORT_CSP, create_app
from rebuilder.db import Store
from rebuilder.queue import JobRunner, StoredResult
from tests.support import metric
from tests.unit.rebuilder.node_helpers import amake_node, failed, job, mismatch, reproduced, serve
from verifier.dsse import Envelope
from verifier.keys import load_private_key, load_public_key
from verifier.statement import RebuildStatement, parse_statement


async def _store_results(cfg: Any, tmp_path: Path) -> tuple[Store, list[StoredResult]]:
    store = await Store.open(cfg.node.db_path)
    key = load_private_key(cfg.node.signing_key)
    outcomes = {
        "hello": reproduced,
        "evil": lambda j: mismatch(j, tmp_path / "work-reports"),
        "broken": failed,
    }

    async def builder(j: Any, work: Path) -> Any:
        return outcomes[j.source](j)

    runner = JobRunner(cfg, store, key, builder)
    await store.add_jobs([job("hello"), job("evil"), job("broken")])
    results = []
    while (claimed := await store.claim_job()) is not None:
        results.append(await runner.run(claimed))
    return store, results


@pytest.fixture
async def node(tmp_path: Path) -> Any:
    cfg = await amake_node(tmp_path)
    store, results = await _store_results(cfg, tmp_path)
    async with serve(create_app(cfg), cfg.node.listen_port) as base, \
            aiohttp.ClientSession() as session:
        yield cfg, base, session, results
    await store.close()


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


async def test_digest_lookup_returns_verifiable_envelopes(node: Any) -> None:
    cfg, base, session, _ = node
    published = job("hello").published
    (digest, _), = published.values()
    status, body = await _get(session, f"{base}/v1/attestations?digest=sha256:{digest}")
    assert status == 200
    assert body["digest"] == f"sha256:{digest}"
    assert len(body["attestations"]) == 1
    env = Envelope.from_dict(body["attestations"][0])
    pub = load_private_key(cfg.node.signing_key).public_key()
    assert env.verify(pub)
    st = parse_statement(env.payload)
    assert isinstance(st, RebuildStatement)
    assert [s.sha256 for s in st.subjects] == [digest]
    assert st.invocation_id == f"{cfg.node.id}/1/1"
    assert st.builder_id == f"{cfg.node.public_url}/v1/node"
    assert st.package.name == "hello"


async def test_unknown_digest_is_empty_list(node: Any) -> None:
    _, base, session, _ = node
    status, body = await _get(session, f"{base}/v1/attestations?digest=sha256:{'0' * 64}")
    assert (status, body["attestations"]) == (200, [])


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("digest=sha256:ABC", "digest must be"),
        (f"digest={'a' * 64}", "digest must be"),
        (f"digest=sha512:{'a' * 64}", "digest must be"),
        ("since=-1", "since must be"),
        ("since=abc", "since must be"),
        ("since=0&limit=0", "limit must be"),
        ("since=0&limit=1001", "limit must be"),
        ("since=0&limit=x", "limit must be"),
        ("since=0&since=1", "given 2 times"),
        ("", "give digest="),
        ("foo=1&since=0", "unknown query parameter"),
        (f"digest=sha256:{'a' * 64}&since=0", "not both"),
    ],
)
async def test_bad_query_parameters_are_400(node: Any, query: str, needle: str) -> None:
    _, base, session, _ = node
    status, body = await _get(session, f"{base}/v1/attestations?{query}")
    assert status == 400
    assert needle in body["error"]


async def test_catch_up_pages_through_everything_in_order(node: Any) -> None:
    _, base, session, results = node
    seen: list[str] = []
    cursor = "0"
    while True:
        status, body = await _get(session, f"{base}/v1/attestations?since={cursor}&limit=2")
        assert status == 200
        for item in body["attestations"]:
            seen.append(Envelope.from_dict(item["envelope"]).digest())
            cursor = item["cursor"]
        assert body["next"] == cursor
        if not body["more"]:
            break
    assert seen == [r.envelope_sha256 for r in results]
    status, body = await _get(session, f"{base}/v1/attestations?since={cursor}")
    assert body == {"attestations": [], "next": cursor, "more": False}


async def test_build_and_report_with_csp(node: Any) -> None:
    cfg, base, session, results = node
    evil = next(r for r in results if r.verdict == "unreproducible")
    status, b = await _get(session, f"{base}/v1/builds/{evil.job_id}")
    assert status == 200
    assert b["status"] == "done" and b["verdict"] == "unreproducible"
    assert b["envelope_sha256"] == evil.envelope_sha256
    # the digest a revocation names: the signed statement's
    assert len(b["statement_sha256"]) == 64 and b["statement_sha256"] != evil.envelope_sha256
    assert b["package"]["name"] == "evil"
    out = b["outputs"][0]
    assert out["verdict"] == "unreproducible"
    assert out["report_html_url"].startswith(cfg.node.public_url)
    async with session.get(out["report_html_url"]) as r:
        assert r.status == 200
        assert r.headers["Content-Security-Policy"] == REPORT_CSP
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        html = await r.read()
    # The signed statement names the report's URL and the sha256 of what is served there.
    status, body = await _get(session, f"{base}/v1/attestations?digest=sha256:{out['rebuilt']}")
    st = parse_statement(Envelope.from_dict(body["attestations"][0]).payload)
    assert isinstance(st, RebuildStatement)
    v = st.verdicts[0]
    assert v.report_url == out["report_html_url"]
    assert v.report_sha256 == hashlib.sha256(html).hexdigest()
    status, txt = await _get(session, out["report_txt_url"])
    assert status == 200 and "+++ b" in txt
    status, logtext = await _get(session, b["log_url"])
    assert status == 200 and "building" in logtext


async def test_failed_build_is_signed_without_subject(node: Any) -> None:
    _, base, session, results = node
    bad = next(r for r in results if r.verdict == "failed")
    status, b = await _get(session, f"{base}/v1/builds/{bad.job_id}")
    assert b["status"] == "failed" and "fetch: HTTP 404" in b["failure"]
    status, body = await _get(session, f"{base}/v1/packages/debian/broken/1.0-1")
    assert status == 200
    assert body["package"] == {"ecosystem": "debian", "name": "broken", "version": "1.0-1"}
    assert len(body["builds"]) == 1
    st = parse_statement(Envelope.from_dict(body["attestations"][0]).payload)
    assert isinstance(st, RebuildStatement)
    assert st.failed and st.subjects == ()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/builds/0", 400),
        ("/v1/builds/abc", 400),
        ("/v1/builds/999", 404),
        ("/v1/builds/999/log", 404),
        ("/v1/reports/..%2Fconfig.toml", 400),
        ("/v1/reports/1-1-0.exe", 400),
        ("/v1/reports/9-9-9.html", 404),
        ("/v1/packages/debian/Hello/1.0", 400),
        ("/v1/packages/npm/hello/1.0", 404),  # no such ecosystem here: no such collection
        ("/v1/packages/debian/hello/1.0%20x", 400),
        ("/v1/nothing", 404),
    ],
)
async def test_bad_paths(node: Any, path: str, status: int) -> None:
    _, base, session, _ = node
    got, body = await _get(session, base + path)
    assert got == status
    assert "error" in body


async def test_unknown_ecosystem_is_404_naming_the_known_ones(node: Any) -> None:
    _, base, session, _ = node
    status, body = await _get(session, f"{base}/v1/packages/pypi/requests/2.32.3")
    assert status == 404
    assert "'pypi'" in body["error"] and "debian" in body["error"], body


async def test_package_answer_names_its_ecosystem(node: Any) -> None:
    _, base, session, _ = node
    status, body = await _get(session, f"{base}/v1/packages/debian/broken/1.0-1")
    assert status == 200
    assert body["package"]["ecosystem"] == "debian"
    assert all(b["package"]["ecosystem"] == "debian" for b in body["builds"]), body["builds"]


async def test_node_healthz_metrics(node: Any) -> None:
    cfg, base, session, _ = node
    status, body = await _get(session, f"{base}/v1/node")
    assert status == 200
    assert body["id"] == cfg.node.id and body["operator"] == "op-test"
    assert body["url"] == cfg.node.public_url
    load_public_key(body["public_key"])
    assert len(body["keyid"]) == 64
    assert (await _get(session, f"{base}/healthz")) == (200, {"status": "ok"})
    async with session.get(f"{base}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    assert metric(text, "rq_queue_length") == 0
    assert metric(text, "rq_builds_total", verdict="reproduced") == 1
    assert metric(text, "rq_builds_total", verdict="unreproducible") == 1
    assert metric(text, "rq_builds_total", verdict="failed") == 1
    assert metric(text, "rq_outbox_backlog") == 3
    assert metric(text, "rq_attestations_total", kind="rebuild") == 2
    assert metric(text, "rq_build_duration_seconds_count") == 3


async def test_api_is_read_only(node: Any) -> None:
    _, base, session, _ = node
    for method in ("POST", "PUT", "DELETE"):
        async with session.request(method, f"{base}/v1/attestations?since=0") as r:
            assert r.status == 405 and "GET" in r.headers["Allow"]
            assert "error" in await r.json()
