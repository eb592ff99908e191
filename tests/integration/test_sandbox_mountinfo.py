"""The sandbox's mount table names nothing of the host's layout (issue 13).

A bind mount's line in ``/proc/self/mountinfo`` names its source directory relative to the
root of the filesystem it is on, so binding the node's inputs or build tree from under its
state directory showed that directory to the build, and a hidden path covered inside ``/etc``
showed where it was. These run the real sandbox with the exact configuration of the unpack
step (``rebuilder.debian.build.unpack_config``, the inputs from ``_unpack_inputs``) and of a build
whose node keeps its state inside ``/etc``, and read the mount table and ``/proc/1/cmdline``
from inside.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rebuilder import sandbox
from rebuilder.debian import build

pytestmark = pytest.mark.slow

SHOW = (
    "cat /proc/self/mountinfo; echo rq-cmdline; tr '\\0' ' ' < /proc/1/cmdline; echo; "
    "echo rq-ls; ls -a /run/rebuild-inputs /etc 2>&1; cat /etc/hostname"
)


async def _inside(cfg: sandbox.SandboxConfig, tmp_path: Path) -> str:
    log_path = tmp_path / "sandbox.log"
    with log_path.open("wb") as log:
        result = await sandbox.run_sandboxed(["sh", "-c", SHOW], cfg, log,
                                             sandbox.Limits(timeout=60))
    text = log_path.read_text()
    assert result.returncode == 0, text
    return text


def _needs_mounts() -> None:
    ok, why = build.sandbox._buildfs.can_mount()
    if not ok:
        pytest.skip(f"bounded filesystems need a root node: {why}")


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    w = tmp_path / "state" / "builds" / "rq-job"
    w.mkdir(parents=True)
    yield w
    for name in ("unpack-inputs", "tree"):
        build._remove_tree(w / name)


async def test_unpack_step_mounts_show_no_host_path(work: Path, tmp_path: Path) -> None:
    _needs_mounts()
    inputs = work / "inputs"
    inputs.mkdir()
    (inputs / "rq-hello_1.0.dsc").write_text("Format: 3.0 (native)\n")
    tree = work / "tree"
    assert sandbox.make_build_tree(tree, 64 * 1024 * 1024) is not None
    view = build._unpack_inputs(work, inputs)
    assert view != inputs
    cfg = build.unpack_config(view, tree, "/build", {}, Path("/"), sandbox.HOST_SYSTEM_PATHS,
                              (tmp_path / "state",))
    text = await _inside(cfg, tmp_path)
    mounts, rest = text.split("rq-cmdline", 1)
    assert "rq-hello_1.0.dsc" in rest  # the inputs are there, read from their own filesystem
    assert " /run/rebuild-inputs " in mounts and " /build " in mounts
    for host in (str(tmp_path), str(work), tempfile.gettempdir() + "/"):
        assert host not in text, f"{host} shows inside the sandbox:\n{text}"
    build._remove_tree(view)
    assert not view.exists()


async def test_unpack_step_without_mounts_binds_the_inputs_themselves(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: where the node cannot mount, the inputs are bound as they are, and their host
    path is what a bind mount shows (the limit docs/configuration.md states)."""
    inputs = work / "inputs"
    inputs.mkdir()
    monkeypatch.setattr(build.sandbox._buildfs, "can_mount", lambda: (False, "test"))
    assert build._unpack_inputs(work, inputs) == inputs
    assert not (work / "unpack-inputs").exists()


@pytest.fixture
def state_in_etc() -> Iterator[Path]:
    state = Path(tempfile.mkdtemp(prefix="rq-mounts-state-", dir="/etc"))
    (state / "signing.pem").write_text("secret\n")
    yield state
    shutil.rmtree(state)


async def test_a_hidden_path_in_etc_is_absent_not_covered(
    state_in_etc: Path, tmp_path: Path
) -> None:
    cfg = sandbox.SandboxConfig(hidden=(state_in_etc,))
    text = await _inside(cfg, tmp_path)
    assert state_in_etc.name not in text, text  # neither mounted over nor listed in /etc
    listed = text.split("rq-ls", 1)[1]
    assert "passwd" in listed and "hostname" in listed  # the rest of /etc is there
    assert os.uname().nodename not in text.split("rq-ls", 1)[0]


async def test_without_hiding_the_state_dir_in_etc_is_visible(
    state_in_etc: Path, tmp_path: Path
) -> None:
    """Control for the test above."""
    text = await _inside(sandbox.SandboxConfig(), tmp_path)
    assert state_in_etc.name in text.split("rq-ls", 1)[1]
