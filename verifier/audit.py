"""``verifier audit``: does the quorum still stand behind what is installed?

Policies, revocations and distrust lists change after installation. The audit re-decides every
installed package (dpkg's status) under the current policy: the .deb's digest comes from APT's
cache when the file is still there, else from the sha256 a repository index lists for the
installed version. It lists what no longer reaches the quorum and why, every breakglass install
of the APT hook that still lacks one, and what it could not check; exit 1 if anything lacks a
quorum. A systemd timer (verifier/systemd/repro-quorum-audit.timer) runs it daily.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verifier.apt_state import AptLists, InstalledPackage, cached_deb, read_installed
from verifier.debian import read_deb_identity, sha256_file
from verifier.decision import Artifact, QuorumResult
from verifier.decision_log import read_records
from verifier.errors import BadDataError
from verifier.hook import in_scope
from verifier.policy import Policy
from verifier.sources import ClientConfig
from verifier.statement import Digest

__all__ = ["AuditReport", "audit", "run_audit"]

EXIT_OK, EXIT_LACKING = 0, 1


@dataclass(frozen=True, slots=True)
class Audited:
    package: InstalledPackage
    digest_from: str
    result: QuorumResult


@dataclass(frozen=True, slots=True)
class Unchecked:
    package: InstalledPackage
    kind: str  # "digest unknown" | "outside scope" | "unusable"
    why: str


@dataclass(frozen=True, slots=True)
class Breakglass:
    package: InstalledPackage
    sha256: str
    time: str
    user: str
    reason: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    policy: str
    audited: tuple[Audited, ...]
    unchecked: tuple[Unchecked, ...]
    breakglass: tuple[Breakglass, ...]  # breakglass installs still installed and still lacking

    @property
    def lacking(self) -> tuple[Audited, ...]:
        return tuple(a for a in self.audited if not a.result.accepted)

    @property
    def exit_code(self) -> int:
        return EXIT_LACKING if self.lacking or self.breakglass else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        def pkg(p: InstalledPackage) -> dict[str, str]:
            return {"name": p.name, "version": p.version, "architecture": p.architecture}

        return {
            "policy": self.policy,
            "audited": [{"package": pkg(a.package), "digest_from": a.digest_from,
                         **a.result.to_dict()} for a in self.audited],
            "lacking": [pkg(a.package) for a in self.lacking],
            "unchecked": [{"package": pkg(u.package), "kind": u.kind, "why": u.why}
                          for u in self.unchecked],
            "breakglass": [{"package": pkg(b.package), "sha256": b.sha256, "time": b.time,
                            "user": b.user, "reason": b.reason} for b in self.breakglass],
        }


def _locate(pkg: InstalledPackage, cache: Path, lists: AptLists
            ) -> tuple[Artifact, str] | Unchecked:
    """The installed package's artifact and where its digest came from, or why it has none."""
    deb = cached_deb(pkg, cache)
    if deb is not None:
        try:
            ident = read_deb_identity(deb)
            sha = sha256_file(deb)
        except (BadDataError, OSError) as e:
            return Unchecked(pkg, "unusable", f"its cached file {deb} is unreadable ({e})")
        if (ident.package, ident.version, ident.architecture) != (
                pkg.name, pkg.version, pkg.architecture):
            return Unchecked(pkg, "unusable", f"its cached file {deb} holds"
                             f" {ident.subject_name}, not the installed package")
        return Artifact(Digest(sha), ident), f"APT cache {deb}"
    entries = lists.find(pkg.name, pkg.version, pkg.architecture)
    digests = {e.sha256 for e in entries}
    if not digests:
        return Unchecked(pkg, "digest unknown", "no .deb in APT's cache and no repository"
                         " index lists this version (a local or removed package?)")
    if len(digests) > 1:
        sites = ", ".join(sorted({e.repository.site for e in entries}))
        return Unchecked(pkg, "unusable", f"repository indexes disagree on its digest ({sites})")
    try:
        ident = pkg.identity()
    except BadDataError as e:
        return Unchecked(pkg, "unusable", f"its dpkg status entry is unusable ({e.reason})")
    entry = entries[0]
    return Artifact(Digest(entry.sha256), ident), f"index of {entry.repository.site}"


