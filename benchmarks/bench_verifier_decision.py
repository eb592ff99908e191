"""Decision cost, M=5 trusted rebuilders, N=3, in memory, vs three bare Ed25519 verifications.

Three rebuilders sent one agreeing envelope each, two sent nothing. The baseline is the floor:
three ``Ed25519PublicKey.verify`` calls over the same PAE messages. Target ratio <= 1.5.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from verifier.debian import read_deb_identity, sha256_file
from verifier.decision import Artifact, decide
from verifier.dsse import Envelope, pae
from verifier.policy import Policy

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors"


def _per_call(fn: Callable[[], object], n: int) -> float:
    """Mean CPU seconds per call: process time, so other tenants' load counts less."""
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def main(quick: bool = False) -> dict[str, object]:
    base = Policy.load(VECTORS / "policy.toml")
    policy = dataclasses.replace(base, threshold=3)
    deb = VECTORS / "debs/hello_1.0-1_amd64.deb"
    artifact = Artifact(sha256_file(deb), read_deb_identity(deb))
    agreeing = ["rb-alpha", "rb-beta", "rb-epsilon"]
    raw = {rid: (VECTORS / f"attestations/agree-{rid}.json").read_bytes() for rid in agreeing}
    evidence = {r.id: ([raw[r.id]] if r.id in raw else []) for r in policy.rebuilders}
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    result = decide(artifact, policy, evidence, now)
    assert result.accepted, result.reasons

    checks = []
    for rid in agreeing:
        env = Envelope.from_bytes(raw[rid])
        key = policy.rebuilder(rid).public_key  # type: ignore[union-attr]
        checks.append((key, env.signatures[0].sig, pae(env.payload_type, env.payload)))

    def bare() -> None:
        for key, sig, msg in checks:
            key.verify(sig, msg)

    def full() -> None:
        decide(artifact, policy, evidence, now)

    rounds, per_round = (15, 50) if quick else (41, 100)
    # Interleave short rounds so both see the same machine load; compare the fastest round of
    # each (the least disturbed by other tenants) and report the medians too.
    t_bare, t_full = [], []
    for _ in range(rounds):
        t_bare.append(_per_call(bare, per_round))
        t_full.append(_per_call(full, per_round))
    b, f = min(t_bare), min(t_full)
    return {
        "median_ratio": round(statistics.median(t_full) / statistics.median(t_bare), 3),
        "decision_us": round(f * 1e6, 1),
        "three_verifications_us": round(b * 1e6, 1),
        "ratio": round(f / b, 3),
        "target_ratio": 1.5,
        "met": f / b <= 1.5,
    }


if __name__ == "__main__":
    print(main(quick=True))
