"""What one rebuild produced: the seam between the build pipeline and the daemon.

The pipeline (fetch, environment, sandboxed build, compare) returns a ``RebuildOutcome``; the
daemon signs it (``attest``), stores it and publishes it. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from verifier.statement import Digest, PackageIdentity

__all__ = [
    "BuildJob",
    "Interrupted",
    "OutputResult",
    "RebuildOutcome",
    "Stage",
    "StateDiskFull",
    "Verdict",
]

Verdict = Literal["reproduced", "mismatch", "missing-upstream", "missing-rebuild"]
Stage = Literal["fetch", "environment", "build", "compare", "internal"]


class Interrupted(Exception):  # a state of the attempt, not an error of ours
    """This attempt was stopped from outside the node's control: the sandbox or the command in
    it was killed by a signal the node did not send (the OOM killer, an operator, a dying
    host). Nothing is signed for it; the daemon retries the job as a new attempt and counts one
    interruption (``rebuilder.queue.MAX_INTERRUPTIONS``).

    A stop by one of the node's own limits is not an interruption: the pipeline turns
    ``SandboxResult.limit`` (``"timeout"``, ``"disk"``, and whatever else the sandbox enforces,
    e.g. ``"memory"``, ``"pids"``) into a signed failure naming the limit
    (``RebuildOutcome.limit``).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StateDiskFull(Interrupted):
    """The node's state filesystem is full (ENOSPC, "database or disk is full", or below
    ``node.min_free_mb``): the job goes back to the queue and the workers stop taking jobs
    until space returns. It counts as an interruption only when ``counted`` (the disk filled up
    during this build, which may have been the build's own doing)."""

    def __init__(self, reason: str, *, counted: bool = False) -> None:
        super().__init__(reason)
        self.counted = counted


@dataclass(frozen=True)
class BuildJob:
    """One (source, version, architecture) triple to rebuild, as the watcher found it."""

    source: str
    version: str
    architecture: str
    repository: str  # repository name from the config
    buildinfo_url: str
    # Published binaries of this triple from the Packages index: file name -> (sha256, pool URL).
    published: dict[str, tuple[Digest, str]] = field(default_factory=dict)
    # The source control file, when the watcher read it from the Sources index. Without it the
    # pipeline looks for {source}_{version without epoch}.dsc next to the published binaries
    # (the pool convention) and records the digest it found.
    dsc_url: str | None = None
    dsc_sha256: Digest | None = None

    @property
    def package(self) -> PackageIdentity:
        return PackageIdentity("debian", self.source, self.version, self.architecture)


@dataclass(frozen=True)
class OutputResult:
    name: str  # e.g. hello_1.0-1_amd64.deb
    verdict: Verdict
    rebuilt: Digest | None  # None when this build did not produce the file
    buildinfo: Digest | None  # the buildinfo's Checksums-Sha256, None when not listed
    repository: Digest | None  # the Packages index's SHA256, None when not published
    report_html: Path | None = None  # diffoscope reports, for mismatches
    report_txt: Path | None = None


@dataclass(frozen=True)
class RebuildOutcome:
    job: BuildJob
    started_on: datetime
    finished_on: datetime
    buildinfo_sha256: Digest | None  # None only when the buildinfo could not be fetched
    outputs: tuple[OutputResult, ...] = ()
    failure: str | None = None  # why the rebuild failed; then outputs is empty
    failure_stage: Stage | None = None
    limit: str | None = None  # the node's limit that stopped the build ("timeout", "disk", ...)
    log_path: Path | None = None
    environment: Literal["host", "mmdebstrap"] = "host"
    internal_parameters: dict[str, Any] = field(default_factory=dict)
    resolved_dependencies: tuple[dict[str, Any], ...] = ()
    artifacts_dir: Path | None = None  # where the rebuilt files are kept

    @property
    def verdict(self) -> Literal["reproduced", "mismatch", "failed"]:
        if self.failure is not None:
            return "failed"
        if self.outputs and all(o.verdict == "reproduced" for o in self.outputs):
            return "reproduced"
        return "mismatch"
