"""The ``verifier`` command: check .deb files against a policy, make keys, guard APT.

    verifier check [--policy FILE] [--attestations DIR]... [--coordinator URL] [--json] DEB...
    verifier keygen --out PATH [--public-out PATH]
    verifier apt-hook [--policy FILE]          # DPkg::Pre-Install-Pkgs; .deb paths on stdin

Exit status: 0 every artifact accepted, 1 any rejected, 2 usage or configuration error.
argv, stdin and the clock are read here only; everything below is given values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from verifier.debian import read_deb_identity, sha256_file
from verifier.decision import Artifact, QuorumResult, decide
from verifier.errors import BadDataError, ConfigError, VerifierError
from verifier.keys import generate_private_key, keyid, public_key_pem, save_private_key
from verifier.policy import DEFAULT_POLICY_PATH, Policy
from verifier.sources import (
    ClientConfig,
    check_online,
    check_via_coordinator,
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
_CONCURRENT_ARTIFACTS = 8


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
    now = datetime.now(UTC)
    artifacts = [(p, _artifact(p)) for p in paths]
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
    limit = asyncio.Semaphore(_CONCURRENT_ARTIFACTS)
    async with open_fetcher() as fetcher:

        async def one(path: Path, artifact: Artifact) -> Checked:
            async with limit:
                if coordinator:
                    r = await check_via_coordinator(
                        artifact, policy, fetcher, coordinator, now, config
                    )
                else:
                    r = await check_online(artifact, policy, fetcher, now, config)
                return Checked(path, r)

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(p, a), name=f"check {p}") for p, a in artifacts]
    return [t.result() for t in tasks]


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
    bundle = sub.add_parser(
        "bundle", help="write <artifact>.intoto.jsonl: envelopes with inclusion proofs")
    bundle.add_argument(
        "--policy", type=Path, default=DEFAULT_POLICY_PATH, help=f"default {DEFAULT_POLICY_PATH}"
    )
    bundle.add_argument("--out", type=Path, required=True, metavar="DIR")
    bundle.add_argument("--timeout", type=float, default=10.0)
    bundle.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT")
    return parser


def _bundle(args: argparse.Namespace) -> int:
    """``verifier bundle``: fetch each artifact's envelopes and proofs from the trusted
    rebuilders and write them next to each other in ``--out`` for offline checks."""
    policy = Policy.load(args.policy)
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


def _run_checks(args: argparse.Namespace, paths: Sequence[Path], hook: bool) -> int:
    policy = Policy.load(args.policy)
    config = ClientConfig(timeout=args.timeout)
    checked = asyncio.run(_check_all(paths, policy, args.attestations, args.coordinator, config))
    rejected = [c for c in checked if not c.result.accepted]
    if getattr(args, "json", False):
        json.dump([c.to_dict() for c in checked], sys.stdout, indent=2)
        print()
    elif hook:
        for c in checked:
            if c.result.accepted:
                print(f"verifier: {printable(c.result.summary)}", file=sys.stderr)
            else:
                render(c, sys.stderr)
        if rejected:
            print(
                f"verifier: refusing to install: {len(rejected)} of {len(checked)} packages"
                f" lack a rebuilder quorum under {policy.source}",
                file=sys.stderr,
            )
    else:
        for c in checked:
            render(c, sys.stdout)
    return EXIT_REJECTED if rejected else EXIT_ACCEPTED


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keygen":
            return _keygen(args)
        if args.command == "check":
            return _run_checks(args, args.artifacts, hook=False)
        if args.command == "bundle":
            return _bundle(args)
        data = sys.stdin.buffer.read(MAX_HOOK_INPUT + 1)
        if len(data) > MAX_HOOK_INPUT:
            raise BadDataError("apt hook input", f"over {MAX_HOOK_INPUT} bytes")
        paths = parse_hook_input(data.decode("utf-8", "surrogateescape"))
        if not paths:
            return EXIT_ACCEPTED  # nothing is being unpacked (removals, configuration only)
        return _run_checks(args, paths, hook=True)
    except ConfigError as e:
        print(f"verifier: {e}", file=sys.stderr)
        return EXIT_USAGE
    except VerifierError as e:
        print(f"verifier: {e}", file=sys.stderr)
        # Refuse in the hook whatever went wrong; for `check` a bad argument is a usage error.
        return EXIT_REJECTED if args.command == "apt-hook" else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
