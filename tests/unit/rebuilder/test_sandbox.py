"""The bwrap command line (pure) and a few real sandbox runs of small commands."""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from rebuilder.debian.build import BuildSettings
from rebuilder.sandbox import Bind, Limits, SandboxConfig, bwrap_argv, check_hidden, run_sandboxed
from verifier.errors import ConfigError


def argv_for(cfg: SandboxConfig, limits: Limits | None = None) -> list[str]:
    return bwrap_argv(["true"], cfg, limits or Limits())


def pairs(argv: list[str], option: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == option]


def test_no_root_bind_and_an_allowlist_of_system_directories(tmp_path: Path) -> None:
    argv = argv_for(SandboxConfig(binds=(Bind(tmp_path, "/build", writable=True),)))
    ro = pairs(argv, "--ro-bind")
    assert ("/", "/") not in ro and ("/", "/") not in pairs(argv, "--bind")
    assert {dest for _, dest in ro} <= {
        "/usr",
        "/etc",
        "/var/lib/dpkg",
        "/bin",
        "/sbin",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
    }
    assert pairs(argv, "--bind") == [(str(tmp_path), "/build")]  # the only writable bind


def test_isolation_options(tmp_path: Path) -> None:
    argv = argv_for(SandboxConfig())
    for opt in ("--die-with-parent", "--new-session", "--clearenv", "--proc", "--dev", "--tmpfs"):
        assert opt in argv
    if os.geteuid() == 0:
        assert "--unshare-net" in argv and "--unshare-pid" in argv
        assert argv[argv.index("--cap-drop") + 1] == "ALL"
        i = argv.index("setpriv")
        assert "--reuid=65534" in argv[i:] and "--no-new-privs" in argv[i:]
        assert "--bounding-set=-all" in argv[i:]
        inner = argv[i:]
        assert inner[inner.index("--") + 1 :][:3] == ["bwrap", "--unshare-user", "--disable-userns"]
    else:
        assert "--unshare-all" in argv and "--share-net" not in argv


def test_environment_is_only_what_is_given() -> None:
    argv = argv_for(SandboxConfig(env={"SOURCE_DATE_EPOCH": "1", "LANG": "C"}))
    env = {k: v for k, v in pairs(argv, "--setenv")}
    assert env == {
        "PATH": env["PATH"],
        "HOME": "/nonexistent",
        "TMPDIR": "/tmp",
        "SOURCE_DATE_EPOCH": "1",
        "LANG": "C",
    }


def test_hidden_path_inside_a_bind_is_covered(tmp_path: Path) -> None:
    secret = tmp_path / "state"
    secret.mkdir()
    (secret / "key.pem").write_text("k")
    cfg = SandboxConfig(binds=(Bind(tmp_path, "/build"),), hidden=(secret, secret / "key.pem"))
    argv = argv_for(cfg)
    i = argv.index("--tmpfs", argv.index("/build"))
    assert argv[i + 1] == str(secret)
    assert ("/dev/null", str(secret / "key.pem")) in pairs(argv, "--ro-bind")


def test_limits_reach_the_command_line() -> None:
    argv = argv_for(SandboxConfig(), Limits(max_disk_bytes=1000, max_processes=7, max_tmp_bytes=99))
    assert "--fsize=1000" in argv and "--nproc=7" in argv and "--core=0" in argv
    assert argv[argv.index("--size") + 1] == "99"


@pytest.mark.parametrize(
    ("command", "expect_ok"),
    [
        ("echo hello > /build/out", True),
        ("touch /usr/x", False),
        ("touch /etc/x", False),
        ("ls /root", False),
        ("unshare --user --map-root-user true", False),
        ("test -e /home", False),
        ("test $(id -u) -ne 0 || test $(id -u) = 0 -a ! -w /usr", True),
    ],
)
async def test_real_sandbox_runs(tmp_path: Path, command: str, expect_ok: bool) -> None:
    tmp_path.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(tmp_path, 65534, 65534)
    cfg = SandboxConfig(binds=(Bind(tmp_path, "/build", writable=True),), chdir="/build")
    log = io.BytesIO()
    result = await run_sandboxed(["sh", "-c", command], cfg, log, Limits(timeout=30))
    assert result.ok is expect_ok, log.getvalue()
    if command.startswith("echo"):
        assert (tmp_path / "out").read_text() == "hello\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody first")
def test_unprivileged_sandbox_runs_as_the_invoking_user() -> None:
    """The command line built for a non-root node, run as nobody: isolated, no capabilities."""
    with tempfile.TemporaryDirectory() as d:
        build = Path(d)
        build.chmod(0o777)
        cfg = SandboxConfig(binds=(Bind(build, "/build", writable=True),), chdir="/build")
        script = "touch out; grep CapEff /proc/self/status; unshare -U true || echo nested-refused"
        argv = bwrap_argv(["sh", "-c", script], cfg, Limits(), euid=65534)
        assert "setpriv" not in argv and "--disable-userns" in argv
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "CapEff:\t0000000000000000" in result.stdout
        assert "nested-refused" in result.stdout
        assert (build / "out").exists()


@pytest.mark.parametrize("path", ["/", "/etc", "/usr", "/var", "/var/lib", "/var/lib/dpkg"])
def test_hiding_a_system_directory_is_refused(path: str) -> None:
    with pytest.raises(ConfigError, match="system directory"):
        check_hidden([Path(path)])
    with pytest.raises(ConfigError, match="system directory"):
        BuildSettings(hidden_paths=(Path(path),))


def test_hiding_a_secret_inside_a_system_directory_is_fine() -> None:
    check_hidden([Path("/etc/repro-quorum"), Path("/etc/signing.pem"), Path("/var/lib/rq")])
    with pytest.raises(ConfigError, match="not absolute"):
        check_hidden([Path("state")])


def test_build_settings_make_hidden_paths_absolute() -> None:
    settings = BuildSettings(hidden_paths=(Path("state"),))
    assert settings.hidden_paths == (Path.cwd() / "state",)


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
    reason="needs root (to run the walk as another user) and a system python3",
)
def test_directory_size_counts_what_a_chmod_300_directory_hides() -> None:
    """An unprivileged node owns what its builds wrote; an unreadable directory of its own is
    opened up and counted, not skipped (it used to be: 240 MiB written under a 50 MiB limit)."""
    base = Path(tempfile.mkdtemp(prefix="rq-walk-", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        tree = base / "tree"
        hidden = tree / "hidden"
        hidden.mkdir(parents=True)
        (hidden / "blob").write_bytes(b"\1" * 1_000_000)
        for p in (tree, hidden, hidden / "blob"):
            os.chown(p, 65534, 65534)
        hidden.chmod(0o300)  # write and search, no listing
        repo = Path(__file__).parents[3]
        script = (
            "import sys, pathlib; from rebuilder.sandbox import directory_size; "
            "print(directory_size(pathlib.Path(sys.argv[1])))"
        )
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "/usr/bin/python3", "-c", script, str(tree)],
            capture_output=True, text=True, check=True, cwd="/",
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo)},
        )  # fmt: skip
        assert int(out.stdout) >= 1_000_000, out.stderr
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
