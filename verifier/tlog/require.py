"""Apply ``[log] require_inclusion`` to a decision's evidence (ARCHITECTURE §4.9).

Runs before ``decide``: a rebuilder whose attestation lacks a valid inclusion proof in a
checkpoint signed by its key and cosigned by enough trusted witnesses, or whose checkpoint
contradicts the verifier's log state (a split view), gets ``BadResponse`` evidence, so the
decision shows it ``invalid`` with the reason. Revocations count without a proof: they only
ever take trust away.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from verifier.decision import BadResponse, Evidence, Unreachable
from verifier.dsse import Envelope
from verifier.errors import BadDataError
from verifier.policy import Policy
from verifier.statement import RevocationStatement, parse_statement
from verifier.tlog.inclusion import InclusionProof, verify_envelope_proof
from verifier.tlog.state import LogState

__all__ = ["require_inclusion"]


def require_inclusion(policy: Policy, evidence: Evidence,
                      proofs: Mapping[str, InclusionProof | BadDataError],
                      state: LogState | None) -> dict[str, Sequence[bytes] | Unreachable
                                                      | BadResponse]:
    """``evidence`` with every rebuilder checked as above (unchanged when not required)."""
    out: dict[str, Sequence[bytes] | Unreachable | BadResponse] = dict(evidence)
    if not policy.log.require_inclusion:
        return out
    for rid, ev in evidence.items():
        r = policy.rebuilder(rid)
        if r is None or isinstance(ev, (Unreachable, BadResponse)):
            continue
        problem = None
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
                if state is not None:
                    state.observe(r.keyid, cp, note.to_bytes())
            except BadDataError as e:
                problem = f"attestation {digest[:12]}…: {e}"
                break
        if problem is not None:
            out[rid] = BadResponse(problem)
    return out
