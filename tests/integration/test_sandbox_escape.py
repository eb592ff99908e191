"""Hostile build scripts against the real bubblewrap sandbox (ARCHITECTURE §2.5).

Each package's debian/rules tries one thing a build must not be able to do. The rebuild must
fail at the build stage, the attack must have had no effect outside, and the signing key's
content must never reach the log. A control package with a harmless rule shows that the
failures come from the sandbox, not from a broken package.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from rebuilder import sandbox
from rebuilder.debian.build import BuildSettings, run_rebuild
from rebuilder.outcome import RebuildOutcome
from rqdemo.testrepo import (
    TestRepository,
    add_custom_source,
    build_test_repository,
    serve_repository,
)

pytestmark = pytest.mark.slow

RULES = """#!/usr/bin/make -f

%:
\tdh $@

override_dh_auto_build:
\t{attack}

override_dh_auto_install:
\tinstall -D -m 0755 hello.sh debian/{pkg}/usr/bin/{pkg}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> TestRepository:
    return build_test_repository(tmp_path_factory.mktemp("repo") / "debian")


def _make_state(parent: Path) -> Path:
    """A directory laid out like a node's state dir, with a fake signing key in it.

    The key is world-readable on purpose: only its invisibility may protect it here.
    """
    state = Path(tempfile.mkdtemp(prefix="rq-test-state-", dir=parent))
    (state / "keys").mkdir()
    (state / "builds").mkdir()
    key = state / "keys" / "signing.pem"
    key.write_text(
        f"-----BEGIN PRIVATE KEY-----\nFAKEKEY{secrets.token_hex(16)}\n-----END PRIVATE KEY-----\n"
    )
    key.chmod(0o644)
    state.chmod(0o755)
    return state


@pytest.fixture
def node_state() -> Iterator[Path]:
    """A state dir outside /tmp (private in the sandbox), visible if the sandbox bound `/`."""
    state = _make_state(Path("/var/tmp"))
    yield state
    shutil.rmtree(state)


@pytest.fixture
def state_in_etc() -> Iterator[Path]:
    """State dir inside /etc, which the sandbox does bind: it must be covered (hidden_paths)."""
    state = _make_state(Path("/etc"))
    yield state
    shutil.rmtree(state)


