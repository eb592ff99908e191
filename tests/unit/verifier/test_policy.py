"""Policy parsing: the documented defaults, and one named refusal per kind of bad policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.verifier._vectors import VECTORS, make_vectors
from verifier.errors import ConfigError
from verifier.keys import keyid, public_key_pem
from verifier.policy import Policy

mv = make_vectors()


def pem(name: str) -> str:
    return public_key_pem(mv.private_key(name).public_key())


def entry(rid: str, operator: str | None = None, key: str | None = None, **extra: str) -> str:
    lines = [
        "[[rebuilder]]",
        f'id = "{rid}"',
        f'operator = "{operator or rid + "-op"}"',
        f'url = "http://127.0.0.1:8401/{rid}"',
    ]
    if key != "":
        lines.append(f'public_key = """{key or pem(rid)}"""')
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def test_vector_policy_loads_with_defaults() -> None:
    p = Policy.load(VECTORS / "policy.toml")
    assert p.threshold == 2
    assert p.require_distinct_operators is True
    assert p.reject_on_mismatch == 1
    assert p.max_age_days == 0
    assert [r.id for r in p.rebuilders] == [
        "rb-alpha",
        "rb-beta",
        "rb-gamma",
        "rb-delta",
        "rb-epsilon",
    ]
    assert p.rebuilders[0].keyid == keyid(mv.private_key("rb-alpha").public_key())


def test_minimal_policy_gets_documented_defaults(tmp_path: Path) -> None:
    p = Policy.from_toml("threshold = 1\n" + entry("rb-a"), tmp_path)
    assert (p.require_distinct_operators, p.reject_on_mismatch, p.max_age_days) == (True, 1, 0)
    assert p.distrust.keyids == frozenset() and p.distrust.digests == frozenset()


def test_public_key_file_is_relative_to_the_policy(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.pub").write_text(pem("rb-a"))
    (tmp_path / "policy.toml").write_text(
        "threshold = 1\n" + entry("rb-a", key="") + 'public_key_file = "keys/a.pub"\n'
    )
    p = Policy.load(tmp_path / "policy.toml")
    assert p.rebuilders[0].keyid == keyid(mv.private_key("rb-a").public_key())


def test_distrust_accepts_prefixed_digests(tmp_path: Path) -> None:
    text = (
        "threshold = 1\n"
        + entry("rb-a")
        + f'[distrust]\nkeyids = []\ndigests = ["sha256:{"A" * 64}"]\n'
    )
    assert Policy.from_toml(text, tmp_path).distrust.digests == frozenset({"a" * 64})


BAD_POLICIES = {
    "threshold_above_rebuilders": (
        "threshold = 3\n" + entry("rb-a") + entry("rb-b"),
        "above the number",
    ),
    "threshold_zero": ("threshold = 0\n" + entry("rb-a"), "threshold must be at least 1"),
    "threshold_negative": ("threshold = -1\n" + entry("rb-a"), "threshold must be at least 1"),
    "threshold_bool": ("threshold = true\n" + entry("rb-a"), "threshold must be an integer"),
    "threshold_missing": (entry("rb-a"), "threshold is missing"),
    "no_rebuilders": ("threshold = 1\n", "no [[rebuilder]]"),
    "duplicate_id": (
        "threshold = 1\n" + entry("rb-a") + entry("rb-a", key=pem("rb-b")),
        "'rb-a' is listed twice",
    ),
    "duplicate_key": (
        "threshold = 1\n" + entry("rb-a") + entry("rb-b", key=pem("rb-a")),
        "same public key",
    ),
    "unparsable_key": (
        "threshold = 1\n" + entry("rb-a", key="not a key"),
        "rebuilder 'rb-a' public_key",
    ),
    "both_key_forms": (
        "threshold = 1\n" + entry("rb-a", public_key_file='"x.pub"'),
        "exactly one of",
    ),
    "no_key": ("threshold = 1\n" + entry("rb-a", key=""), "exactly one of"),
    "missing_key_file": (
        "threshold = 1\n" + entry("rb-a", key="", public_key_file='"nope.pub"'),
        "cannot read",
    ),
    "missing_operator": (
        'threshold = 1\n[[rebuilder]]\nid = "rb-a"\nurl = "http://x"\n',
        "lacks 'operator'",
    ),
    "missing_url": ('threshold = 1\n[[rebuilder]]\nid = "rb-a"\noperator = "o"\n', "lacks 'url'"),
    "bad_url": (
        "threshold = 1\n" + entry("rb-a").replace("http://127.0.0.1:8401/rb-a", "ftp://x"),
        "not an http(s) URL",
    ),
    "bad_id": ("threshold = 1\n" + entry("RB A", key=pem("rb-a")), "must be lowercase ASCII"),
    "unknown_top_level_key": (
        "threshold = 1\ntreshold = 2\n" + entry("rb-a"),
        "unknown top-level keys treshold",
    ),
    "unknown_rebuilder_key": ("threshold = 1\n" + entry("rb-a", weight="2"), "unknown keys weight"),
    "unknown_distrust_key": (
        "threshold = 1\n" + entry("rb-a") + "[distrust]\nkeys = []\n",
        "[distrust] has unknown keys",
    ),
    "bad_distrust_keyid": (
        "threshold = 1\n" + entry("rb-a") + '[distrust]\nkeyids = ["abc"]\n',
        "keyid 'abc'",
    ),
    "bad_distrust_digest": (
        "threshold = 1\n" + entry("rb-a") + "[distrust]\ndigests = [1]\n",
        "list of strings",
    ),
    "negative_reject_on_mismatch": (
        "threshold = 1\nreject_on_mismatch = -1\n" + entry("rb-a"),
        "reject_on_mismatch",
    ),
    "negative_max_age": ("threshold = 1\nmax_age_days = -3\n" + entry("rb-a"), "max_age_days"),
    "distinct_operators_unreachable": (
        "threshold = 2\n" + entry("rb-a", operator="same") + entry("rb-b", operator="same"),
        "distinct operators",
    ),
    "not_toml": ("threshold = = 1", "not valid TOML"),
}


@pytest.mark.parametrize("name", sorted(BAD_POLICIES))
def test_bad_policy_is_refused_naming_the_entry(name: str, tmp_path: Path) -> None:
    text, fragment = BAD_POLICIES[name]
    with pytest.raises(ConfigError) as e:
        Policy.from_toml(text, tmp_path)
    assert fragment in str(e.value)


def test_same_operator_allowed_when_distinct_operators_not_required(tmp_path: Path) -> None:
    text = (
        "threshold = 2\nrequire_distinct_operators = false\n"
        + entry("rb-a", operator="same")
        + entry("rb-b", operator="same")
    )
    assert Policy.from_toml(text, tmp_path).threshold == 2


def test_unreadable_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Policy.load(tmp_path / "absent.toml")


def test_world_writable_policy_or_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.pub").write_text(pem("rb-a"))
    policy = tmp_path / "policy.toml"
    policy.write_text("threshold = 1\n" + entry("rb-a", key="") + 'public_key_file = "a.pub"\n')
    assert Policy.load(policy).threshold == 1
    (tmp_path / "a.pub").chmod(0o666)
    with pytest.raises(ConfigError, match="writable by everyone"):
        Policy.load(policy)
    (tmp_path / "a.pub").chmod(0o644)
    policy.chmod(0o646)
    with pytest.raises(ConfigError, match="writable by everyone"):
        Policy.load(policy)
