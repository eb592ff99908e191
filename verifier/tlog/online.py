"""Online checks under ``[log] require_inclusion``: ask each trusted rebuilder (or a
coordinator) for the artifact's envelopes *with* their inclusion proofs, then apply the proofs
(``verifier.tlog.require``) and the log state before the decision. A checkpoint of another size
than the one remembered for its log counts only once proved consistent with it from the log's
tiles (``<rebuilder url>/log/tile/...``, ``verifier.tlog.consistency``)::

    result = await check_online_with_proofs(artifact, policy, fetcher, now, state)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from verifier.decision import Artifact, BadResponse, QuorumResult, Unreachable, decide
from verifier.dsse import strict_json_loads
from verifier.errors import BadDataError, HTTPStatusError, UnreachableError
from verifier.policy import Policy, TrustedRebuilder
from verifier.sources import (
    ClientConfig,
    FetcherInterface,
    digest_url,
    envelopes_in,
    group_by_key,
    package_url,
)
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.consistency import Prefix, check_prefix, read_prefix
from verifier.tlog.inclusion import InclusionProof, proofs_by_digest
from verifier.tlog.note import Note
from verifier.tlog.require import Checked, Checkpoints, check_proofs
from verifier.tlog.state import LogState

__all__ = ["check_online_with_proofs", "log_url", "prove_consistency"]

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
    checked, seen = check_proofs(policy, evidence, proofs)
    if state is not None:
        await prove_consistency(policy, checked, seen, state, fetcher, config)
    return decide(artifact, policy, checked, now)


def log_url(r: TrustedRebuilder) -> str:
    """Where a rebuilder serves its log (docs/api.md: ``<public url>/log``)."""
    return r.url.rstrip("/") + "/log"


async def _consistent(fetcher: FetcherInterface, r: TrustedRebuilder, state: LogState,
                      cp: Checkpoint, note: Note, config: ClientConfig,
                      cache: dict[tuple[int, int], Prefix]) -> None:
    """``cp`` proved consistent with what ``state`` remembers for ``r`` (then remembered when
    larger): ``SplitView``, ``BadDataError`` or ``UnreachableError`` otherwise."""
    old = state.compare(r.keyid, cp)
    if old is not None:
        (small, small_root), (large, large_root) = sorted([(old.size, old.root),
                                                           (cp.size, cp.root)])
        if (small, large) not in cache:
            cache[(small, large)] = await read_prefix(fetcher, log_url(r), small, large, config)
        check_prefix(cache[(small, large)], small_root, large_root, cp.origin)
    state.remember(r.keyid, cp, note.to_bytes())


async def prove_consistency(policy: Policy, checked: Checked, seen: Checkpoints,
                            state: LogState, fetcher: FetcherInterface, config: ClientConfig
                            ) -> None:
    """Check every verified checkpoint against ``state``; a rebuilder whose checkpoint is a
    split view, or cannot be proved consistent (tiles unreachable or not matching its
    checkpoint), becomes ``BadResponse`` in ``checked`` with the reason."""
    for rid, cps in seen.items():
        r = policy.rebuilder(rid)
        assert r is not None
        cache: dict[tuple[int, int], Prefix] = {}
        for digest, cp, note in cps:
            try:
                await _consistent(fetcher, r, state, cp, note, config, cache)
            except BadDataError as e:
                checked[rid] = BadResponse(f"attestation {digest[:12]}…: {e}")
                break
            except UnreachableError as e:
                checked[rid] = BadResponse(
                    f"attestation {digest[:12]}…: checkpoint {cp.size} of {cp.origin} cannot "
                    f"be proved consistent with the one verified before: log tiles "
                    f"unreachable: {e}")
                break
