#!/usr/bin/env python3
"""Write the verifier's deterministic test vectors into a directory (default tests/vectors).

Everything is derived from fixed seeds and fixed times: Ed25519 keys from
``sha256("repro-quorum test vector key " + name)``, tiny ``.deb`` files written byte for byte as
ar archives of uncompressed tar members, envelopes (Ed25519 signatures are deterministic),
policies, and one JSON file per named decision case (an attack or a rule) with its expected
outcome. ``tests/unit/verifier/test_vectors.py`` regenerates into a temporary directory and
checks every byte, then runs every decision case.

    python scripts/make_vectors.py tests/vectors
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.debian import canonical_deb_name
from verifier.dsse import Envelope, Signature, sign
from verifier.keys import keyid, private_key_pem, public_key_pem
from verifier.statement import (
    Digest,
    OutputVerdict,
    PackageIdentity,
    RebuildStatement,
    RevocationStatement,
    Subject,
)

SOURCE_DATE_EPOCH = 1_763_726_400  # 2025-11-21T12:00:00Z
NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
FINISHED = NOW - timedelta(days=2)

# Five trusted rebuilders (two share an operator) and one key nobody trusts.
REBUILDERS: tuple[tuple[str, str], ...] = (
    ("rb-alpha", "alpha-university"),
    ("rb-beta", "beta-corp"),
    ("rb-gamma", "gamma-org"),
    ("rb-delta", "gamma-org"),
    ("rb-epsilon", "epsilon-coop"),
)
UNTRUSTED = "mallory"

PACKAGE = "hello"
VERSION = "1.0-1"
ARCH = "amd64"
HELLO = PackageIdentity("debian", PACKAGE, VERSION, ARCH)
DEB_NAME = canonical_deb_name(PACKAGE, VERSION, ARCH)


def private_key(name: str) -> Ed25519PrivateKey:
    seed = hashlib.sha256(f"repro-quorum test vector key {name}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


# --- a tiny .deb, byte for byte --------------------------------------------------------------


def _tar(files: dict[str, bytes], mtime: int) -> bytes:
    """An uncompressed GNU tar with fixed owners, modes and times; directories first."""
    buf = io.BytesIO()
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in sorted(dirs):
            info = tarfile.TarInfo(f"./{d}/" if d != "." else "./")
            info.type = tarfile.DIRTYPE
            info.mode, info.mtime, info.uname, info.gname = 0o755, mtime, "root", "root"
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(f"./{path}" if not path.startswith(".") else path)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ar(members: list[tuple[str, bytes]], mtime: int) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{mtime:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n".encode(
            "ascii"
        )
        assert len(header) == 60
        out += header + data
        if len(data) % 2:
            out += b"\n"
    return bytes(out)


def build_deb(
    package: str,
    version: str,
    architecture: str,
    payload: bytes,
    source: str | None = None,
    mtime: int = SOURCE_DATE_EPOCH,
) -> bytes:
    """A minimal, installable binary package holding one documentation file."""
    doc = f"usr/share/doc/{package}/README"
    control = (
        f"Package: {package}\n"
        + (f"Source: {source}\n" if source else "")
        + f"Version: {version}\nArchitecture: {architecture}\n"
        "Maintainer: repro-quorum tests <tests@repro-quorum.invalid>\n"
        "Installed-Size: 1\nSection: misc\nPriority: optional\n"
        f"Description: repro-quorum test package\n tiny package for verifier tests\n"
    ).encode()
    md5sums = f"{hashlib.md5(payload).hexdigest()}  {doc}\n".encode()  # noqa: S324  # dpkg's own format
    control_tar = _tar({"control": control, "md5sums": md5sums}, mtime)
    data_tar = _tar({doc: payload}, mtime)
    return _ar(
        [("debian-binary", b"2.0\n"), ("control.tar", control_tar), ("data.tar", data_tar)], mtime
    )


# --- statements and envelopes ----------------------------------------------------------------


def rebuild(
    rebuilder: str,
    subjects: tuple[Subject, ...],
    *,
    package: PackageIdentity = HELLO,
    verdicts: tuple[OutputVerdict, ...] = (),
    failure: str | None = None,
    finished: datetime = FINISHED,
    invocation: str = "1",
) -> RebuildStatement:
    return RebuildStatement(
        package=package,
        subjects=subjects,
        builder_id=f"https://{rebuilder}.repro-quorum.invalid/",
        builder_version="0.1.0",
        started_on=finished - timedelta(minutes=5),
        finished_on=finished,
        invocation_id=f"{rebuilder}-{invocation}",
        buildinfo_uri=f"http://repo.invalid/buildinfo/{package.name}_{package.version}_{package.architecture}.buildinfo",
        buildinfo_sha256=Digest(hashlib.sha256(b"buildinfo " + package.name.encode()).hexdigest()),
        repository="http://repo.invalid/debian stable",
        verdicts=verdicts,
        failure=failure,
        internal_parameters={"backend": "bwrap", "environment": "host"},
    )


def revocation(
    rebuilder: str, revoked: Envelope, reason: str, legacy: bool = False
) -> RevocationStatement:
    """A revocation (v2: names the payload sha256; ``legacy``: v1, names the envelope sha256)."""
    return RevocationStatement(
        revoked=Digest(revoked.digest() if legacy else revoked.payload_digest()),
        reason=reason,
        builder_id=f"https://{rebuilder}.repro-quorum.invalid/",
        revoked_on=NOW - timedelta(days=1),
        legacy=legacy,
    )


def envelope_json(env: Envelope) -> bytes:
    return env.to_bytes() + b"\n"


@dataclass
class Vectors:
    """Everything the generator writes, as bytes by relative path."""

    files: dict[str, bytes]

    def add(self, path: str, data: bytes) -> None:
        assert path not in self.files, path
        self.files[path] = data

    def add_json(self, path: str, obj: Any) -> None:
        self.add(path, json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n")


def _policy(
    rebuilders: tuple[tuple[str, str], ...],
    threshold: int = 2,
    extra: str = "",
    distrust_keyids: tuple[str, ...] = (),
    distrust_digests: tuple[str, ...] = (),
) -> bytes:
    lines = [
        "# repro-quorum verifier policy (test vector)",
        f"threshold = {threshold}",
        "require_distinct_operators = true",
        "reject_on_mismatch = 1",
        extra or "max_age_days = 0",
        "",
    ]
    for i, (rid, op) in enumerate(rebuilders):
        lines += [
            "[[rebuilder]]",
            f'id = "{rid}"',
            f'operator = "{op}"',
            f'url = "http://127.0.0.1:{8401 + i}"',
            f'public_key_file = "keys/{rid}.pub"',
            "",
        ]
    lines += [
        "[distrust]",
        "keyids = [" + ", ".join(f'"{k}"' for k in distrust_keyids) + "]",
        "digests = [" + ", ".join(f'"{d}"' for d in distrust_digests) + "]",
        "",
    ]
    return "\n".join(lines).encode()


def generate() -> Vectors:
    v = Vectors({})
    for rid, _ in (*REBUILDERS, (UNTRUSTED, "nobody")):
        key = private_key(rid)
        v.add(f"keys/{rid}.pem", private_key_pem(key))
        v.add(f"keys/{rid}.pub", public_key_pem(key.public_key()).encode())

    deb = build_deb(PACKAGE, VERSION, ARCH, b"hello, reproducible world\n")
    other = build_deb(PACKAGE, VERSION, ARCH, b"hello, world with a backdoor\n")
    v.add(f"debs/{DEB_NAME}", deb)
    v.add(f"debs/other/{DEB_NAME}", other)
    good = Digest(hashlib.sha256(deb).hexdigest())
    bad = Digest(hashlib.sha256(other).hexdigest())
    report = "http://127.0.0.1:8403/v1/reports/7.html"

    def agree(rid: str, finished: datetime = FINISHED) -> Envelope:
        verdict = OutputVerdict(
            DEB_NAME, "reproduced", rebuilt=good, buildinfo=good, repository=good
        )
        stmt = rebuild(rid, (Subject(DEB_NAME, good),), verdicts=(verdict,), finished=finished)
        return sign(stmt.to_bytes(), private_key(rid))

    def mismatch(rid: str) -> Envelope:
        verdict = OutputVerdict(
            DEB_NAME,
            "unreproducible",
            rebuilt=bad,
            buildinfo=good,
            repository=good,
            report_sha256=Digest("d" * 64),
            report_url=report,
        )
        stmt = rebuild(rid, (Subject(DEB_NAME, bad),), verdicts=(verdict,), invocation="2")
        return sign(stmt.to_bytes(), private_key(rid))

    envs: dict[str, bytes] = {}

    def put(name: str, data: bytes) -> str:
        envs[name] = data
        return f"attestations/{name}.json"

    for rid, _ in REBUILDERS:
        put(f"agree-{rid}", envelope_json(agree(rid)))
    put("mismatch-rb-gamma", envelope_json(mismatch("rb-gamma")))
    put("mismatch-rb-beta", envelope_json(mismatch("rb-beta")))

    # Tampered: the payload changed after signing (the subject digest swapped for another).
    tampered = agree("rb-beta")
    tampered_payload = tampered.payload.replace(good.encode(), bad.encode())
    put(
        "tampered-rb-beta",
        envelope_json(Envelope(tampered.payload_type, tampered_payload, tampered.signatures)),
    )
    # Signed by an untrusted key that claims rb-beta's keyid as its hint.
    mallory = sign(
        rebuild("rb-beta", (Subject(DEB_NAME, good),)).to_bytes(), private_key(UNTRUSTED)
    )
    beta_kid = keyid(private_key("rb-beta").public_key())
    forged = Envelope(
        mallory.payload_type,
        mallory.payload,
        tuple(Signature(sig=s.sig, keyid=beta_kid) for s in mallory.signatures),
    )
    put("untrusted-claims-rb-beta", envelope_json(forged))
    # The artifact's digest, signed by rb-beta as another package's file.
    evil = PackageIdentity("debian", "evil", "6.6-6", ARCH)
    put(
        "wrong-name-rb-beta",
        envelope_json(
            sign(
                rebuild(
                    "rb-beta", (Subject("evil_6.6-6_amd64.deb", good),), package=evil
                ).to_bytes(),
                private_key("rb-beta"),
            )
        ),
    )
    revoked_target = agree("rb-beta")
    put(
        "revocation-rb-beta",
        envelope_json(
            sign(
                revocation("rb-beta", revoked_target, "built on a compromised host").to_bytes(),
                private_key("rb-beta"),
            )
        ),
    )
    put(
        "revocation-v1-rb-beta",
        envelope_json(
            sign(
                revocation(
                    "rb-beta", revoked_target, "built on a compromised host", legacy=True
                ).to_bytes(),
                private_key("rb-beta"),
            )
        ),
    )
    put(
        "revocation-of-rb-beta-by-rb-alpha",
        envelope_json(
            sign(
                revocation("rb-alpha", revoked_target, "forged").to_bytes(),
                private_key("rb-alpha"),
            )
        ),
    )
    put("old-rb-beta", envelope_json(agree("rb-beta", finished=NOW - timedelta(days=60))))
    put(
        "failed-rb-beta",
        envelope_json(
            sign(
                rebuild("rb-beta", (), failure="dpkg-buildpackage exited with status 2").to_bytes(),
                private_key("rb-beta"),
            )
        ),
    )
    put("malformed", b'{"payloadType": "application/vnd.in-toto+json", "payload": 42}\n')
    for name, data in envs.items():
        v.add(f"attestations/{name}.json", data)

    v.add("policy.toml", _policy(REBUILDERS))
    v.add("policy-max-age.toml", _policy(REBUILDERS, extra="max_age_days = 30"))
    v.add(
        "policy-tolerant.toml",
        _policy(REBUILDERS, extra="max_age_days = 0").replace(
            b"reject_on_mismatch = 1", b"reject_on_mismatch = 2"
        ),
    )
    v.add(
        "policy-distrust-key.toml",
        _policy(REBUILDERS, distrust_keyids=(beta_kid,)),
    )
    v.add("policy-distrust-digest.toml", _policy(REBUILDERS, distrust_digests=(good,)))

    a = "attestations/agree-rb-alpha.json"
    b = "attestations/agree-rb-beta.json"
    quiet: dict[str, Any] = {"rb-gamma": [], "rb-delta": [], "rb-epsilon": []}
    cases: list[dict[str, Any]] = [
        case(
            "quorum_reached",
            "two operators reproduced it",
            {"rb-alpha": [a], "rb-beta": [b], **quiet},
            True,
            {"rb-alpha": "agrees", "rb-beta": "agrees", "rb-gamma": "no_attestation"},
        ),
        case(
            "tampered_payload",
            "rb-beta's payload was changed after signing",
            {"rb-alpha": [a], "rb-beta": ["attestations/tampered-rb-beta.json"], **quiet},
            False,
            {"rb-beta": "invalid"},
            {"rb-beta": "does not verify"},
        ),
        case(
            "untrusted_key",
            "signed by a key nobody trusts, with rb-beta's keyid as hint",
            {"rb-alpha": [a], "rb-beta": ["attestations/untrusted-claims-rb-beta.json"], **quiet},
            False,
            {"rb-beta": "invalid"},
            {"rb-beta": "does not verify"},
        ),
        case(
            "same_envelope_twice",
            "rb-alpha's envelope served twice, and as rb-beta's",
            {"rb-alpha": [a, a], "rb-beta": [a], **quiet},
            False,
            {"rb-alpha": "agrees", "rb-beta": "invalid"},
        ),
        case(
            "one_operator_two_rebuilders",
            "rb-gamma and rb-delta share an operator",
            {
                "rb-alpha": [],
                "rb-beta": [],
                "rb-gamma": ["attestations/agree-rb-gamma.json"],
                "rb-delta": ["attestations/agree-rb-delta.json"],
                "rb-epsilon": [],
            },
            False,
            {"rb-gamma": "agrees", "rb-delta": "agrees"},
        ),
        case(
            "right_digest_other_package_name",
            "rb-beta signed this digest as evil_6.6-6_amd64.deb",
            {"rb-alpha": [a], "rb-beta": ["attestations/wrong-name-rb-beta.json"], **quiet},
            False,
            {"rb-beta": "invalid"},
            {"rb-beta": "identity mismatch"},
        ),
        case(
            "disagreement",
            "rb-gamma rebuilt the same package and got another digest",
            {
                "rb-alpha": [a],
                "rb-beta": [b],
                "rb-gamma": ["attestations/mismatch-rb-gamma.json"],
                "rb-delta": [],
                "rb-epsilon": [],
            },
            False,
            {"rb-gamma": "disagrees"},
            {"rb-gamma": report},
        ),
        case(
            "disagreement_tolerated",
            "reject_on_mismatch = 2 tolerates one mismatch",
            {
                "rb-alpha": [a],
                "rb-beta": [b],
                "rb-gamma": ["attestations/mismatch-rb-gamma.json"],
                "rb-delta": [],
                "rb-epsilon": [],
            },
            True,
            {"rb-gamma": "disagrees"},
            policy="policy-tolerant.toml",
        ),
        case(
            "equivocation",
            "rb-beta signed both a reproduction and a mismatch",
            {"rb-alpha": [a], "rb-beta": [b, "attestations/mismatch-rb-beta.json"], **quiet},
            False,
            {"rb-beta": "disagrees"},
            {"rb-beta": "equivocated"},
        ),
        case(
            "revoked_attestation",
            "rb-beta revoked its attestation",
            {"rb-alpha": [a], "rb-beta": [b, "attestations/revocation-rb-beta.json"], **quiet},
            False,
            {"rb-beta": "no_attestation"},
            {"rb-beta": "revoked"},
        ),
        case(
            "revoked_attestation_v1",
            "rb-beta revoked its attestation with an older (v1) revocation naming the envelope",
            {"rb-alpha": [a], "rb-beta": [b, "attestations/revocation-v1-rb-beta.json"], **quiet},
            False,
            {"rb-beta": "no_attestation"},
            {"rb-beta": "revoked"},
        ),
        case(
            "revocation_by_another_key",
            "rb-alpha cannot revoke rb-beta's attestation",
            {
                "rb-alpha": [a],
                "rb-beta": [b, "attestations/revocation-of-rb-beta-by-rb-alpha.json"],
                **quiet,
            },
            True,
            {"rb-beta": "agrees"},
        ),
        case(
            "distrusted_key",
            "the policy distrusts rb-beta's key",
            {"rb-alpha": [a], "rb-beta": [b], **quiet},
            False,
            {"rb-beta": "invalid"},
            {"rb-beta": "distrusted"},
            policy="policy-distrust-key.toml",
        ),
        case(
            "distrusted_digest",
            "the policy distrusts the artifact itself",
            {
                "rb-alpha": [a],
                "rb-beta": [b],
                "rb-gamma": ["attestations/agree-rb-gamma.json"],
                "rb-delta": [],
                "rb-epsilon": ["attestations/agree-rb-epsilon.json"],
            },
            False,
            {"rb-alpha": "agrees"},
            policy="policy-distrust-digest.toml",
            reason="distrust",
        ),
        case(
            "expired_attestation",
            "rb-beta's attestation is 60 days old, max_age_days = 30",
            {"rb-alpha": [a], "rb-beta": ["attestations/old-rb-beta.json"], **quiet},
            False,
            {"rb-beta": "no_attestation"},
            {"rb-beta": "older than"},
            policy="policy-max-age.toml",
        ),
        case(
            "malformed_envelope",
            "rb-beta served something that is not an envelope",
            {"rb-alpha": [a], "rb-beta": ["attestations/malformed.json"], **quiet},
            False,
            {"rb-beta": "invalid"},
            {"rb-beta": "malformed"},
        ),
        case(
            "failed_build_not_counted",
            "rb-beta's rebuild failed",
            {"rb-alpha": [a], "rb-beta": ["attestations/failed-rb-beta.json"], **quiet},
            False,
            {"rb-beta": "no_attestation"},
            {"rb-beta": "failed"},
        ),
        case(
            "unreachable_rebuilder",
            "rb-beta could not be reached",
            {"rb-alpha": [a], "rb-beta": {"unreachable": "connection refused"}, **quiet},
            False,
            {"rb-beta": "unreachable"},
            {"rb-beta": "connection refused"},
        ),
        case(
            "invalid_data_does_not_fail_others",
            "rb-gamma's garbage does not stop the quorum",
            {
                "rb-alpha": [a],
                "rb-beta": [b],
                "rb-gamma": ["attestations/malformed.json"],
                "rb-delta": [],
                "rb-epsilon": [],
            },
            True,
            {"rb-gamma": "invalid"},
        ),
    ]
    for c in cases:
        c["artifact"] = {"deb": f"debs/{DEB_NAME}", "sha256": good}
        c["now"] = NOW.isoformat()
        v.add_json(f"decisions/{c['name']}.json", c)
    return v


def case(
    name: str,
    description: str,
    evidence: dict[str, Any],
    accepted: bool,
    statuses: dict[str, str],
    details: dict[str, str] | None = None,
    policy: str = "policy.toml",
    reason: str | None = None,
) -> dict[str, Any]:
    expected: dict[str, Any] = {"accepted": accepted, "statuses": statuses}
    if details:
        expected["details_contain"] = details
    if reason:
        expected["reason_contains"] = reason
    return {
        "name": name,
        "description": description,
        "policy": policy,
        "evidence": evidence,
        "expected": expected,
    }


def write(out: Path) -> list[Path]:
    """Write every vector under ``out``; returns the paths written."""
    written = []
    for rel, data in sorted(generate().files.items()):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if rel.endswith(".pem"):
            path.chmod(0o600)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    out = (
        Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "tests/vectors"
    )
    paths = write(out)
    print(f"wrote {len(paths)} files under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
