"""Real ``apt-get install`` guarded by ``verifier apt-hook``: refused, then allowed by a quorum.

A tiny .deb in a local file repository (``[trusted=yes]``), two rebuilders served by real aiohttp
servers on loopback, and an APT configuration passed through ``APT_CONFIG`` so the system's own
sources and lists are untouched. The package is purged afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration._verifier_servers import Behaviour, serving_in_thread
from tests.unit.verifier._vectors import make_vectors
from verifier.dsse import sign
from verifier.keys import public_key_pem
from verifier.statement import Digest, OutputVerdict, PackageIdentity, Subject

pytestmark = pytest.mark.slow

PACKAGE = "rq-verifier-hello"
VERSION = "1.0-1"
mv = make_vectors()

needs_root_and_apt = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("apt-get") or not shutil.which("apt-ftparchive"),
    reason="needs root, apt-get and apt-ftparchive (the CI machine has all three)",
)


def attest(rid: str, digest: Digest, name: str) -> bytes:
    stmt = mv.rebuild(
        rid,
        (Subject(name, digest),),
        package=PackageIdentity("debian", PACKAGE, VERSION, "amd64"),
        verdicts=(OutputVerdict(name, "reproduced", rebuilt=digest, repository=digest),),
    )
    return sign(stmt.to_bytes(), mv.private_key(rid)).to_bytes()


def apt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=120", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def installed() -> bool:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", PACKAGE], capture_output=True, text=True
    )
    return r.returncode == 0 and "install ok installed" in r.stdout


@needs_root_and_apt
def test_apt_install_is_blocked_without_quorum_and_completes_with_one(tmp_path: Path) -> None:
    assert not installed(), f"{PACKAGE} is already installed; purge it first"
    repo = tmp_path / "repo"
    repo.mkdir()
    deb_bytes = mv.build_deb(PACKAGE, VERSION, "all", b"guarded by a rebuilder quorum\n")
    name = f"{PACKAGE}_{VERSION}_all.deb"
    (repo / name).write_bytes(deb_bytes)
    packages = subprocess.run(
        ["apt-ftparchive", "packages", "."], cwd=repo, capture_output=True, check=True
    ).stdout
    (repo / "Packages").write_bytes(packages)
    digest = Digest(hashlib.sha256(deb_bytes).hexdigest())

    alpha, beta = Behaviour(), Behaviour()
    with serving_in_thread([alpha, beta]) as urls:
        keys = tmp_path / "keys"
        keys.mkdir()
        policy = ["threshold = 2", ""]
        for rid, op, url in (("rb-alpha", "alpha-u", urls[0]), ("rb-beta", "beta-c", urls[1])):
            (keys / f"{rid}.pub").write_text(public_key_pem(mv.private_key(rid).public_key()))
            policy += [
                "[[rebuilder]]",
                f'id = "{rid}"',
                f'operator = "{op}"',
                f'url = "{url}"',
                f'public_key_file = "keys/{rid}.pub"',
                "",
            ]
        (tmp_path / "policy.toml").write_text("\n".join(policy))

        for d in ("lists/partial", "archives/partial", "cache", "sources.list.d"):
            (tmp_path / d).mkdir(parents=True)
        (tmp_path / "sources.list").write_text(f"deb [trusted=yes] file:{repo} ./\n")
        hook = (
            f"{sys.executable} -m verifier.cli apt-hook --policy {tmp_path}/policy.toml --timeout 5"
            f" --decision-log {tmp_path}/decisions.jsonl"
        )
        (tmp_path / "apt.conf").write_text(
            f'Dir::Etc::SourceList "{tmp_path}/sources.list";\n'
            f'Dir::Etc::SourceParts "{tmp_path}/sources.list.d";\n'
            f'Dir::State::Lists "{tmp_path}/lists";\n'
            f'Dir::Cache "{tmp_path}/cache";\n'
            f'Dir::Cache::Archives "{tmp_path}/archives";\n'
            'Acquire::Languages "none";\n'
            'APT::Sandbox::User "root";\n'
            f'DPkg::Pre-Install-Pkgs {{ "{hook}"; }};\n'
        )
        env = {
            **os.environ,
            "APT_CONFIG": str(tmp_path / "apt.conf"),
            "DEBIAN_FRONTEND": "noninteractive",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        }
        try:
            update = apt(env, "update")
            assert update.returncode == 0, update.stderr

            # 1. No rebuilder has attested it: the hook refuses, apt aborts, nothing installed.
            blocked = apt(env, "install", "--no-install-recommends", PACKAGE)
            assert blocked.returncode != 0
            assert "REJECTED" in blocked.stderr + blocked.stdout
            assert "refusing to install" in blocked.stderr + blocked.stdout
            assert not installed()

            # 2. Only one operator reproduced it: still refused (protocol 3 this time).
            alpha.envelopes = [attest("rb-alpha", digest, name)]
            v3 = ["-o", f"DPkg::Tools::Options::{sys.executable}::Version=3"]
            one = apt(env, *v3, "install", "--no-install-recommends", PACKAGE)
            assert one.returncode != 0, one.stdout
            assert "1 of 2 required" in one.stderr + one.stdout
            assert not installed()

            # 3. Both reproduced it: the hook lets the installation through.
            beta.envelopes = [attest("rb-beta", digest, name)]
            done = apt(env, *v3, "install", "--no-install-recommends", PACKAGE)
            assert done.returncode == 0, done.stderr + done.stdout
            assert "ACCEPTED" in done.stderr + done.stdout
            assert installed()
            assert any(
                q.startswith("/v1/attestations?digest=sha256:" + digest) for q in beta.requests
            )

            # 4. The rebuilders withdraw it; a breakglass installs it anyway, on the record,
            # and the audit lists it until it has a quorum again.
            subprocess.run(["dpkg", "--purge", PACKAGE], capture_output=True, timeout=120)
            alpha.envelopes = beta.envelopes = []
            glass = apt({**env, "REPRO_QUORUM_BREAKGLASS": "hotfix, rebuilders lagging"},
                        *v3, "install", "--no-install-recommends", PACKAGE)
            assert glass.returncode == 0, glass.stderr + glass.stdout
            assert "BREAKGLASS: installing 1 of 1 packages" in glass.stderr + glass.stdout
            assert installed()
            records = [json.loads(x) for x in
                       (tmp_path / "decisions.jsonl").read_text().splitlines()]
            assert [r["outcome"] for r in records] == [
                "refused", "refused", "accepted", "breakglass"]
            assert records[-1]["breakglass_reason"] == "hotfix, rebuilders lagging"
            assert records[-1]["packages"][0]["sha256"] == digest
            audit = subprocess.run(
                [sys.executable, "-m", "verifier.cli", "audit", "--policy",
                 f"{tmp_path}/policy.toml", "--apt-cache", f"{tmp_path}/archives",
                 "--apt-lists", f"{tmp_path}/lists", "--decision-log",
                 f"{tmp_path}/decisions.jsonl", "--timeout", "5"],
                capture_output=True, text=True, timeout=300, env=env, check=False)
            assert audit.returncode == 1, audit.stdout + audit.stderr
            # file: repositories are used in place, so the digest comes from APT's index.
            assert (f"LACKS QUORUM {PACKAGE} {VERSION} all (digest from index of file:{repo}):"
                    in audit.stdout), audit.stdout
            assert f"BREAKGLASS {PACKAGE} {VERSION} all (sha256 {digest})" in audit.stdout
        finally:
            subprocess.run(["dpkg", "--purge", PACKAGE], capture_output=True, timeout=120)
    assert not installed()
