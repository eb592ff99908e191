"""Every OS error of a ``rebuilder`` command is one line naming the path, and exit code 3."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rebuilder.cli import main

INIT = ["--id", "rb-x", "--operator", "x", "--public-url", "http://127.0.0.1:1"]


def test_init_under_a_file_is_one_line_and_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("not a directory")
    rc = main(["init", "--dir", str(tmp_path / "file" / "node"), *INIT])
    err = capsys.readouterr().err
    assert rc == 3
    assert err.startswith("rebuilder init: cannot use ") and str(tmp_path / "file") in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_status_of_an_unreadable_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["status", "--config", str(tmp_path)])  # a directory, not a file
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to run the command as another user")
def test_init_as_a_user_who_cannot_create_the_directory() -> None:
    """The operator guide's old order: a system user whose home was never created, and
    ``rebuilder init`` run as that user before systemd's StateDirectory= would create it."""
    # Not pytest's tmp_path: its parents are private to root, and nobody must reach this one.
    with tempfile.TemporaryDirectory() as top:
        Path(top).chmod(0o755)
        parent = Path(top) / "var-lib"
        parent.mkdir(mode=0o755)  # owned by root, like /var/lib/repro-quorum
        _init_as_nobody(parent)


def _init_as_nobody(parent: Path) -> None:
    r = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-m", "rebuilder.cli", "init", "--dir", str(parent / "rebuilder"),
         *INIT],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"rebuilder init: cannot use {parent / 'rebuilder'}: "
                               "Permission denied (running as nobody:")
    assert "install -d -o <user>" in r.stderr
