"""The verdict classes in the decision: tampering named as such, and the byproduct veto fixed."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from rebuilder.attest import NodeIdentity, rebuild_statement
from rebuilder.compare import compare_outputs
from rebuilder.outcome import BuildJob, OutputResult, RebuildOutcome
from tests.unit.verifier._vectors import VECTORS, load_case, make_vectors
from verifier.decision import Artifact, Status, decide
from verifier.dsse import sign
from verifier.statement import Digest, OutputVerdict, Subject

mv = make_vectors()
_, ARTIFACT, POLICY, _, NOW = load_case("quorum_reached")
NAME = ARTIFACT.identity.subject_name
GOOD = ARTIFACT.sha256
OTHER = Digest(hashlib.sha256((VECTORS / "debs/other" / NAME).read_bytes()).hexdigest())
TAMPER_WARNING = (
    "the repository serves bytes that no rebuilder produced; do not install;"
    " report to the repository's maintainers"
)


def _tampered(rid: str) -> bytes:
    """rid rebuilt GOOD, which the buildinfo lists, while the repository serves OTHER."""
    verdict = OutputVerdict(NAME, "tampered", rebuilt=GOOD, buildinfo=GOOD, repository=OTHER)
    stmt = mv.rebuild(rid, (Subject(NAME, GOOD),), verdicts=(verdict,))
    return bytes(mv.envelope_json(sign(stmt.to_bytes(), mv.private_key(rid))))


def test_tampered_is_named_in_the_reasons() -> None:
    served = Artifact(OTHER, ARTIFACT.identity)
    result = decide(served, POLICY, {"rb-alpha": [_tampered("rb-alpha")],
                                     "rb-beta": [_tampered("rb-beta")]}, NOW)
    assert not result.accepted
    alpha = result.rebuilders[0]
    assert alpha.status == Status.DISAGREES and alpha.verdict == "tampered"
    assert "tampered" in alpha.detail and alpha.to_dict()["verdict"] == "tampered"
    assert TAMPER_WARNING in result.reasons[0]
    assert "reporting tampering" in result.summary


def test_an_unreproducible_disagreement_is_not_called_tampering() -> None:
    g = (VECTORS / "attestations/mismatch-rb-gamma.json").read_bytes()
    a = (VECTORS / "attestations/agree-rb-alpha.json").read_bytes()
    result = decide(ARTIFACT, POLICY, {"rb-alpha": [a], "rb-gamma": [g]}, NOW)
    gamma = next(r for r in result.rebuilders if r.id == "rb-gamma")
    assert gamma.verdict == "unreproducible"
    assert not any("tampered" in r.lower() for r in result.reasons)


# --- the veto: a rebuilt file the repository does not publish ---------------------------------

T = datetime(2026, 1, 1, tzinfo=UTC)


def _node_statement(rid: str, published: dict[str, Digest], rebuilt: dict[str, Digest],
                    invocation: str) -> bytes:
    """What a node signs for one job, through the node's own compare and attest steps."""
    job = BuildJob("hello", ARTIFACT.identity.source_version, ARTIFACT.identity.architecture,
                   "local", "http://repo.invalid/x.buildinfo",
                   {n: (d, f"http://repo.invalid/pool/{n}") for n, d in published.items()})
    comparison = compare_outputs(rebuilt, rebuilt, published)
    outputs = tuple(OutputResult(v.name, v.verdict, v.rebuilt, v.buildinfo, v.repository)
                    for v in comparison.verdicts)
    outcome = RebuildOutcome(job, T, T, Digest("e" * 64), outputs,
                             unpublished=comparison.unpublished)
    identity = NodeIdentity(rid, f"https://{rid}.repro-quorum.invalid/", "0.1.0")
    stmt = rebuild_statement(outcome, identity, invocation_id=f"{rid}/{invocation}",
                             repository="r", reports={})
    return bytes(mv.envelope_json(sign(stmt.to_bytes(), mv.private_key(rid))))


def test_unpublished_rebuilt_file_does_not_veto_a_reproduced_package() -> None:
    """Two nodes reproduced the published .deb; a later job of the same source (a binNMU
    rebuilt without its changelog entry) produced a file of the same name that the repository
    publishes nowhere in that job. Signed as a subject it made each node look equivocated and
    the package was rejected; as a byproduct it says nothing about the published file."""
    binnmu = NAME.replace(f"_{ARTIFACT.identity.version}_", f"_{ARTIFACT.identity.version}+b1_")
    evidence: dict[str, list[bytes]] = {}
    for rid in ("rb-alpha", "rb-beta"):
        evidence[rid] = [
            _node_statement(rid, {NAME: GOOD}, {NAME: GOOD}, "1"),
            _node_statement(rid, {binnmu: Digest("f" * 64)}, {NAME: OTHER}, "2"),
        ]
    result = decide(ARTIFACT, POLICY, evidence, NOW)
    assert [str(r.status) for r in result.rebuilders[:2]] == ["agrees", "agrees"]
    assert result.accepted, result.reasons

    # the same two signatures with the unpublished file as a subject: the old veto
    old = OutputVerdict(NAME, "unreproducible", rebuilt=OTHER)
    for rid in ("rb-alpha", "rb-beta"):
        stmt = mv.rebuild(rid, (Subject(NAME, OTHER),), verdicts=(old,), invocation="2")
        evidence[rid][1] = bytes(mv.envelope_json(sign(stmt.to_bytes(), mv.private_key(rid))))
    vetoed = decide(ARTIFACT, POLICY, evidence, NOW)
    assert not vetoed.accepted and "equivocated" in vetoed.rebuilders[0].detail
