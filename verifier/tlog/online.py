"""Online checks under ``[log] require_inclusion``: ask each trusted rebuilder (or a
coordinator) for the artifact's envelopes *with* their inclusion proofs, then apply the proofs
and the log state before the decision (``verifier.tlog.require``)::

    result = await check_online_with_proofs(artifact, policy, fetcher, now, state)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from verifier.decision import Artifact, BadResponse, QuorumResult, Unreachable, decide
from verifier.dsse import strict_json_loads
from verifier.errors import BadDataError, HTTPStatusError, UnreachableError
from verifier.policy import Policy
from verifier.sources import (
    ClientConfig,
    FetcherInterface,
    digest_url,
    envelopes_in,
    group_by_key,
    package_url,
)
from verifier.tlog.inclusion import InclusionProof, proofs_by_digest
from verifier.tlog.require import require_inclusion
from verifier.tlog.state import LogState

__all__ = ["check_online_with_proofs"]

Proofs = dict[str, InclusionProof | BadDataError]


async def _query(fetcher: FetcherInterface, url: str, config: ClientConfig
                 ) -> tuple[list[bytes], Proofs] | Unreachable | BadResponse:
    try:
        body = await fetcher.fetch(url, max_bytes=config.max_response_bytes,
                                   timeout=config.timeout)
        envs = envelopes_in(body, url, config)
        doc = strict_json_loads(body, "response")
        raw = doc.get("proofs", {}) if isinstance(doc, dict) else {}
        return envs, proofs_by_digest(raw if isinstance(raw, dict) else {})
    except HTTPStatusError as e:
        if e.status == 404:
            return [], {}
        return Unreachable(e.reason)
    except UnreachableError as e:
        return Unreachable(e.reason)
    except BadDataError as e:
        return BadResponse(f"bad response: {e.reason}")


async def _ask(fetcher: FetcherInterface, base: str, artifact: Artifact, config: ClientConfig
               ) -> tuple[list[bytes], Proofs] | Unreachable | BadResponse:
    """The package query (required: it shows disagreements) and the digest query, both with
    proofs."""
    async with asyncio.TaskGroup() as tg:
        pkg = tg.create_task(_query(fetcher, package_url(base, artifact) + "?proofs=1", config))
        dig = tg.create_task(_query(fetcher, digest_url(base, artifact) + "&proofs=1", config))
    p, d = pkg.result(), dig.result()
    if not isinstance(p, tuple):
        return p
    envs, proofs = list(p[0]), dict(p[1])
    if isinstance(d, tuple):
        envs += d[0]
        proofs.update(d[1])
    return envs, proofs


async def check_online_with_proofs(
    artifact: Artifact, policy: Policy, fetcher: FetcherInterface, now: datetime,
    state: LogState | None, config: ClientConfig | None = None,
    coordinator_url: str | None = None,
) -> QuorumResult:
    config = config or ClientConfig()
    evidence: dict[str, Sequence[bytes] | Unreachable | BadResponse] = {}
    proofs: Proofs = {}
    if coordinator_url is not None:
        answer = await _ask(fetcher, coordinator_url, artifact, config)
        if isinstance(answer, (Unreachable, BadResponse)):
            kind = type(answer)
            evidence = {r.id: kind(f"via coordinator: {answer.error}") for r in policy.rebuilders}
        else:
            evidence = dict(group_by_key(answer[0], policy)[0])
            proofs = answer[1]
    else:
        answers = await asyncio.gather(*(_ask(fetcher, r.base_url, artifact, config)
                                         for r in policy.rebuilders))
        for r, answer in zip(policy.rebuilders, answers, strict=True):
            if isinstance(answer, (Unreachable, BadResponse)):
                evidence[r.id] = answer
            else:
                evidence[r.id] = answer[0]
                proofs.update(answer[1])
    return decide(artifact, policy, require_inclusion(policy, evidence, proofs, state), now)
