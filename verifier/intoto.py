"""The root layout ``apt-transport-in-toto`` needs, written from a verifier policy.

One ``rebuild`` step whose functionaries are the policy's rebuilders (their Ed25519 keys in
securesystemslib's form, keyed by securesystemslib's keyid, which the nodes also publish in
``/v1/node`` under ``intoto``) with the policy's threshold, and the inspection of the transport's
default layout: every downloaded ``.deb`` must match a product of that step. The layout is written
unsigned; the installer signs it with their OpenPGP key (``in-toto-sign -f root.layout --gpg
<keyid>``) and names that key in ``APT::Intoto::Keyids`` (docs/verifier.md)::

    layout = root_layout(policy, expires=datetime(2027, 12, 1, tzinfo=UTC))
    Path("root.layout").write_bytes(layout_bytes(layout))

A layout counts keys, not operators: ``require_distinct_operators`` cannot be expressed, so
``layout_warnings`` names the operators that run more than one listed rebuilder.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from verifier.keys import Ed25519PublicKey, raw_public_key
from verifier.policy import Policy

__all__ = [
    "REBUILD_STEP",
    "layout_bytes",
    "layout_warnings",
    "root_layout",
    "sslib_keyid",
    "sslib_public_key",
]

REBUILD_STEP = "rebuild"
_INSPECTION = "verify-reprobuilds"


def sslib_public_key(key: Ed25519PublicKey) -> dict[str, Any]:
    """The key as a securesystemslib public-key dict, with its keyid."""
    # securesystemslib is loaded on use: `import verifier` stays light for installers.
    from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]  # re-exported without __all__

    k = SSlibKey.from_crypto(key, scheme="ed25519")
    return {
        "keyid": k.keyid,
        "keytype": "ed25519",
        "scheme": "ed25519",
        # in-toto 1.x (bookworm) reads this field; it does not change the keyid used here.
        "keyid_hash_algorithms": ["sha256", "sha512"],
        "keyval": {"public": raw_public_key(key).hex()},
    }


def sslib_keyid(key: Ed25519PublicKey) -> str:
    return str(sslib_public_key(key)["keyid"])


def _time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def root_layout(policy: Policy, *, expires: datetime) -> dict[str, Any]:
    """The unsigned Metablock ``{"signatures": [], "signed": <layout>}``."""
    keys = {k["keyid"]: k for k in (sslib_public_key(r.public_key) for r in policy.rebuilders)}
    ids = ", ".join(r.id for r in policy.rebuilders)
    layout = {
        "_type": "layout",
        "expires": _time(expires),
        "readme": (
            f"repro-quorum: accept a .deb when {policy.threshold} of these rebuilders reproduced"
            f" it: {ids} (written from {policy.source})"
        ),
        "keys": keys,
        "steps": [{
            "_type": "step",
            "name": REBUILD_STEP,
            "threshold": policy.threshold,
            "pubkeys": sorted(keys),
            "expected_command": [],
            "expected_materials": [],
            "expected_products": [["CREATE", "*.deb"], ["DISALLOW", "*.deb"]],
        }],
        "inspect": [{
            "_type": "inspection",
            "name": _INSPECTION,
            "run": ["/usr/bin/true"],
            "expected_materials": [
                ["MATCH", "*.deb", "WITH", "PRODUCTS", "FROM", REBUILD_STEP],
                ["DISALLOW", "*.deb"],
            ],
            "expected_products": [],
        }],
    }
    return {"signatures": [], "signed": layout}


def layout_bytes(metablock: dict[str, Any]) -> bytes:
    return json.dumps(metablock, indent=1, sort_keys=True).encode() + b"\n"


def layout_warnings(policy: Policy) -> list[str]:
    """What the policy says that a layout cannot: in-toto counts keys, not operators."""
    warnings: list[str] = []
    if policy.require_distinct_operators:
        many = [op for op, n in Counter(r.operator for r in policy.rebuilders).items() if n > 1]
        for op in sorted(many):
            warnings.append(
                f"operator {op!r} runs more than one listed rebuilder; the layout counts each"
                " key once, so their links can make up the threshold together"
            )
    if policy.reject_on_mismatch:
        warnings.append(
            "the layout cannot express reject_on_mismatch: apt-transport-in-toto only counts"
            " reproducing links; run `verifier check` (or the APT hook) for the full decision"
        )
    if policy.distrust.keyids or policy.distrust.digests:
        warnings.append("[distrust] entries are not part of the layout; remove distrusted"
                        " rebuilders from the policy before writing it")
    return warnings
