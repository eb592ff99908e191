"""Helpers for the tests against Debian's own in-toto tools (packages in-toto and
apt-transport-in-toto, installed by the Makefile): an installer's OpenPGP key, a signed root
layout, and in-toto's verification the way the transport runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
TRANSPORT = Path("/usr/lib/apt/methods/intoto")

# What the transport does after downloading (its _intoto_verify): links and the .deb in one
# directory, the layout and the installer's key from GnuPG, then in_toto_verify.
_VERIFY = """
import sys
import securesystemslib.gpg.functions
import in_toto.verifylib
from in_toto.models.metadata import Metablock
layout = Metablock.load(sys.argv[1])
keys = securesystemslib.gpg.functions.export_pubkeys([sys.argv[2]], homedir=sys.argv[3])
in_toto.verifylib.in_toto_verify(layout, keys)
"""


def require_intoto() -> None:
    """Fail (not skip) when the Makefile's system packages are missing: CI must have them."""
    for tool in ("in-toto-sign", "gpg"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run `make setup` as root (Makefile SYSTEM_PACKAGES)")
    if not TRANSPORT.exists():
        pytest.fail("apt-transport-in-toto is missing: run `make setup` as root")


def installer_key(home: Path) -> str:
    """A fresh OpenPGP signing key in its own GnuPG home; returns its fingerprint."""
    home.mkdir(mode=0o700, parents=True)
    subprocess.run(
        ["gpg", "--batch", "--homedir", str(home), "--passphrase", "", "--quick-gen-key",
         "repro-quorum test installer <installer@example.invalid>", "rsa3072", "sign", "never"],
        check=True, capture_output=True, timeout=120,
    )
    out = subprocess.run(["gpg", "--homedir", str(home), "--list-keys", "--with-colons"],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def stop_agent(home: Path) -> None:
    """gpg starts an agent for its home on first use; it must not outlive the test."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True,
                   check=False, timeout=60)


def sign_layout(layout: Path, fingerprint: str, home: Path) -> None:
    subprocess.run(["in-toto-sign", "-f", str(layout), "--gpg", fingerprint,
                    "--gpg-home", str(home)], check=True, capture_output=True, timeout=120)
    assert json.loads(layout.read_text())["signatures"], "in-toto-sign wrote no signature"


def link_file_name(link: dict[str, object]) -> str:
    """in-toto's FILENAME_FORMAT for a link: <step>.<first 8 of keyid>.link."""
    sig = link["signatures"][0]  # type: ignore[index]
    return f"{link['signed']['name']}.{sig['keyid'][:8]}.link"  # type: ignore[index]


def intoto_verify(workdir: Path, layout: Path, fingerprint: str, home: Path
                  ) -> subprocess.CompletedProcess[str]:
    """Run Debian's in-toto verification in ``workdir`` (links + .deb there)."""
    return subprocess.run([SYSTEM_PYTHON, "-c", _VERIFY, str(layout), fingerprint, str(home)],
                          cwd=workdir, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(home)})


__all__ = ["SYSTEM_PYTHON", "TRANSPORT", "installer_key", "intoto_verify", "link_file_name",
           "require_intoto", "sign_layout", "stop_agent"]