class Listener:
    """A real TCP listener on 127.0.0.1 counting the connections it accepted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def attacks(state: Path, outside: Path, port: int) -> dict[str, str]:
    key = state / "keys" / "signing.pem"
    return {
        "read-signing-key": f"cat {key}",
        "list-state-dir": f"ls {state}/keys",
        "read-key-via-proc-root": f"cat /proc/1/root{key}",
        "network-loopback": f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'",
        "write-system-dir": "touch /usr/bin/rq-owned",
        "write-host-path": f"touch {outside}/marker",
        "write-fetched-inputs": "touch /run/rebuild-inputs/rq-owned",
        "write-etc": "touch /etc/rq-owned",
        "mount-filesystem": "mount -t tmpfs none /tmp",
        "read-shadow": "cat /etc/shadow",
        "create-user-namespace": "unshare --user --map-root-user true",
        "ptrace-init": "cat /proc/1/environ",
    }


ATTACK_NAMES = list(attacks(Path("/s"), Path("/o"), 1))


async def _rebuild(
    repo: TestRepository, state: Path, source: str, rules: str, hide: bool = True
) -> RebuildOutcome:
    pkg = add_custom_source(repo, source, rules)
    settings = BuildSettings(
        timeout=120, diffoscope_enabled=False, hidden_paths=(state,) if hide else ()
    )
    async with serve_repository(repo.path) as base, aiohttp.ClientSession() as session:
        return await run_rebuild(
            pkg.job(base, with_dsc=True), settings, state / "builds" / source, session
        )


@pytest.mark.parametrize("attack", ATTACK_NAMES)
async def test_attack_fails_the_build_and_leaves_no_trace(
    attack: str, repo: TestRepository, node_state: Path, listener: Listener, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    command = attacks(node_state, outside, listener.port)[attack]
    source = f"rq-attack-{attack}"
    outcome = await _rebuild(repo, node_state, source, RULES.format(attack=command, pkg=source))

    assert outcome.failure is not None, f"{attack} was not stopped"
    assert outcome.failure_stage == "build"
    assert "dpkg-buildpackage exited" in outcome.failure
    assert outcome.log_path is not None
    log = outcome.log_path.read_bytes()
    assert command.encode() in log  # the attack really ran inside the sandbox
    key = (node_state / "keys" / "signing.pem").read_bytes()
    assert key.splitlines()[1] not in log
    assert listener.accepted == 0
    assert not (outside / "marker").exists()
    assert not Path("/usr/bin/rq-owned").exists()
    assert not Path("/etc/rq-owned").exists()
    assert not (outcome.log_path.parent / "inputs" / "rq-owned").exists()


@pytest.mark.parametrize("attack", ["read-signing-key", "list-state-dir", "read-key-via-proc-root"])
async def test_state_dir_inside_a_system_bind_is_hidden(
    attack: str, repo: TestRepository, state_in_etc: Path, tmp_path: Path
) -> None:
    command = attacks(state_in_etc, tmp_path, 1)[attack]
    source = f"rq-etc-{attack}"
    outcome = await _rebuild(repo, state_in_etc, source, RULES.format(attack=command, pkg=source))
    assert outcome.failure_stage == "build", outcome.failure
    assert outcome.log_path is not None
    log = outcome.log_path.read_bytes()
    assert command.encode() in log
    assert (state_in_etc / "keys" / "signing.pem").read_bytes().splitlines()[1] not in log


async def test_state_dir_inside_etc_would_be_readable_without_hiding(
    repo: TestRepository, state_in_etc: Path
) -> None:
    """Control for the test above: /etc is bound, so only hidden_paths keeps the key out."""
    command = attacks(state_in_etc, Path("/nonexistent"), 1)["read-signing-key"]
    source = "rq-etc-unhidden"
    outcome = await _rebuild(
        repo, state_in_etc, source, RULES.format(attack=command, pkg=source), hide=False
    )
    assert outcome.failure is None, outcome.failure
    assert outcome.log_path is not None
    key_line = (state_in_etc / "keys" / "signing.pem").read_bytes().splitlines()[1]
    assert key_line in outcome.log_path.read_bytes()


async def test_control_package_builds(repo: TestRepository, node_state: Path) -> None:
    """The same package with a harmless rule builds: the attacks fail because of the sandbox."""
    source = "rq-attack-control"
    outcome = await _rebuild(repo, node_state, source, RULES.format(attack="true", pkg=source))
    assert outcome.failure is None, outcome.failure
    # built, never published: a byproduct, and with nothing published to compare, no verdict
    assert [n for n, _ in outcome.unpublished] == [f"{source}_1.0_all.deb"]
    assert outcome.outputs == ()
    assert outcome.internal_parameters["sandbox"]["network"] == "none"


def test_attack_commands_work_outside_the_sandbox(listener: Listener, tmp_path: Path) -> None:
    """Outside the sandbox the same host resources are reachable (root can read the key)."""
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    (state / "keys" / "signing.pem").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    cmds = attacks(state, outside, listener.port)
    for name in ("read-signing-key", "network-loopback", "write-host-path"):
        assert os.system(cmds[name] + " >/dev/null") == 0, name  # noqa: S605  # fixed test commands
    assert (outside / "marker").exists()


async def test_build_sees_build_path_and_buildinfo_environment_only(
    repo: TestRepository, node_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build runs at the buildinfo's Build-Path with its Environment and nothing of ours."""
    monkeypatch.setenv("RQ_HOST_SECRET", "do-not-leak")
    source = "rq-env-check"
    checks = " && ".join(
        [
            f'test "$$(pwd)" = /build/{source}-1.0',
            'test "$$SOURCE_DATE_EPOCH" = 1717243200',
            'test "$$LC_ALL" = C.UTF-8',
            'test "$$HOME" = /nonexistent',
            'test -z "$$RQ_HOST_SECRET"',
            "test $$(id -u) -ne 0 -o ! -w /usr",
            "test ! -e /home -a ! -e /root -a ! -e /srv",
        ]
    )
    outcome = await _rebuild(repo, node_state, source, RULES.format(attack=checks, pkg=source))
    assert outcome.failure is None, outcome.failure
    assert outcome.internal_parameters["build_path"] == f"/build/{source}-1.0"
    env = outcome.internal_parameters["environment_variables"]
    assert env["SOURCE_DATE_EPOCH"] == "1717243200"
    assert "RQ_HOST_SECRET" not in env


async def test_host_environment_variable_is_not_visible(
    repo: TestRepository, node_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQ_HOST_SECRET", "do-not-leak")
    source = "rq-env-leak"
    rules = RULES.format(attack='test -n "$$RQ_HOST_SECRET"', pkg=source)
    outcome = await _rebuild(repo, node_state, source, rules)
    assert outcome.failure_stage == "build"


async def test_build_sees_no_host_path_in_proc(repo: TestRepository, node_state: Path) -> None:
    """The sandbox's processes and mounts do not show where the node keeps its builds.

    Before, /proc/1/cmdline in the sandbox was bwrap's whole command line: every host path it
    bound (the build tree under the state directory) and every path it covered.
    """
    source = "rq-proc-paths"
    show = (
        "echo rq-cmdline-begin; for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $$f; echo; "
        "done; echo rq-cmdline-end; echo rq-mounts-begin; cat /proc/self/mountinfo; "
        "echo rq-mounts-end"
    )
    outcome = await _rebuild(repo, node_state, source, RULES.format(attack=show, pkg=source))
    assert outcome.failure is None, outcome.failure
    assert outcome.log_path is not None
    log = outcome.log_path.read_bytes()
    cmdlines = log.split(b"rq-cmdline-begin\n", 1)[1].split(b"rq-cmdline-end", 1)[0]
    assert str(node_state).encode() not in cmdlines
    assert b"bwrap --args" in cmdlines  # pid 1 of the sandbox, options passed by memfd
    assert b"--bind" not in cmdlines and b"--tmpfs" not in cmdlines
    mounts = log.split(b"rq-mounts-begin\n", 1)[1].split(b"rq-mounts-end", 1)[0]
    assert b"/run/rebuild-inputs" not in mounts  # the build step does not get the inputs
    if sandbox.enforcement()[2].enforced:  # the tree is a filesystem of its own
        assert str(node_state).encode() not in mounts
