"""``verifier audit``: re-deciding what dpkg says is installed (verifier/audit.py).

A dpkg status file, an APT cache and APT lists written the way dpkg and APT write them, the
committed vectors as offline attestations, and the hook's real decision log.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.unit.verifier._vectors import VECTORS
from verifier.cli import main
from verifier.debian import sha256_file
from verifier.decision_log import append_record

DEB = VECTORS / "debs/hello_1.0-1_amd64.deb"
LIBFOO_SHA = "ab" * 32

STATUS = """\
Package: hello
Status: install ok installed
Architecture: amd64
Version: 1.0-1

Package: libfoo1
Status: install ok installed
Architecture: amd64
Source: foo (2.0-1)
Version: 2.0-1+b1

Package: localtool
Status: install ok installed
Architecture: all
Version: 0.1

Package: removed
Status: deinstall ok config-files
Architecture: amd64
Version: 9
"""


@pytest.fixture
def machine(tmp_path: Path) -> dict[str, Path]:
    admin = tmp_path / "dpkg"
    admin.mkdir()
    (admin / "status").write_text(STATUS)
    cache = tmp_path / "archives"
    cache.mkdir()
    shutil.copy(DEB, cache / "hello_1.0-1_amd64.deb")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb.example.org_debian_dists_stable_Release").write_text(
        "Origin: Example\nLabel: Example\nSuite: stable\n")
    (lists / "deb.example.org_debian_dists_stable_main_binary-amd64_Packages").write_text(
        "Package: libfoo1\nSource: foo (2.0-1)\nVersion: 2.0-1+b1\nArchitecture: amd64\n"
        f"Filename: pool/main/f/foo/libfoo1_2.0-1+b1_amd64.deb\nSHA256: {LIBFOO_SHA}\n\n")
    att = tmp_path / "att"
    att.mkdir()
    (att / "pool.intoto.jsonl").write_bytes(b"".join(
        (VECTORS / f"attestations/agree-{rid}.json").read_bytes() for rid in ("rb-alpha", "rb-beta")
    ) + b"\n")
    return {"admin": admin, "cache": cache, "lists": lists, "att": att,
            "log": tmp_path / "decisions.jsonl"}


def _audit(m: dict[str, Path], *extra: str) -> list[str]:
    return ["audit", "--policy", str(VECTORS / "policy.toml"), "--attestations", str(m["att"]),
            "--admindir", str(m["admin"]), "--apt-cache", str(m["cache"]),
            "--apt-lists", str(m["lists"]), "--decision-log", str(m["log"]), *extra]


def test_audit_lists_what_lacks_a_quorum(machine: dict[str, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_audit(machine)) == 1
    out = capsys.readouterr().out
    assert "audited 3 installed packages" in out
    assert "1 reach the quorum, 1 do not, 1 not checked" in out
    assert "LACKS QUORUM libfoo1 2.0-1+b1 amd64 (digest from index of deb.example.org)" in out
    assert "not checked: 1 digest unknown" in out
    assert "hello" not in out.split("LACKS QUORUM", 1)[1]  # the reproduced one is fine


def test_audit_json_and_breakglass_until_quorum(machine: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for sha, name in ((LIBFOO_SHA, "libfoo1"), (sha256_file(DEB), "hello")):
        append_record(machine["log"], {
            "time": "2026-12-01T10:00:00Z", "user": "alice", "uid": 0, "mode": "enforce",
            "outcome": "breakglass", "breakglass_reason": "urgent", "policy": "p",
            "packages": [{"name": name, "sha256": sha, "accepted": False, "checked": True}],
        })
    assert main(_audit(machine, "--json")) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["lacking"] == [{"name": "libfoo1", "version": "2.0-1+b1",
                                  "architecture": "amd64"}]
    # hello's breakglass install has since reached a quorum: no longer listed.
    assert [b["package"]["name"] for b in report["breakglass"]] == ["libfoo1"]
    assert report["breakglass"][0]["reason"] == "urgent"
    assert report["unchecked"][0]["kind"] == "digest unknown"
    by_name = {a["package"]["name"]: a for a in report["audited"]}
    assert by_name["hello"]["accepted"] is True
    assert by_name["hello"]["digest_from"].startswith("APT cache ")


def test_audit_passes_when_everything_checked_reaches_the_quorum(
    machine: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (machine["admin"] / "status").write_text(STATUS.split("\n\n")[0] + "\n")
    assert main(_audit(machine)) == 0
    assert "audited 1 installed packages" in capsys.readouterr().out


def test_cached_file_that_is_another_package_is_not_trusted(
    machine: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # hello's .deb placed under another installed package's cache name.
    (machine["admin"] / "status").write_text(
        "Package: impostor\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0-1\n")
    shutil.copy(DEB, machine["cache"] / "impostor_1.0-1_amd64.deb")
    assert main(_audit(machine, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    [u] = report["unchecked"]
    assert u["kind"] == "unusable" and "not the installed package" in u["why"]


def test_audit_timer_units_are_valid_systemd(tmp_path: Path) -> None:
    """The shipped units pass `systemd-analyze verify` (with the command pointed at this venv)."""
    import subprocess
    import sys

    units = Path(__file__).parents[3] / "verifier" / "systemd"
    service = (units / "repro-quorum-audit.service").read_text()
    assert "ExecStart=/opt/repro-quorum/bin/verifier audit --policy" in service
    verifier_bin = Path(sys.executable).parent / "verifier"
    (tmp_path / "repro-quorum-audit.service").write_text(
        service.replace("/opt/repro-quorum/bin/verifier", str(verifier_bin)))
    shutil.copy(units / "repro-quorum-audit.timer", tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "repro-quorum-audit.service"),
                        str(tmp_path / "repro-quorum-audit.timer")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "OnCalendar=daily" in (units / "repro-quorum-audit.timer").read_text()
