"""docs/verifier.md's installation, run as written on a fresh Debian machine: every ``sh`` block
of "Install on a Debian machine" and "Try it against the demo", in order, as root inside a
bookworm system freshly made by ``mmdebstrap``, against the demo's signed repository.

The fresh system (minbase, plus the .debs the guide's ``apt-get install`` needs, downloaded but
not installed, and APT's lists) is made once and cached as a tarball under ``$RQ_CHROOT_CACHE``
(default ``~/.cache/repro-quorum/chroots``), keyed by that package list; every run unpacks a new
copy and throws it away. The blocks run in it through ``chroot`` in a private mount namespace
(``unshare --mount``: its /dev and /proc vanish with it). The network is the host's, so the
repository and the rebuilders the test serves on loopback are reachable, as they are for the
demo's own servers. Three things are set for the test, the same way in every block: APT
answers yes (``APT::Get::Assume-Yes``, the test has no terminal); ``/path/to/...whl`` becomes
the wheel built from this checkout; ``/path/to/demo-state`` and the demo's port become the
test's. The demo's side is what ``make demo`` serves: ``rqdemo.testrepo``'s repository (its
InRelease signed by its generated key) and a policy written by ``rqdemo.demo.write_policy``
for three real node APIs holding signed reproductions of the reproducible packages only.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rqdemo.demo import NODES, Node, write_policy
from rqdemo.testrepo import build_test_repository, serve_repository
from tests.integration._nodes import real_nodes
from tests.integration.test_operator_guide import Block, guide_blocks

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "verifier.md"
SECTIONS = ("### Install on a Debian machine", "### Try it against the demo")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"  # the mirror of /etc/apt/sources.list.d/debian.sources
WHEEL = "repro_quorum-0.1.0-py3-none-any.whl"
DEMO_PORT_URL = "http://127.0.0.1:8080/"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

needs_root_and_mmdebstrap = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mmdebstrap") or not shutil.which("unshare"),
    reason="needs root, mmdebstrap and unshare (the CI machine has all three)",
)


def section_blocks() -> list[Block]:
    """The sh blocks of the two sections, in order."""
    text = GUIDE.read_text()
    out = []
    for heading in SECTIONS:
        start = text.index(f"\n{heading}\n")
        end = min((i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1))
                   if i != -1), default=len(text))
        out += guide_blocks(text[start:end])
    return out


def guide_packages(blocks: list[Block]) -> list[str]:
    """What the guide's ``apt-get install`` lines install (the fresh system caches them)."""
    packages = []
    for b in blocks:
        for m in re.finditer(r"apt-get install ((?:[^\n\\]|\\\n)+)", b.script):
            words = m.group(1).replace("\\\n", " ").split()
            packages += [w for w in words if not w.startswith("-") and w != "rq-hello-c"]
    return packages


def test_the_sections_have_blocks_that_run() -> None:
    blocks = section_blocks()
    assert len(blocks) == 3
    assert all(b.skip is None for b in blocks)
    assert "python3-aiohttp" in guide_packages(blocks)
    assert any("/usr/local/bin/verifier apt-hook" in b.script for b in blocks)


def _cache() -> Path:
    base = os.environ.get("RQ_CHROOT_CACHE") or str(
        Path.home() / ".cache" / "repro-quorum" / "chroots")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def fresh_system_tarball(packages: list[str]) -> Path:
    """A fresh minbase bookworm with ``packages`` in APT's cache, not installed; cached."""
    key = hashlib.sha256(json.dumps([SUITE, MIRROR, sorted(packages)]).encode()).hexdigest()
    cache = _cache()
    final = cache / f"installer-{SUITE}-{key[:16]}.tar"
    with open(cache / ".installer.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.exists():
            tmp = final.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            hook = ('chroot "$1" apt-get install --download-only -y --no-install-recommends '
                    + " ".join(packages))
            subprocess.run(
                ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
                 "--skip=cleanup/apt/lists", "--skip=cleanup/apt/cache",
                 f"--customize-hook={hook}", SUITE, str(tmp), MIRROR],
                check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=1800,
            )  # fmt: skip
            tmp.rename(final)
    return final


def _mounted_below(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(prefix)]


@pytest.fixture
def fresh_root() -> Iterator[Path]:
    tarball = fresh_system_tarball(guide_packages(section_blocks()))
    top = Path(tempfile.mkdtemp(prefix="rq-installer-"))
    root = top / "root"
    root.mkdir()
    try:
        subprocess.run(["tar", "-C", str(root), "-xpf", str(tarball)], check=True,
                       capture_output=True, timeout=600)
        (root / "etc/apt/apt.conf.d/90rq-test-assume-yes").write_text(
            'APT::Get::Assume-Yes "true";\n')
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        yield root
    finally:
        left = _mounted_below(top)
        if left:  # never delete through a mount into the host's /dev or /proc
            raise RuntimeError(f"still mounted below {top}: {left}; not removing it")
        shutil.rmtree(top, ignore_errors=True)


