"""The ``verifier`` command: check .deb files against a policy, make keys, guard APT.

    verifier check [--policy FILE] [--attestations DIR]... [--coordinator URL] [--json] DEB...
    verifier keygen --out PATH [--public-out PATH]
    verifier apt-hook [--policy FILE]          # DPkg::Pre-Install-Pkgs; .deb paths on stdin
    verifier audit [--policy FILE] [--json]    # re-check what is installed; exit 1 if any fails
    verifier intoto-layout [--policy FILE] --out root.layout   # for apt-transport-in-toto

Exit status: 0 every artifact accepted, 1 any rejected, 2 usage or configuration error.
argv, stdin and the clock are read here only; everything below is given values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from verifier.apt_state import DEFAULT_ADMINDIR, DEFAULT_APT_CACHE, DEFAULT_APT_LISTS
from verifier.debian import read_deb_identity, sha256_file
from verifier.decision import Artifact, QuorumResult, decide
from verifier.errors import BadDataError, ConfigError, VerifierError
from verifier.keys import generate_private_key, keyid, public_key_pem, save_private_key
from verifier.policy import DEFAULT_POLICY_PATH, Policy
from verifier.sources import (
    ClientConfig,
    check_many_via_coordinator,
    group_by_key,
    open_fetcher,
)
from verifier.tlog.bundle import collect, read_bundles, write_bundle
from verifier.tlog.online import check_online_with_proofs
from verifier.tlog.require import require_inclusion
from verifier.tlog.state import LogState, default_state_path

__all__ = ["main", "parse_hook_input"]

EXIT_ACCEPTED, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
MAX_HOOK_INPUT = 16 * 1024 * 1024
BREAKGLASS_HINT = 'REPRO_QUORUM_BREAKGLASS="<reason>" apt-get ...'


@dataclass(frozen=True, slots=True)
class Checked:
    path: Path
    result: QuorumResult

    def to_dict(self) -> dict[str, object]:
        d = self.result.to_dict()
        d["artifact"] = {"path": str(self.path), **self.result.artifact.to_dict()}
        return d


def parse_hook_input(text: str) -> list[Path]:
    """The .deb paths APT hands a ``DPkg::Pre-Install-Pkgs`` hook.

    Protocol 1 is one path per line. Protocols 2 and 3 start with ``VERSION n``, then the APT
    configuration up to a blank line, then one action line per package whose last field is the
    .deb path, ``**CONFIGURE**`` or ``**REMOVE**`` (5 fields in version 2, 9 in version 3).
    """
    lines = text.splitlines()
    if not lines or not lines[0].startswith("VERSION "):
        return [Path(ln) for ln in lines if ln.strip()]
    version = lines[0].split()[1] if len(lines[0].split()) == 2 else ""
    fields = {"2": 5, "3": 9}.get(version)
    if fields is None:
        raise BadDataError("apt hook input", f"unsupported protocol {lines[0]!r}; expected 2 or 3")
    try:
        start = lines.index("", 1) + 1
    except ValueError as e:
        raise BadDataError("apt hook input", "no blank line after the configuration") from e
    paths = []
    for line in lines[start:]:
        if not line.strip():
            continue
        parts = line.split(" ", fields - 1)
        if len(parts) != fields:
            raise BadDataError(
                "apt hook input",
                f"{line!r} has {len(parts)} fields, protocol {version} has {fields}",
            )
        if parts[-1] not in ("**CONFIGURE**", "**REMOVE**"):
            paths.append(Path(parts[-1]))
    return paths


def _artifact(path: Path) -> Artifact:
    try:
        identity = read_deb_identity(path)
        return Artifact(sha256_file(path), identity)
    except OSError as e:
        raise BadDataError("deb", f"cannot read {path}: {e.strerror or e}") from e


async def _check_all(
    paths: Sequence[Path],
    policy: Policy,
    attestation_dirs: Sequence[Path],
    coordinator: str | None,
    config: ClientConfig,
) -> list[Checked]:
    artifacts = [(p, _artifact(p)) for p in paths]
    return await check_artifacts(artifacts, policy, attestation_dirs, coordinator, config)


async def check_artifacts(
    artifacts: Sequence[tuple[Path, Artifact]],
    policy: Policy,
    attestation_dirs: Sequence[Path],
    coordinator: str | None,
    config: ClientConfig,
) -> list[Checked]:
    """Decide every artifact: offline from files, via a coordinator, or asking each rebuilder."""
    now = datetime.now(UTC)
    if attestation_dirs:
        # Attribute the pool to rebuilders once; every artifact's decision re-verifies its part.
        # Bundle lines may carry inclusion proofs ([log] require_inclusion, verifier.tlog).
        pool, proofs = read_bundles(attestation_dirs)
        grouped, _ = group_by_key(pool, policy)
        if not policy.log.require_inclusion:
            return [Checked(p, decide(a, policy, grouped, now)) for p, a in artifacts]
        with LogState.locked(policy.log.state_file or default_state_path()) as state:
            evidence = require_inclusion(policy, grouped, proofs, state)
            return [Checked(p, decide(a, policy, evidence, now)) for p, a in artifacts]
    if policy.log.require_inclusion:
        return await _check_all_with_proofs(artifacts, policy, coordinator, config, now)
    from verifier.many import check_many_online

    async with open_fetcher() as fetcher:
        # One round trip for up to BATCH_SIZE artifacts: to the coordinator, or to each
        # rebuilder at once (per artifact to one that has no batch endpoint).
        if coordinator:
            results = await check_many_via_coordinator(
                [a for _, a in artifacts], policy, fetcher, coordinator, now, config
            )
        else:
            results = await check_many_online([a for _, a in artifacts], policy, fetcher, now,
                                              config)
    return [Checked(p, r) for (p, _), r in zip(artifacts, results, strict=True)]


async def _check_all_with_proofs(
    artifacts: Sequence[tuple[Path, Artifact]],
    policy: Policy,
    coordinator: str | None,
    config: ClientConfig,
    now: datetime,
) -> list[Checked]:
    """Online, with inclusion proofs and the log state held locked for the whole run."""
    out: list[Checked] = []
    with LogState.locked(policy.log.state_file or default_state_path()) as state:
        async with open_fetcher() as fetcher:
            for path, artifact in artifacts:
                r = await check_online_with_proofs(artifact, policy, fetcher, now, state,
                                                   config, coordinator)
                out.append(Checked(path, r))
    return out


def printable(text: str) -> str:
    """Escape control characters: details quote peers (failure reasons, errors), and a terminal
    must not execute escape sequences a hostile rebuilder put there."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def render(checked: Checked, out: TextIO) -> None:
    """One verdict line, the rebuilders table, then what would make it pass."""
    r = checked.result
    print(printable(f"{r.summary} [{checked.path}]"), file=out)
    rows = [("REBUILDER", "OPERATOR", "STATUS", "DETAIL")] + [
        (x.id, printable(x.operator), str(x.status), printable(x.detail)) for x in r.rebuilders
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  "
            + "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True))
            + "  "
            + row[3],
            file=out,
        )
    for i, reason in enumerate(r.reasons):
        print(("  why: " if i == 0 else "       ") + printable(reason), file=out)


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy", type=Path, default=DEFAULT_POLICY_PATH, help=f"default {DEFAULT_POLICY_PATH}"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--attestations",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="read envelopes from *.intoto.jsonl / *.json files here instead of asking online",
    )
    src.add_argument(
        "--coordinator", metavar="URL", help="ask this coordinator instead of each rebuilder"
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)"
    )


