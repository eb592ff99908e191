"""Comparing rebuilt files with the published ones, and diffoscope reports for mismatches.

``compare_outputs`` is the pure verdict (ARCHITECTURE §5 step 4): one verdict per file the
repository *publishes* (verifier/verdicts.py: ``reproduced``, ``unreproducible``, ``tampered``,
``missing-rebuild``), and the rebuilt files it does not publish apart, as byproducts that are
never judged nor signed as subjects. ``run_diffoscope`` writes size- and time-capped HTML and
text reports.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rebuilder import sandbox
from verifier.statement import Digest
from verifier.verdicts import OutputVerdictKind, classify

__all__ = [
    "Comparison",
    "DiffoscopeResult",
    "Verdict",
    "compare_outputs",
    "diffoscope_version",
    "run_diffoscope",
]


@dataclass(frozen=True)
class Verdict:
    name: str
    verdict: OutputVerdictKind
    rebuilt: Digest | None
    buildinfo: Digest | None
    repository: Digest


@dataclass(frozen=True)
class Comparison:
    verdicts: tuple[Verdict, ...]  # one per published file, sorted by name
    unpublished: tuple[tuple[str, Digest], ...]  # rebuilt, not published: byproducts


def compare_outputs(
    rebuilt: Mapping[str, Digest],
    buildinfo: Mapping[str, Digest],
    published: Mapping[str, Digest],
) -> Comparison:
    """One verdict per file in ``published``; the rest of ``rebuilt`` as byproducts.

    Only what the repository publishes is judged: that is what installers get. A rebuilt file
    with no published counterpart (a ``-dbgsym`` Debian keeps in another archive, the ``all``
    packages of an ``amd64 all`` build that another job covers, a file of a wrong version) is
    a byproduct and never a subject, so no signature of this node can contradict what another
    job of it says about a published file. A published file the rebuild did not produce is
    ``missing-rebuild``. Files only the buildinfo lists are not judged.
    """
    verdicts = tuple(
        Verdict(name, classify(rebuilt.get(name), buildinfo.get(name), p), rebuilt.get(name),
                buildinfo.get(name), p)
        for name, p in sorted(published.items())
    )
    unpublished = tuple((n, d) for n, d in sorted(rebuilt.items()) if n not in published)
    return Comparison(verdicts, unpublished)


@dataclass(frozen=True)
class DiffoscopeResult:
    html: Path | None
    text: Path | None
    differences: bool
    error: str | None = None  # set when diffoscope failed, timed out or a report was too large


_diffoscope_version: str | None = None


async def diffoscope_version() -> str:
    global _diffoscope_version
    if _diffoscope_version is None:
        try:
            proc = await asyncio.create_subprocess_exec(
                "diffoscope",
                "--version",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            _diffoscope_version = out.decode().strip().removeprefix("diffoscope ").strip()
        except (OSError, TimeoutError):
            _diffoscope_version = "unavailable"
    return _diffoscope_version


async def run_diffoscope(
    published: Path,
    rebuilt: Path,
    html: Path,
    text: Path,
    time_limit: float,
    max_report_bytes: int,
) -> DiffoscopeResult:
    """``diffoscope --html H --text T published rebuilt``; exit 1 means differences were found.

    Both inputs are hostile (one came from the repository, one from the build sandbox), so
    diffoscope runs in the same sandbox as a build: no network, inputs read-only, one scratch
    directory writable. Its reports are then copied out as regular files only, each at most
    ``max_report_bytes`` (diffoscope's own ``--max-report-size`` aims below that); an oversized
    report, a timeout or a crash is returned as ``error``.
    """
    scratch = html.parent / f".diffoscope-{html.stem}"
    await asyncio.to_thread(_fresh_dir, scratch)
    name = published.name
    cfg = sandbox.SandboxConfig(
        binds=(
            sandbox.Bind(published, f"/in/published/{name}"),
            sandbox.Bind(rebuilt, f"/in/rebuilt/{name}"),
            sandbox.Bind(scratch, "/out", writable=True),
        ),
        chdir="/out",
        env={"LC_ALL": "C.UTF-8"},
    )
    cmd = [
        "diffoscope",
        "--html", "/out/report.html",
        "--text", "/out/report.txt",
        "--max-report-size", str(max_report_bytes),
        "--max-text-report-size", str(max_report_bytes),
        "--no-progress",
        f"/in/published/{name}",
        f"/in/rebuilt/{name}",
    ]  # fmt: skip
    limits = sandbox.Limits(
        timeout=time_limit, max_log_bytes=16384, max_disk_bytes=8 * max_report_bytes + 2**26
    )
    output = io.BytesIO()
    result = await sandbox.run_sandboxed(cmd, cfg, output, limits, watch_dir=scratch)
    error: str | None = None
    if result.limit == "timeout":
        error = f"diffoscope did not finish within {time_limit:.0f}s"
    elif result.limit == "disk":
        error = "diffoscope wrote more than its disk limit"
    elif result.returncode not in (0, 1):
        tail = output.getvalue().decode("utf-8", "replace").strip()[-500:]
        error = f"diffoscope exited with status {result.returncode}: {tail}"
    kept: dict[str, Path | None] = {}
    for label, src, dest in (("html", "report.html", html), ("text", "report.txt", text)):
        problem = await asyncio.to_thread(_copy_report, scratch / src, dest, max_report_bytes)
        # with no difference (exit 0) diffoscope writes no report at all
        if problem and result.returncode == 1:
            error = error or f"diffoscope {label} report: {problem}"
        kept[label] = dest if dest.exists() else None
    await asyncio.to_thread(shutil.rmtree, scratch, True)
    return DiffoscopeResult(
        kept["html"], kept["text"], differences=result.returncode == 1, error=error
    )


def _fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    if os.geteuid() == 0:
        os.chown(path, sandbox.NOBODY, sandbox.NOBODY)


def _copy_report(src: Path, dest: Path, cap: int) -> str | None:
    """Copy a file the sandbox wrote, refusing links, special files and oversized ones."""
    dest.unlink(missing_ok=True)
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return "not written"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        data = f.read(cap + 1)
    if len(data) > cap:
        return f"larger than {cap} bytes"
    dest.write_bytes(data)
    return None
