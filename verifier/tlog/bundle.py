"""Offline bundles: ``<artifact>.intoto.jsonl`` with one line per envelope that counts for the
artifact, each with its inclusion proof (docs/formats.md, "Bundle lines")::

    {"envelope":{...DSSE envelope...},"inclusionProof":{"logIndex":"7",...}}

A bare envelope per line (the older attestation-file format) is read too, without a proof.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from verifier.decision import Artifact
from verifier.dsse import Envelope, strict_json_loads
from verifier.errors import BadDataError, HTTPStatusError, UnreachableError
from verifier.policy import Policy
from verifier.sources import (
    ClientConfig,
    FetcherInterface,
    digest_url,
    envelopes_in,
    group_by_key,
    load_attestations,
)
from verifier.tlog.inclusion import InclusionProof, proofs_by_digest

__all__ = ["bundle_line", "collect", "read_bundles", "write_bundle"]


def bundle_line(envelope: bytes, proof: InclusionProof | None) -> bytes:
    doc: dict[str, object] = {"envelope": json.loads(Envelope.from_bytes(envelope).to_bytes())}
    if proof is not None:
        doc["inclusionProof"] = proof.to_dict()
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_bundle(path: Path, items: Iterable[tuple[bytes, InclusionProof | None]]) -> int:
    lines = [bundle_line(e, p) for e, p in items]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in lines))
    tmp.replace(path)
    return len(lines)


def read_bundles(paths: Iterable[Path]) -> tuple[list[bytes],
                                                 dict[str, InclusionProof | BadDataError]]:
    """Envelope bytes (canonical) and the proofs by envelope digest, from bundle lines, bare
    envelope lines and ``*.json`` envelope files under ``paths``. Nothing is trusted yet."""
    envelopes: list[bytes] = []
    proofs: dict[str, InclusionProof | BadDataError] = {}
    for raw in load_attestations(paths):
        try:
            doc = strict_json_loads(raw, "bundle line")
        except BadDataError:
            envelopes.append(raw)  # the decision reports it as malformed
            continue
        if isinstance(doc, dict) and "envelope" in doc:
            env = json.dumps(doc["envelope"], sort_keys=True, separators=(",", ":")).encode()
            envelopes.append(env)
            if set(doc) - {"envelope", "inclusionProof"}:
                continue
            if "inclusionProof" in doc:
                digest = hashlib.sha256(env).hexdigest()
                try:
                    proofs[digest] = InclusionProof.from_dict(doc["inclusionProof"])
                except BadDataError as e:
                    proofs[digest] = e
        else:
            envelopes.append(raw)
    return envelopes, proofs


async def collect(artifact: Artifact, policy: Policy, fetcher: FetcherInterface,
                  config: ClientConfig) -> tuple[list[tuple[bytes, InclusionProof | None]],
                                                 list[str]]:
    """Ask every trusted rebuilder for the artifact's envelopes with proofs; those by trusted
    keys, with their proof (or None), and a sentence per rebuilder that could not help."""
    items: dict[str, tuple[bytes, InclusionProof | None]] = {}
    problems: list[str] = []
    for r in policy.rebuilders:
        url = digest_url(r.base_url, artifact) + "&proofs=1"
        try:
            body = await fetcher.fetch(url, max_bytes=config.max_response_bytes,
                                       timeout=config.timeout)
            envs = envelopes_in(body, url, config)
            doc = strict_json_loads(body, "response")
            raw_proofs = doc.get("proofs", {}) if isinstance(doc, dict) else {}
            proofs = proofs_by_digest(raw_proofs if isinstance(raw_proofs, dict) else {})
        except HTTPStatusError as e:
            if e.status != 404:
                problems.append(f"{r.id}: {e.reason}")
            continue
        except (UnreachableError, BadDataError) as e:
            problems.append(f"{r.id}: {e}")
            continue
        grouped, _ = group_by_key(envs, policy)
        for env in grouped.get(r.id, []):
            digest = hashlib.sha256(env).hexdigest()
            proof = proofs.get(digest)
            items[digest] = (env, proof if isinstance(proof, InclusionProof) else None)
    return list(items.values()), problems
