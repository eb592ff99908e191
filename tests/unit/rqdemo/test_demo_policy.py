"""The demo's verifier policy loads: operator display names become operator ids."""

from __future__ import annotations

from pathlib import Path

from rqdemo.demo import NODES, Node, write_policy
from verifier.keys import generate_private_key, public_key_pem, save_private_key
from verifier.policy import Policy


def test_demo_policy_names_operators_by_id(tmp_path: Path) -> None:
    nodes = []
    for i, (node_id, operator) in enumerate(NODES):
        node = Node(node_id, operator, 8400 + i, tmp_path / node_id)
        key = generate_private_key()
        save_private_key(key, node.dir / "keys" / "signing.pem")
        (tmp_path / "coordinator" / "keys").mkdir(parents=True, exist_ok=True)
        (tmp_path / "coordinator" / "keys" / f"{node_id}.pub").write_text(
            public_key_pem(key.public_key())
        )
        nodes.append(node)
    policy = Policy.load(write_policy(tmp_path, nodes))
    assert [r.operator for r in policy.rebuilders] == [
        "alpha-university", "beta-foundation", "gamma-systems"]


def test_demo_policy_can_be_copied_to_etc(tmp_path: Path) -> None:
    """docs/verifier.md installs it as /etc/repro-quorum/policy.toml: no relative key paths."""
    nodes = []
    for i, (node_id, operator) in enumerate(NODES):
        node = Node(node_id, operator, 8400 + i, tmp_path / "state" / node_id)
        save_private_key(generate_private_key(), node.dir / "keys" / "signing.pem")
        nodes.append(node)
    copied = tmp_path / "etc" / "policy.toml"
    copied.parent.mkdir()
    copied.write_bytes(write_policy(tmp_path / "state", nodes).read_bytes())
    policy = Policy.load(copied)
    assert [public_key_pem(r.public_key) for r in policy.rebuilders] == [
        n.public_pem() for n in nodes]
