"""What the APT hook does with the decisions: scope, dry run, breakglass, and the record.

Pure except for the ``AptLists`` it is handed: ``in_scope`` tells which .debs the policy's
``[scope]`` covers, ``hook_outcome`` turns the decisions, the mode and a breakglass reason into
the outcome and exit status, and ``hook_record`` is the line the decision log gets::

    outcome = hook_outcome(policy, checked, breakglass="security fix, quorum pending")
    outcome.exit_code, outcome.name        # 0, "breakglass"

A breakglass lets one APT run install what the quorum refused; it is only honoured when the run
can be recorded (the caller refuses otherwise) and ``verifier audit`` lists it until the packages
reach a quorum.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from verifier.apt_state import AptLists
from verifier.decision import Artifact, QuorumResult, Status
from verifier.errors import BadDataError
from verifier.policy import Policy

__all__ = [
    "BREAKGLASS_APT_OPTION",
    "BREAKGLASS_ENV",
    "HookOutcome",
    "NotChecked",
    "breakglass_reason",
    "hook_outcome",
    "hook_record",
    "in_scope",
    "parse_hook_config",
]

BREAKGLASS_ENV = "REPRO_QUORUM_BREAKGLASS"
BREAKGLASS_APT_OPTION = "Repro-Quorum::Breakglass"
MAX_REASON = 1000
_CONFIG_LINE = re.compile(r"([^=\s]+)=(.*)")


@dataclass(frozen=True, slots=True)
class NotChecked:
    path: Path
    artifact: Artifact
    why: str


@dataclass(frozen=True, slots=True)
class HookOutcome:
    name: str  # accepted | refused | would-refuse | breakglass
    exit_code: int
    rejected: tuple[tuple[Path, QuorumResult], ...]


def parse_hook_config(text: str) -> dict[str, str]:
    """The APT configuration lines of hook protocol 2 and 3 (``Key=Value`` up to a blank line)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("VERSION "):
        return {}
    out: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            break
        m = _CONFIG_LINE.fullmatch(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def breakglass_reason(env: dict[str, str], apt_config: dict[str, str]) -> str | None:
    """The breakglass reason from the environment or ``-o Repro-Quorum::Breakglass=...``."""
    raw = env.get(BREAKGLASS_ENV) or apt_config.get(BREAKGLASS_APT_OPTION)
    if raw is None:
        return None
    reason = raw.strip()
    if not reason:
        raise BadDataError("breakglass", f"{BREAKGLASS_ENV} is set but empty: give the reason")
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise BadDataError(
            "breakglass", f"the reason must be printable text of at most {MAX_REASON} characters"
        )
    return reason


def in_scope(policy: Policy, artifact: Artifact, lists: AptLists) -> str | None:
    """None when the policy checks this artifact; else why it is outside the scope."""
    if policy.scope is None:
        return None
    repos = lists.repository_of(artifact.sha256)
    if any(policy.scope.covers(r.origin, r.label, r.site) for r in repos):
        return None
    if not repos:
        return "in no repository APT knows (a local .deb?), outside [scope]"
    seen = ", ".join(sorted({f"{r.site} (Origin {r.origin}, Label {r.label})" for r in repos}))
    return f"from {seen}, outside [scope] ({policy.scope.describe()})"


def hook_outcome(
    policy: Policy, checked: Sequence[tuple[Path, QuorumResult]], breakglass: str | None
) -> HookOutcome:
    rejected = tuple((p, r) for p, r in checked if not r.accepted)
    if not rejected:
        return HookOutcome("accepted", 0, ())
    if policy.mode == "dry-run":
        return HookOutcome("would-refuse", 0, rejected)
    if breakglass is not None:
        return HookOutcome("breakglass", 0, rejected)
    return HookOutcome("refused", 1, rejected)


def _package(path: Path, artifact: Artifact) -> dict[str, Any]:
    ident = artifact.identity
    return {"path": str(path), "name": ident.package, "version": ident.version,
            "architecture": ident.architecture, "sha256": artifact.sha256}


def hook_record(
    policy: Policy,
    outcome: HookOutcome,
    checked: Sequence[tuple[Path, QuorumResult]],
    skipped: Sequence[NotChecked],
    *,
    user: str,
    uid: int,
    breakglass: str | None,
    now: datetime,
) -> dict[str, Any]:
    packages: list[dict[str, Any]] = []
    for path, r in checked:
        packages.append({
            **_package(path, r.artifact), "checked": True, "accepted": r.accepted,
            "agreeing": [x.id for x in r.rebuilders if x.status == Status.AGREES],
            "reasons": list(r.reasons),
        })
    for s in skipped:
        packages.append({**_package(s.path, s.artifact), "checked": False, "accepted": None,
                         "agreeing": [], "reasons": [s.why]})
    record: dict[str, Any] = {
        "time": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "user": user, "uid": uid, "mode": policy.mode, "outcome": outcome.name,
        "policy": policy.source, "packages": packages,
    }
    if outcome.name == "breakglass":
        record["breakglass_reason"] = breakglass
    return record