def in_chroot(root: Path, script: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """``script`` as root in ``root`` with bash -euo pipefail, /dev and /proc mounted in a
    private mount namespace that ends with it."""
    setup = ('set -e; mount --rbind /dev "$R/dev"; mount -t proc proc "$R/proc"; '
             'exec chroot "$R" /usr/bin/env -i PATH="$P" HOME=/root LANG=C.UTF-8 '
             'DEBIAN_FRONTEND=noninteractive bash -euo pipefail -c "$S"')
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", setup],
        env={"R": str(root), "S": script, "P": PATH, "PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )


def localize(script: str, repo_url: str) -> str:
    script = script.replace(f"/path/to/{WHEEL}", f"/root/dist/{WHEEL}")
    script = script.replace("/path/to/demo-state", "/root/demo-state")
    return script.replace(DEMO_PORT_URL, repo_url.rstrip("/") + "/")


def build_wheel(dest: Path) -> Path:
    """The wheel the guide installs, made from this checkout as the guide says."""
    src = dest / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "test-artifacts", "__pycache__", "*.egg-info", "build", "demo-state",
        ".mypy_cache", ".ruff_cache", ".pytest_cache", "bench-results"))
    subprocess.run([sys.executable, "-m",
                    "pip", "wheel", "-q", "--no-deps", "-w", str(dest / "dist"), str(src)],
                   check=True, capture_output=True, timeout=600)
    return dest / "dist" / WHEEL


def dpkg_status(root: Path, package: str) -> str:
    r = in_chroot(root, f"dpkg-query -W -f='${{Status}}' {package} || true", timeout=120)
    return r.stdout


@needs_root_and_mmdebstrap
@pytest.mark.timeout(3000)
async def test_installer_guide_runs_as_written_on_a_fresh_debian(
    fresh_root: Path, tmp_path: Path
) -> None:
    root = fresh_root
    wheel = await asyncio.to_thread(build_wheel, tmp_path / "wheel")
    (root / "root/dist").mkdir(parents=True)
    shutil.copy(wheel, root / "root/dist" / WHEEL)

    state = tmp_path / "demo-state"
    repo = await asyncio.to_thread(build_test_repository, state / "repo")
    good = [repo.path / d.path for p in repo.of_kind("reproducible") for d in p.debs]
    tampered = repo.of_kind("tampered")[0]
    async with serve_repository(repo.path) as repo_url, \
            real_nodes(state / "nodes", good, len(NODES), names=NODES) as (nodes, seen):
        policy = write_policy(state, [
            Node(rid, operator, int(url.rsplit(":", 1)[1]), state / "nodes" / rid)
            for (rid, url, _), (_, operator) in zip(nodes, NODES, strict=True)])
        (root / "root/demo-state/repo").mkdir(parents=True)
        shutil.copy(policy, root / "root/demo-state/policy.toml")
        shutil.copy(repo.keyring, root / "root/demo-state/repo/repository-keyring.gpg")

        outputs = []
        for block in section_blocks():
            script = localize(block.script, repo_url)
            r = await asyncio.to_thread(in_chroot, root, script)
            assert r.returncode == 0, (
                f"docs/verifier.md block {block.line} failed ({r.returncode}):\n{script}\n"
                f"--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}")
            outputs.append(r.stdout + r.stderr)

        # The hook's path exists, and APT runs it.
        assert "verifier installed at /usr/local/bin/verifier" in outputs[0]
        link = root / "usr/local/bin/verifier"
        assert link.is_symlink()
        target = root / os.readlink(link).lstrip("/")
        assert target.is_file() and os.access(target, os.X_OK)
        # Nothing from PyPI: the verifier runs on Debian's own aiohttp and cryptography.
        libs = await asyncio.to_thread(
            in_chroot, root, "/opt/repro-quorum/verifier/bin/python -c 'import aiohttp, "
            "cryptography, debian; print(aiohttp.__file__, cryptography.__file__, "
            "debian.__file__, aiohttp.__version__)'")
        paths = libs.stdout.split()
        assert len(paths) == 4 and all(
            p.startswith("/usr/lib/python3/dist-packages/") for p in paths[:3]), libs
        dump = await asyncio.to_thread(in_chroot, root, "apt-config dump DPkg::Pre-Install-Pkgs")
        assert ('"/usr/local/bin/verifier apt-hook --policy /etc/repro-quorum/policy.toml"'
                in dump.stdout), dump.stdout + dump.stderr

        # The reproduced package was accepted by the hook and installed, through the signed
        # repository (an unsigned or wrongly signed one would have failed `apt-get update`).
        install = outputs[2]
        assert "verifier: ACCEPTED rq-hello-c_1.0_" in install, install[-3000:]
        assert "install ok installed" in dpkg_status(root, "rq-hello-c")
        assert all("POST /v1/attestations:batch" in s for s in seen)

        # The tampered one is refused by the hook: nothing unpacked.
        r = await asyncio.to_thread(in_chroot, root, f"apt-get install {tampered.source}")
        assert r.returncode == 100, r.stdout[-3000:] + r.stderr[-3000:]
        assert "verifier: refusing to install: 1 of 1 packages lack a rebuilder quorum" in (
            r.stderr + r.stdout)
        assert "install ok installed" not in dpkg_status(root, tampered.source)

    log = (root / "var/log/repro-quorum/decisions.jsonl").read_text().splitlines()
    verdicts = [json.loads(line)["outcome"] for line in log]
    assert verdicts == ["accepted", "refused"], log
    print(f"bookworm's aiohttp {paths[3]}; block outputs:", *outputs, r.stdout, r.stderr,
          sep="\n")  # shown with -s