def _add_apt_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--apt-lists", type=Path, default=DEFAULT_APT_LISTS,
                   help=f"APT's downloaded indexes (default {DEFAULT_APT_LISTS})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="verifier",
        description="Accept a .deb only when enough independent rebuilders reproduced it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="decide whether .deb files reach the quorum")
    _add_source_options(check)
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT")
    keygen = sub.add_parser("keygen", help="create an Ed25519 signing key")
    keygen.add_argument("--out", type=Path, required=True, help="private key file (mode 0600)")
    keygen.add_argument("--public-out", type=Path, help="also write the public key PEM here")
    hook = sub.add_parser("apt-hook", help="DPkg::Pre-Install-Pkgs hook: .deb paths on stdin")
    _add_source_options(hook)
    _add_apt_options(hook)
    hook.add_argument("--decision-log", type=Path, metavar="FILE",
                      help="append the record here (default: the policy's decision_log)")
    audit = sub.add_parser(
        "audit", help="re-check every installed package against the current policy"
    )
    _add_source_options(audit)
    _add_apt_options(audit)
    audit.add_argument("--admindir", type=Path, default=DEFAULT_ADMINDIR,
                       help=f"dpkg's database (default {DEFAULT_ADMINDIR})")
    audit.add_argument("--apt-cache", type=Path, default=DEFAULT_APT_CACHE,
                       help=f"downloaded .debs (default {DEFAULT_APT_CACHE})")
    audit.add_argument("--decision-log", type=Path, metavar="FILE",
                       help="the APT hook's record (default: the policy's decision_log)")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    layout = sub.add_parser(
        "intoto-layout", help="write apt-transport-in-toto's root layout from a policy"
    )
    layout.add_argument(
        "--policy", type=Path, default=DEFAULT_POLICY_PATH, help=f"default {DEFAULT_POLICY_PATH}"
    )
    layout.add_argument("--out", type=Path, required=True, help="the unsigned root layout")
    layout.add_argument(
        "--expires-days", type=int, default=365, help="days until it expires (default 365)"
    )
    bundle = sub.add_parser(
        "bundle", help="write <artifact>.intoto.jsonl: envelopes with inclusion proofs")
    bundle.add_argument(
        "--policy", type=Path, default=DEFAULT_POLICY_PATH, help=f"default {DEFAULT_POLICY_PATH}"
    )
    bundle.add_argument("--out", type=Path, required=True, metavar="DIR")
    bundle.add_argument("--timeout", type=float, default=10.0)
    bundle.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT")
    return parser


