"""Comparing rebuilt files with the published ones, and diffoscope reports for mismatches.

``compare_outputs`` is the pure verdict (ARCHITECTURE §5 step 4): for each file of this build,
``reproduced`` when the rebuilt sha256 equals the repository's (and the buildinfo's, when the
buildinfo lists it), ``mismatch`` otherwise, ``missing-upstream`` when this build produced a file
the repository does not publish, ``missing-rebuild`` when the repository publishes a file this
build did not produce. ``run_diffoscope`` writes size- and time-capped HTML and text reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from verifier.statement import Digest

__all__ = ["DiffoscopeResult", "Verdict", "compare_outputs", "diffoscope_version", "run_diffoscope"]


@dataclass(frozen=True)
class Verdict:
    name: str
    verdict: str  # reproduced | mismatch | missing-upstream | missing-rebuild
    rebuilt: Digest | None
    buildinfo: Digest | None
    repository: Digest | None


def compare_outputs(
    rebuilt: Mapping[str, Digest],
    buildinfo: Mapping[str, Digest],
    published: Mapping[str, Digest],
) -> list[Verdict]:
    """One verdict per file in ``rebuilt`` or ``published``, sorted by name.

    Files only the buildinfo lists (neither rebuilt nor published) are not judged: the
    repository is what installers get. A ``-dbgsym`` package built but not published is not
    judged either: Debian publishes those in a separate archive, if at all.
    """
    verdicts: list[Verdict] = []
    for name in sorted(set(rebuilt) | set(published)):
        r, b, p = rebuilt.get(name), buildinfo.get(name), published.get(name)
        if r is None:
            verdict = "missing-rebuild"
        elif p is None:
            if _is_dbgsym(name):
                continue
            verdict = "missing-upstream"
        elif r == p and (b is None or b == r):
            verdict = "reproduced"
        else:
            verdict = "mismatch"
        verdicts.append(Verdict(name, verdict, r, b, p))
    return verdicts


def _is_dbgsym(name: str) -> bool:
    return name.split("_", 1)[0].endswith("-dbgsym")


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

    diffoscope's own ``--max-report-size`` keeps each report under the cap; a report still
    larger (or a timeout) is deleted and reported as an error.
    """
    tmp = html.parent / "diffoscope-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [
        "diffoscope",
        "--html",
        str(html),
        "--text",
        str(text),
        "--max-report-size",
        str(max_report_bytes),
        "--max-text-report-size",
        str(max_report_bytes),
        "--no-progress",
        "--exclude-directory-metadata",
        "no",
        str(published),
        str(rebuilt),
    ]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "TMPDIR": str(tmp),
        "LC_ALL": "C.UTF-8",
        "HOME": str(tmp),
    }
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=env,
    )
    assert proc.stderr is not None
    err_task = asyncio.create_task(proc.stderr.read(16384))
    error: str | None = None
    try:
        async with asyncio.timeout(time_limit):
            rc = await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        rc = -1
        error = f"diffoscope did not finish within {time_limit:.0f}s"
    stderr = (await err_task).decode("utf-8", "replace")
    if error is None and rc not in (0, 1):
        error = f"diffoscope exited with status {rc}: {stderr.strip()[-500:]}"
    kept: dict[str, Path | None] = {}
    for label, path in (("html", html), ("text", text)):
        if path.exists() and path.stat().st_size > max_report_bytes * 2:
            path.unlink()
            error = error or f"diffoscope {label} report exceeded {max_report_bytes} bytes"
        kept[label] = path if path.exists() else None
    with contextlib.suppress(OSError):
        for p in tmp.iterdir():
            if p.is_file():
                p.unlink()
        tmp.rmdir()
    return DiffoscopeResult(kept["html"], kept["text"], differences=rc == 1, error=error)
