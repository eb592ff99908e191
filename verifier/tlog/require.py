"""Apply ``[log] require_inclusion`` to a decision's evidence (ARCHITECTURE §4.9).

Runs before ``decide``: a rebuilder whose attestation lacks a valid inclusion proof in a
checkpoint signed by its key and cosigned by enough trusted witnesses, or whose checkpoint
contradicts the verifier's log state (a split view), gets ``BadResponse`` evidence, so the
decision shows it ``invalid`` with the reason. Revocations count without a proof: they only
ever take trust away.

``require_inclusion`` is the offline form (the state is checked without tiles, see
``LogState.observe``); ``verifier.tlog.online`` uses ``check_proofs`` and proves each new
checkpoint consistent with the remembered one from the log's tiles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from verifier.decision import BadResponse, Evidence, Unreachable
from verifier.dsse import Envelope
from verifier.errors import BadDataError
from verifier.policy import Policy
from verifier.statement import RevocationStatement, parse_statement
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.inclusion import InclusionProof, verify_envelope_proof
from verifier.tlog.note import Note
from verifier.tlog.state import LogState

__all__ = ["Checked", "Checkpoints", "check_proofs", "require_inclusion"]

Checked = dict[str, Sequence[bytes] | Unreachable | BadResponse]
# rebuilder id -> (envelope digest, verified checkpoint, its note) of each proof, by size
Checkpoints = dict[str, list[tuple[str, Checkpoint, Note]]]


def check_proofs(policy: Policy, evidence: Evidence,
                 proofs: Mapping[str, InclusionProof | BadDataError]
                 ) -> tuple[Checked, Checkpoints]:
    """``evidence`` with every rebuilder whose proofs do not verify made ``BadResponse``, and
    the checkpoints the others' proofs verified in (unchanged when inclusion is not required)."""
    out: Checked = dict(evidence)
    seen: Checkpoints = {}
    if not policy.log.require_inclusion:
        return out, seen
    for rid, ev in evidence.items():
        r = policy.rebuilder(rid)
        if r is None or isinstance(ev, (Unreachable, BadResponse)):
            continue
        problem = None
        cps: list[tuple[str, Checkpoint, Note]] = []
        for raw in ev:
            try:
                env = Envelope.from_bytes(raw)
                if not env.verify(r.public_key):
                    continue  # not this rebuilder's: the decision says so
                canonical = env.to_bytes()
                digest = hashlib.sha256(canonical).hexdigest()
                if isinstance(parse_statement(env.payload), RevocationStatement):
                    continue
            except BadDataError:
                continue  # the decision reports malformed envelopes itself
            proof = proofs.get(digest)
            try:
                if proof is None:
                    raise BadDataError("inclusion proof", "none was given")
                if isinstance(proof, BadDataError):
                    raise proof
                cp, note = verify_envelope_proof(canonical, proof, r.public_key, policy.log)
                cps.append((digest, cp, note))
            except BadDataError as e:
                problem = f"attestation {digest[:12]}…: {e}"
                break
        if problem is not None:
            out[rid] = BadResponse(problem)
        elif cps:
            seen[rid] = sorted(cps, key=lambda c: c[1].size)
    return out, seen


def require_inclusion(policy: Policy, evidence: Evidence,
                      proofs: Mapping[str, InclusionProof | BadDataError],
                      state: LogState | None) -> Checked:
    """``evidence`` with every rebuilder checked as above, offline (unchanged when not
    required)."""
    out, seen = check_proofs(policy, evidence, proofs)
    if state is None:
        return out
    for rid, cps in seen.items():
        r = policy.rebuilder(rid)
        assert r is not None
        for digest, cp, note in cps:
            try:
                state.observe(r.keyid, cp, note.to_bytes())
            except BadDataError as e:
                out[rid] = BadResponse(f"attestation {digest[:12]}…: {e}")
                break
    return out