def _intoto_layout(args: argparse.Namespace) -> int:
    from verifier.intoto import layout_bytes, layout_warnings, root_layout

    policy = load_policy(args.policy)
    if not 1 <= args.expires_days <= 3660:
        raise ConfigError("--expires-days must be between 1 and 3660")
    expires = datetime.now(UTC) + timedelta(days=args.expires_days)
    metablock = root_layout(policy, expires=expires)
    try:
        args.out.write_bytes(layout_bytes(metablock))
    except OSError as e:
        raise ConfigError(f"cannot write {args.out}: {e.strerror or e}") from e
    for w in layout_warnings(policy):
        print(f"verifier: warning: {w}", file=sys.stderr)
    step = metablock["signed"]["steps"][0]
    print(f"wrote {args.out}: step {step['name']!r}, threshold {step['threshold']} of"
          f" {len(step['pubkeys'])} rebuilder keys, expires {metablock['signed']['expires']}")
    print(f"next: in-toto-sign -f {args.out} --gpg <your OpenPGP keyid>, then list that keyid"
          " in APT::Intoto::Keyids (docs/verifier.md)")
    return EXIT_ACCEPTED


def _bundle(args: argparse.Namespace) -> int:
    """``verifier bundle``: fetch each artifact's envelopes and proofs from the trusted
    rebuilders and write them next to each other in ``--out`` for offline checks."""
    policy = load_policy(args.policy)
    config = ClientConfig(timeout=args.timeout)

    async def run() -> int:
        args.out.mkdir(parents=True, exist_ok=True)
        async with open_fetcher() as fetcher:
            for path in args.artifacts:
                items, problems = await collect(_artifact(path), policy, fetcher, config)
                for p in problems:
                    print(f"verifier: {printable(p)}", file=sys.stderr)
                out = args.out / f"{path.name}.intoto.jsonl"
                n = write_bundle(out, items)
                proved = sum(1 for _, proof in items if proof is not None)
                print(f"{out}: {n} envelope(s), {proved} with an inclusion proof")
        return EXIT_ACCEPTED

    return asyncio.run(run())