async def audit(
    policy: Policy,
    *,
    installed: list[InstalledPackage],
    lists: AptLists,
    cache: Path,
    attestation_dirs: list[Path],
    coordinator: str | None,
    config: ClientConfig,
    decision_log: Path,
) -> AuditReport:
    from verifier.cli import check_artifacts  # the same checks as `verifier check`

    to_check: list[tuple[Path, Artifact]] = []
    located: dict[Digest, tuple[InstalledPackage, str]] = {}
    unchecked: list[Unchecked] = []
    for pkg in installed:
        found = _locate(pkg, cache, lists)
        if isinstance(found, Unchecked):
            unchecked.append(found)
            continue
        artifact, origin = found
        why = in_scope(policy, artifact, lists)
        if why is not None:
            unchecked.append(Unchecked(pkg, "outside scope", why))
            continue
        to_check.append((Path(pkg.cache_name), artifact))
        located[artifact.sha256] = (pkg, origin)
    checked = await check_artifacts(to_check, policy, attestation_dirs, coordinator, config)
    audited = [Audited(located[c.result.artifact.sha256][0],
                       located[c.result.artifact.sha256][1], c.result) for c in checked]
    by_digest = {a.result.artifact.sha256: a for a in audited}
    outstanding: dict[str, Breakglass] = {}
    for rec in read_records(decision_log):
        if rec.get("outcome") != "breakglass":
            continue
        for p in rec.get("packages", []):
            if not isinstance(p, dict) or p.get("accepted") is not False:
                continue
            a = by_digest.get(Digest(str(p.get("sha256"))))
            if a is not None and not a.result.accepted:  # still installed, still lacking
                outstanding[a.result.artifact.sha256] = Breakglass(
                    a.package, a.result.artifact.sha256, str(rec.get("time")),
                    str(rec.get("user")), str(rec.get("breakglass_reason")))
    return AuditReport(policy.source, tuple(audited), tuple(unchecked),
                       tuple(outstanding.values()))


def _render(report: AuditReport, out: Any) -> None:
    from verifier.cli import printable

    n_ok = len(report.audited) - len(report.lacking)
    print(f"audited {len(report.audited) + len(report.unchecked)} installed packages under"
          f" {report.policy}: {n_ok} reach the quorum, {len(report.lacking)} do not,"
          f" {len(report.unchecked)} not checked", file=out)
    for a in report.lacking:
        p = a.package
        print(printable(f"LACKS QUORUM {p.name} {p.version} {p.architecture}"
                        f" (digest from {a.digest_from}): {a.result.summary}"), file=out)
        for reason in a.result.reasons:
            print(printable(f"  why: {reason}"), file=out)
    for b in report.breakglass:
        print(printable(f"BREAKGLASS {b.package.name} {b.package.version}"
                        f" {b.package.architecture} (sha256 {b.sha256}) installed {b.time} by"
                        f" {b.user}, reason {b.reason!r}: still without a quorum"), file=out)
    if report.unchecked:
        kinds = Counter(u.kind for u in report.unchecked)
        print("not checked: " + "; ".join(f"{n} {why}" for why, n in kinds.most_common()),
              file=out)


def run_audit(args: argparse.Namespace) -> int:
    from verifier.cli import load_policy

    policy = load_policy(args.policy)
    report = asyncio.run(audit(
        policy,
        installed=read_installed(args.admindir),
        lists=AptLists.read(args.apt_lists),
        cache=args.apt_cache,
        attestation_dirs=args.attestations,
        coordinator=args.coordinator,
        config=ClientConfig(timeout=args.timeout),
        decision_log=args.decision_log or policy.decision_log,
    ))
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
    else:
        _render(report, sys.stdout)
    return report.exit_code
