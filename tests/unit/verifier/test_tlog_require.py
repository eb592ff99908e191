"""``[log] require_inclusion``: proofs from real node logs (rebuilder.tlog on SQLite), the
witness threshold, and the verifier's log state catching a forked log (two trees of one size
shown to two clients) and a rollback."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rebuilder.db import NewAttestation, Store
from rebuilder.tlog import LogSettings, NodeLog
from tests.unit.coordinator.factory import Signer, sha
from verifier.debian import DebIdentity
from verifier.decision import Artifact, BadResponse, Status, decide
from verifier.errors import ConfigError
from verifier.keys import generate_private_key, public_key_pem
from verifier.policy import Policy
from verifier.statement import Digest
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.inclusion import InclusionProof, LogPolicy
from verifier.tlog.note import ALG_COSIGNATURE_V1, Note, NoteSigner
from verifier.tlog.require import require_inclusion
from verifier.tlog.state import LogState, SplitView

ORIGIN = "rb-a.example/log"
NAME = "hello_1.0-1_amd64.deb"
DIGEST = sha("the deb")
ARTIFACT = Artifact(Digest(DIGEST), DebIdentity("hello", "1.0-1", "amd64", "hello", "1.0-1"))


async def _log(tmp: Path, signer: Signer, envs: list[bytes],
               witness: NoteSigner | None) -> dict[str, InclusionProof]:
    store = await Store.open(tmp / "state.db")
    node_log = await NodeLog.open(store, LogSettings(ORIGIN, "x", tmp / "log"),
                                  NoteSigner(ORIGIN, signer.key))
    await store.add_attestations_bulk([
        NewAttestation(hashlib.sha256(e).hexdigest(), e, "rebuild", "hello", "1.0-1", "amd64",
                       ((NAME, DIGEST),)) for e in envs])
    signed = await node_log.checkpoint()
    assert signed is not None
    if witness is not None:
        sig = witness.sign(Note.from_bytes(signed.note).text.encode(), timestamp=1)
        await node_log.add_cosignatures(signed.checkpoint.size, [sig])
    out = {}
    for e in envs:
        d = hashlib.sha256(e).hexdigest()
        p = await node_log.proof_for(d)
        assert p is not None
        out[d] = InclusionProof.from_dict(p)
    await store.close()
    return out


def _policy(tmp: Path, signer: Signer, witness: NoteSigner, threshold: int = 1) -> Policy:
    (tmp / "a.pub").write_text(signer.public_pem)
    return Policy.from_toml(
        f'threshold = 1\nwitness_threshold = {threshold}\n[log]\nrequire_inclusion = true\n'
        f'[[witness]]\nname = "{witness.name}"\nkey = "{witness.vkey}"\n'
        f'[[rebuilder]]\nid = "rb-a"\noperator = "op"\nurl = "http://a.example"\n'
        f'public_key_file = "a.pub"\n', tmp)


@pytest.fixture
def witness() -> NoteSigner:
    return NoteSigner("w.example/w", generate_private_key(), ALG_COSIGNATURE_V1)


async def test_cosigned_proof_counts_and_missing_ones_make_it_invalid(
        tmp_path: Path, witness: NoteSigner) -> None:
    signer = Signer("rb-a")
    env = signer.rebuild("hello", "1.0-1", {NAME: DIGEST}).to_bytes()
    proofs = await _log(tmp_path, signer, [signer.rebuild("x", "1", {"x": sha("x")}).to_bytes(),
                                           env], witness)
    policy = _policy(tmp_path, signer, witness)
    state = LogState({})
    evidence = require_inclusion(policy, {"rb-a": [env]}, dict(proofs), state)
    result = decide(ARTIFACT, policy, evidence, datetime.now(UTC))
    assert result.accepted, result.reasons
    assert [v["size"] for v in state.logs.values()] == [2]
    # No proof at all: invalid, with the reason.
    evidence = require_inclusion(policy, {"rb-a": [env]}, {}, LogState({}))
    assert isinstance(evidence["rb-a"], BadResponse)
    assert "none was given" in evidence["rb-a"].error
    result = decide(ARTIFACT, policy, evidence, datetime.now(UTC))
    assert not result.accepted
    assert result.rebuilders[0].status == Status.INVALID


async def test_too_few_cosignatures_is_invalid(tmp_path: Path, witness: NoteSigner) -> None:
    signer = Signer("rb-a")
    env = signer.rebuild("hello", "1.0-1", {NAME: DIGEST}).to_bytes()
    proofs = await _log(tmp_path, signer, [env], witness=None)  # never cosigned
    evidence = require_inclusion(_policy(tmp_path, signer, witness), {"rb-a": [env]},
                                 dict(proofs), None)
    assert isinstance(evidence["rb-a"], BadResponse)
    assert "cosigned by 0 trusted witness(es)" in evidence["rb-a"].error


async def test_forked_log_is_a_split_view(tmp_path: Path, witness: NoteSigner) -> None:
    signer = Signer("rb-a")
    env = signer.rebuild("hello", "1.0-1", {NAME: DIGEST}).to_bytes()
    other = signer.rebuild("hello", "1.0-1", {NAME: DIGEST}, invocation="b-2").to_bytes()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shown_to_one = await _log(tmp_path / "a", signer, [env, other], witness)
    shown_to_two = await _log(tmp_path / "b", signer, [env, signer.rebuild(
        "y", "1", {"y": sha("y")}).to_bytes()], witness)
    policy = _policy(tmp_path, signer, witness)
    state_file = tmp_path / "state.json"
    with LogState.locked(state_file) as state:
        ok = require_inclusion(policy, {"rb-a": [env]}, dict(shown_to_one), state)
        assert not isinstance(ok["rb-a"], BadResponse)
    with LogState.locked(state_file) as state:  # a later run, another view of the log
        forked = require_inclusion(policy, {"rb-a": [env]}, dict(shown_to_two), state)
    assert isinstance(forked["rb-a"], BadResponse)
    assert "split view" in forked["rb-a"].error and "two different roots" in forked["rb-a"].error


def test_smaller_checkpoint_is_a_split_view() -> None:
    state = LogState({})
    state.observe("k", Checkpoint(ORIGIN, 5, bytes(32)), b"n\n")
    with pytest.raises(SplitView, match="smaller"):
        state.observe("k", Checkpoint(ORIGIN, 4, bytes(32)), b"n\n")
    with pytest.raises(SplitView, match=r"names .other/log"):
        state.observe("k", Checkpoint("other/log", 6, bytes(32)), b"n\n")


def test_state_file_updates_are_serialized(tmp_path: Path) -> None:
    path = tmp_path / "s.json"

    def bump(i: int) -> None:
        with LogState.locked(path) as st:
            st.observe(f"k{i}", Checkpoint(ORIGIN, i + 1, bytes(32)), b"n\n")

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with LogState.locked(path) as st:
        assert sorted(st.logs) == [f"k{i}" for i in range(8)]  # no update lost


@pytest.mark.parametrize(("text", "reason"), [
    ('witness_threshold = 2\n[[witness]]\nname = "w"\nkey = "{k}"\n', "above"),
    ('[[witness]]\nname = "other"\nkey = "{k}"\n', "named"),
    ('[log]\nrequire_inclusion = "yes"\n', "true or false"),
])
def test_bad_log_policies_are_refused(tmp_path: Path, text: str, reason: str) -> None:
    w = NoteSigner("w", generate_private_key(), ALG_COSIGNATURE_V1)
    (tmp_path / "a.pub").write_text(public_key_pem(generate_private_key().public_key()))
    with pytest.raises(ConfigError, match=reason):
        Policy.from_toml("threshold = 1\n" + text.replace("{k}", w.vkey)
                         + '[[rebuilder]]\nid = "a"\noperator = "o"\nurl = "http://a"\n'
                         'public_key_file = "a.pub"\n', tmp_path)
    assert LogPolicy().require_inclusion is False
