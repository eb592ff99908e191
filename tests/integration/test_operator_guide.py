"""docs/operator-guide.md, run as written: every ``sh`` block of the guide, in order, on this
machine, so the guide cannot drift from the code.

The blocks run with bash as root, as the guide says. Three things are changed, the same way in
every block: the absolute paths of the layout (/opt/repro-quorum, /var/lib/repro-quorum,
/etc/repro-quorum) are moved under a temporary directory, the service user gets a unique test
name (removed afterwards), and ``apt-get install`` becomes ``dpkg-query`` (the packages are
installed already; the test must not touch the system's packages). A block the test cannot run
is preceded by ``<!-- not run by tests/integration/test_operator_guide.py: <why> -->``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rebuilder.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operator-guide.md"
SKIP = re.compile(r"<!-- not run by tests/integration/test_operator_guide\.py: (.+?) -->")
LAYOUT = ("/opt/repro-quorum", "/var/lib/repro-quorum", "/etc/repro-quorum")


@dataclass
class Block:
    line: int
    script: str
    skip: str | None


def guide_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            m = SKIP.search(before)
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            blocks.append(Block(i + 1, "\n".join(lines[i + 1 : j]) + "\n",
                                m.group(1) if m else None))
            i = j
        i += 1
    return blocks


def commands(script: str) -> list[str]:
    """The script's commands, continuation lines joined."""
    return [c.strip() for c in script.replace("\\\n", " ").splitlines() if c.strip()]


def test_every_rebuilder_command_in_the_guide_parses() -> None:
    """Fast drift check: each ``rebuilder <command>`` the guide shows is accepted by the CLI."""
    parser = build_parser()
    seen = set()
    for block in guide_blocks(GUIDE.read_text()):
        for command in commands(block.script):
            argv = shlex.split(command.split("&&")[0], comments=True)
            exe = next((i for i, a in enumerate(argv) if a.endswith("bin/rebuilder")
                        or a == "rebuilder"), None)
            if exe is None or "..." in command:
                continue
            args = [a for a in argv[exe + 1 :] if a not in ("[--json]",)]
            parser.parse_args(args)
            seen.add(args[0])
    assert {"init", "status"} <= seen


def test_every_sh_block_is_run_or_says_why_not() -> None:
    blocks = guide_blocks(GUIDE.read_text())
    assert len([b for b in blocks if b.skip is None]) >= 4
    for b in blocks:
        if b.skip is None:
            assert "..." not in b.script, f"line {b.line}: a block that runs has no placeholder"


@pytest.fixture
def sandbox_root() -> Iterator[tuple[Path, str]]:
    # Not pytest's tmp_path: its parents are private to root, and the service user must
    # traverse this directory.
    top = Path(tempfile.mkdtemp(prefix="rq-guide-"))
    top.chmod(0o755)
    user = f"rqtest-guide{os.getpid() % 100000}"
    try:
        yield top, user
    finally:
        subprocess.run(["userdel", user], capture_output=True, check=False)
        subprocess.run(["groupdel", user], capture_output=True, check=False)
        shutil.rmtree(top, ignore_errors=True)


def localize(script: str, root: Path, user: str, checkout: Path) -> str:
    for path in LAYOUT:
        script = script.replace(path, f"{root}{path}")
    script = script.replace("rq-rebuilder", user)
    script = script.replace("/path/to/repro-quorum", str(checkout))
    return script.replace("apt-get install --no-install-recommends", "dpkg-query -W")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.geteuid() != 0, reason="the guide runs as root (useradd, runuser)")
def test_operator_guide_runs_as_written(sandbox_root: tuple[Path, str]) -> None:
    root, user = sandbox_root
    checkout = root / "checkout"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(
        ".venv", ".git", "test-artifacts", "__pycache__", "*.egg-info", "build", "demo-state",
        ".mypy_cache", ".ruff_cache", ".pytest_cache"))
    ran = []
    for block in guide_blocks(GUIDE.read_text()):
        if block.skip:
            continue
        script = localize(block.script, root, user, checkout)
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=root,
                           capture_output=True, text=True, timeout=800, check=False,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, (
            f"docs/operator-guide.md line {block.line} failed ({r.returncode}):\n{script}\n"
            f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
        )
        ran.append((block, r.stdout))
    out = "".join(o for _, o in ran)
    assert "the sandbox works" in out
    assert "initialised rebuilder node 'rb-alpha'" in out
    assert "node rb-alpha: 0 queued" in out  # `status` loads the moved configuration

    state = root / "var/lib/repro-quorum/rebuilder"
    key = state / "keys" / "signing.pem"
    info = key.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == int(subprocess.check_output(["id", "-u", user]))
    config = root / "etc/repro-quorum/rebuilder/config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640 and config.stat().st_uid == 0
    assert not (state / "config.toml").exists()
    assert f'state_dir = "{state}"' in config.read_text()