def _keygen(args: argparse.Namespace) -> int:
    key = generate_private_key()
    try:
        save_private_key(key, args.out)
    except FileExistsError:
        print(f"verifier: {args.out} exists; refusing to overwrite a key", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"verifier: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    pem = public_key_pem(key.public_key())
    if args.public_out:
        args.public_out.parent.mkdir(parents=True, exist_ok=True)
        args.public_out.write_text(pem)
    sys.stdout.write(pem)
    print(f"keyid: {keyid(key.public_key())}")
    return EXIT_ACCEPTED


def load_policy(path: Path) -> Policy:
    """The policy, with a pointer to --policy when the default one does not exist."""
    if path == DEFAULT_POLICY_PATH and not path.exists():
        raise ConfigError(
            f"policy: there is no policy at {DEFAULT_POLICY_PATH} (the default); write one "
            "there (docs/verifier.md) or name yours with --policy FILE"
        )
    return Policy.load(path)


def _run_checks(args: argparse.Namespace, paths: Sequence[Path]) -> int:
    policy = load_policy(args.policy)
    config = ClientConfig(timeout=args.timeout)
    checked = asyncio.run(_check_all(paths, policy, args.attestations, args.coordinator, config))
    rejected = [c for c in checked if not c.result.accepted]
    if args.json:
        json.dump([c.to_dict() for c in checked], sys.stdout, indent=2)
        print()
    else:
        for c in checked:
            render(c, sys.stdout)
    return EXIT_REJECTED if rejected else EXIT_ACCEPTED


def _run_hook(args: argparse.Namespace, text: str) -> int:
    """The APT hook: scope, check, then enforce, report (dry run) or let a breakglass through.

    Every run is recorded in the decision log; a breakglass that cannot be recorded refuses.
    """
    from verifier.apt_state import AptLists
    from verifier.decision_log import append_record, invoking_user, to_syslog
    from verifier.hook import (
        NotChecked,
        breakglass_reason,
        hook_outcome,
        hook_record,
        in_scope,
        parse_hook_config,
    )

    paths = parse_hook_input(text)
    if not paths:
        return EXIT_ACCEPTED  # nothing is being unpacked (removals, configuration only)
    policy = load_policy(args.policy)
    breakglass = breakglass_reason(dict(os.environ), parse_hook_config(text))
    log_path = args.decision_log or policy.decision_log
    artifacts = [(p, _artifact(p)) for p in paths]
    skipped: list[NotChecked] = []
    if policy.scope is not None:
        lists = AptLists.read(args.apt_lists)
        kept = []
        for p, a in artifacts:
            why = in_scope(policy, a, lists)
            if why is None:
                kept.append((p, a))
            else:
                skipped.append(NotChecked(p, a, why))
        artifacts = kept
    config = ClientConfig(timeout=args.timeout)
    checked = asyncio.run(
        check_artifacts(artifacts, policy, args.attestations, args.coordinator, config)
    )
    pairs = [(c.path, c.result) for c in checked]
    outcome = hook_outcome(policy, pairs, breakglass)
    user, uid = invoking_user()
    record = hook_record(policy, outcome, pairs, skipped, user=user, uid=uid,
                         breakglass=breakglass, now=datetime.now(UTC))
    for s in skipped:
        print(f"verifier: not checked: {printable(str(s.path))}: {printable(s.why)}",
              file=sys.stderr)
    for c in checked:
        if c.result.accepted:
            print(f"verifier: {printable(c.result.summary)}", file=sys.stderr)
        else:
            render(c, sys.stderr)
    try:
        append_record(log_path, record)
    except ConfigError as e:
        if outcome.name == "breakglass":
            print(f"verifier: refusing the breakglass: it must be recorded and {e}",
                  file=sys.stderr)
            return EXIT_REJECTED
        print(f"verifier: warning: {e}", file=sys.stderr)
    n, total = len(outcome.rejected), len(checked)
    if outcome.name == "would-refuse":
        print(f"verifier: dry run (mode = \"dry-run\" in {policy.source}): would refuse {n} of"
              f" {total} packages; installing anyway (recorded in {log_path})", file=sys.stderr)
    elif outcome.name == "breakglass":
        names = ", ".join(f"{r.artifact.identity.subject_name} (sha256 {r.artifact.sha256})"
                          for _, r in outcome.rejected)
        to_syslog(f"BREAKGLASS by {user} (uid {uid}): installing {names} without a rebuilder"
                  f" quorum; reason: {breakglass}")
        print(f"verifier: BREAKGLASS: installing {n} of {total} packages without a rebuilder"
              f" quorum, reason {breakglass!r}; recorded in {log_path} and syslog, and listed"
              " by `verifier audit` until they reach a quorum", file=sys.stderr)
    elif outcome.name == "refused":
        print(f"verifier: refusing to install: {n} of {total} packages lack a rebuilder quorum"
              f" under {policy.source} (to override once, with a reason that is recorded:"
              f" {BREAKGLASS_HINT})", file=sys.stderr)
    return outcome.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "intoto-layout":
            return _intoto_layout(args)
        if args.command == "check":
            return _run_checks(args, args.artifacts)
        if args.command == "audit":
            from verifier.audit import run_audit

            return run_audit(args)
        if args.command == "bundle":
            return _bundle(args)
        data = sys.stdin.buffer.read(MAX_HOOK_INPUT + 1)
        if len(data) > MAX_HOOK_INPUT:
            raise BadDataError("apt hook input", f"over {MAX_HOOK_INPUT} bytes")
        return _run_hook(args, data.decode("utf-8", "surrogateescape"))
    except ConfigError as e:
        print(f"verifier: {e}", file=sys.stderr)
        return EXIT_USAGE
    except VerifierError as e:
        print(f"verifier: {e}", file=sys.stderr)
        # Refuse in the hook whatever went wrong; for `check` a bad argument is a usage error.
        return EXIT_REJECTED if args.command == "apt-hook" else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
