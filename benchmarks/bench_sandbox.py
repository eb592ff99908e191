"""Sandbox start cost: the full build sandbox running `true` vs a plain fork/exec of `true`.

Three figures, each the median wall time over N runs: ``true`` started directly (baseline),
a minimal bwrap (read-only /usr, new namespaces), and the exact sandbox a build gets
(``rebuilder.sandbox.bwrap_argv``: allowlisted binds, private /proc /dev /tmp, prlimit, the drop
to nobody). The ratios say what isolation adds per command; a build runs two sandboxed commands.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from rebuilder.sandbox import Bind, Limits, SandboxConfig, bwrap_argv, bwrap_version


def _median_ms(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(quick: bool = False) -> dict[str, object]:
    runs = 10 if quick else 60
    true = "/usr/bin/true"
    with tempfile.TemporaryDirectory() as d:
        build = Path(d)
        build.chmod(0o755)
        minimal = [
            "bwrap", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/lib", "/lib", "--unshare-all", "--die-with-parent", true,
        ]  # fmt: skip
        full = bwrap_argv(
            [true],
            SandboxConfig(binds=(Bind(build, "/build", writable=True),), chdir="/build"),
            Limits(max_disk_bytes=1 << 30),
        )
        # warm the page cache so the first run does not count disk reads
        for argv in ([true], minimal, full):
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        plain_ms = _median_ms([true], runs)
        minimal_ms = _median_ms(minimal, runs)
        full_ms = _median_ms(full, runs)
    return {
        "runs": runs,
        "bwrap": bwrap_version(),
        "plain_exec_ms": round(plain_ms, 3),
        "bwrap_minimal_ms": round(minimal_ms, 3),
        "build_sandbox_ms": round(full_ms, 3),
        "bwrap_minimal_vs_plain": round(minimal_ms / plain_ms, 1),
        "build_sandbox_vs_plain": round(full_ms / plain_ms, 1),
    }


if __name__ == "__main__":
    print(main(quick=True))
