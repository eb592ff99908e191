"""Many artifacts against every trusted rebuilder: one batch request per rebuilder, not two GETs
per artifact and rebuilder.

An upgrade checks hundreds of .debs. ``check_many_online`` sends each rebuilder
``POST /v1/attestations:batch`` (the coordinator's request, docs/api.md; up to ``BATCH_SIZE``
artifacts each), all rebuilders at once, and decides every artifact as ``check_online`` decides
one: the same assessment of each rebuilder's evidence, the same settle grace. A rebuilder that
answers the batch 404 or 405 (an older node) is asked per artifact, as before::

    async with open_fetcher() as fetcher:
        results = await check_many_online(artifacts, policy, fetcher, now)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from verifier.decision import (
    NOT_WAITED_FOR,
    Artifact,
    BadResponse,
    QuorumResult,
    RebuilderResult,
    Status,
    Unreachable,
    assess,
    conclude,
    is_settled,
)
from verifier.errors import BadDataError, HTTPStatusError, UnreachableError
from verifier.policy import Policy, TrustedRebuilder
from verifier.sources import (
    BATCH_SIZE,
    ClientConfig,
    FetcherInterface,
    _batch_answers,
    _batch_body,
    ask,
    ask_until_settled,
)

__all__ = ["BATCH_PATH", "ask_many", "check_many_online"]

BATCH_PATH = "/v1/attestations:batch"
_CONCURRENT_FALLBACK = 8  # per-artifact queries in flight to one rebuilder without the batch

Evidence = list[bytes] | Unreachable | BadResponse


async def _ask_each(
    fetcher: FetcherInterface, base_url: str, artifacts: Sequence[Artifact], config: ClientConfig
) -> list[Evidence]:
    limit = asyncio.Semaphore(_CONCURRENT_FALLBACK)

    async def one(a: Artifact) -> Evidence:
        async with limit:
            try:
                return await ask(fetcher, base_url, a, config)
            except Exception as e:  # as check_online: one answer never fails the others
                return BadResponse(f"its answer could not be read ({type(e).__name__}: {e})")

    return list(await asyncio.gather(*(one(a) for a in artifacts)))


async def ask_many(
    fetcher: FetcherInterface, base_url: str, artifacts: Sequence[Artifact], config: ClientConfig
) -> list[Evidence]:
    """Each artifact's evidence from one rebuilder, in order, in batches of ``BATCH_SIZE``.

    A failed batch is that failure for each of its artifacts; a malformed answer (one that does
    not hold one result per query, for the digest asked, in order) makes them all unusable.
    """
    url = f"{base_url.rstrip('/')}{BATCH_PATH}"
    out: list[Evidence] = []
    for i in range(0, len(artifacts), BATCH_SIZE):
        chunk = artifacts[i:i + BATCH_SIZE]
        failure: Evidence
        try:
            body = await fetcher.post(url, _batch_body(chunk),
                                      max_bytes=config.max_response_bytes * 4,
                                      timeout=config.timeout)
            out += _batch_answers(body, url, chunk, config)
            continue
        except HTTPStatusError as e:
            if e.status in (404, 405):  # an older node: two GETs per artifact
                out += await _ask_each(fetcher, base_url, chunk, config)
                continue
            failure = Unreachable(f"{e.reason} (POST {BATCH_PATH})")
        except UnreachableError as e:
            failure = Unreachable(f"{e.reason} (POST {BATCH_PATH})")
        except BadDataError as e:
            failure = BadResponse(f"bad response to the batch query: {e.reason}")
        out += [failure] * len(chunk)
    return out


async def check_many_online(
    artifacts: Sequence[Artifact],
    policy: Policy,
    fetcher: FetcherInterface,
    now: datetime,
    config: ClientConfig | None = None,
) -> list[QuorumResult]:
    """``check_online`` for many artifacts: every rebuilder is asked once for all of them.

    Every answer is waited for, up to ``config.settle_grace`` seconds more once no pending
    answer can change any artifact's outcome; a rebuilder still silent then shows as not
    waited for in each decision, as in ``check_online``.
    """
    config = config or ClientConfig()
    results: list[dict[str, RebuilderResult]] = [{} for _ in artifacts]
    pending: dict[str, TrustedRebuilder] = {}
    for r in policy.rebuilders:
        if r.keyid in policy.distrust.keyids:  # never asked: never counted
            for i, a in enumerate(artifacts):
                results[i][r.id] = assess(a, r, policy, [], now)
        else:
            pending[r.id] = r
    unsettled = set(range(len(artifacts)))
    settled = asyncio.Event()

    def update_settled() -> None:
        for i in list(unsettled):
            if is_settled(artifacts[i], policy, results[i].values(), pending.values()):
                unsettled.discard(i)
        if not unsettled:
            settled.set()

    async def one(r: TrustedRebuilder) -> None:
        evidence: list[Evidence]
        try:
            evidence = await ask_many(fetcher, r.base_url, artifacts, config)
        except Exception as e:  # one source never fails the others
            bad = BadResponse(f"its answer could not be read ({type(e).__name__}: {e})")
            evidence = [bad] * len(artifacts)
        for i, (a, ev) in enumerate(zip(artifacts, evidence, strict=True)):
            results[i][r.id] = assess(a, r, policy, ev, now)
        del pending[r.id]
        if pending:
            update_settled()

    if pending and artifacts:
        update_settled()
    if pending and artifacts and not settled.is_set():
        await ask_until_settled([one(r) for r in list(pending.values())], settled,
                                config.settle_grace)
    return [
        conclude(a, policy, [
            results[i].get(r.id)
            or RebuilderResult(r.id, r.operator, Status.NO_ATTESTATION, NOT_WAITED_FOR)
            for r in policy.rebuilders
        ])
        for i, a in enumerate(artifacts)
    ]
