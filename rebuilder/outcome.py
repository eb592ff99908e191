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
from verifier.verdicts import JobVerdict, OutputVerdictKind, job_verdict

__all__ = [
    "BuildJob",
    "Interrupted",
    "OutputResult",
    "RebuildOutcome",
    "Stage",
    "StateDiskFull",
    "Verdict",
]

Verdict = OutputVerdictKind  # reproduced | unreproducible | tampered | missing-rebuild
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
class ReleaseRef:
    """The verified Release a job was found in: what its attestation says was authenticated."""

    uri: str  # the InRelease (or Release) URL as fetched
    sha256: Digest  # of the fetched file's bytes
    signer: str | None  # primary key fingerprint; None: unsigned repository, trusted = true
    date: str | None = None  # the Release's Date, ISO 8601

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "sha256": self.sha256, "signer": self.signer, "date": self.date}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReleaseRef:
        return cls(str(d["uri"]), Digest(str(d["sha256"])),
                   str(d["signer"]) if d.get("signer") else None,
                   str(d["date"]) if d.get("date") else None)

    def dependency(self) -> dict[str, Any]:
        """Its ``resolvedDependencies`` entry (docs/formats.md, "What was authenticated")."""
        annotations: dict[str, Any] = {"signer": self.signer or "none (trusted = true)"}
        if self.date:
            annotations["date"] = self.date
        return {"name": self.uri.rsplit("/", 1)[-1], "uri": self.uri,
                "digest": {"sha256": self.sha256}, "annotations": annotations}


@dataclass(frozen=True)
class BuildJob:
    """One (source, version, architecture) triple to rebuild, as the watcher found it.

    ``version`` is what was built: for a binNMU its own version (``2.10-3+b1``), with
    ``source_version`` the source it was built from (``2.10-3``); else ``source_version`` is
    None. The statement's package is the source (name, source version, architecture).
    """

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
    release: ReleaseRef | None = None  # None: not found by the watcher (e.g. rebuilder rebuild)
    # Where else the buildinfo may be, tried in order when buildinfo_url answers 404 (the
    # candidates of RepositoryConfig.buildinfo_candidates); and whether an operator named the
    # URL (`rebuilder rebuild --buildinfo URL`), which is then used as given.
    buildinfo_candidates: tuple[str, ...] = ()
    buildinfo_pinned: bool = False
    source_version: str | None = None  # set only for a binNMU
    # whose watcher found it and whose builder runs it (rebuilder.ecosystem); every
    # repository is an APT one today, so the state database does not record it
    ecosystem: str = "debian"

    @property
    def package(self) -> PackageIdentity:
        return PackageIdentity(
            self.ecosystem, self.source, self.source_version or self.version, self.architecture
        )


@dataclass(frozen=True)
class OutputResult:
    """The verdict on one *published* file (rebuilt files not published are byproducts)."""

    name: str  # e.g. hello_1.0-1_amd64.deb
    verdict: Verdict
    rebuilt: Digest | None  # None when this build did not produce the file
    buildinfo: Digest | None  # the buildinfo's Checksums-Sha256, None when not listed
    repository: Digest | None  # the Packages index's SHA256
    report_html: Path | None = None  # diffoscope reports, for unreproducible and tampered files
    report_txt: Path | None = None


@dataclass(frozen=True)
class RebuildOutcome:
    job: BuildJob
    started_on: datetime
    finished_on: datetime
    buildinfo_sha256: Digest | None  # None only when the buildinfo could not be fetched
    outputs: tuple[OutputResult, ...] = ()
    # rebuilt files the repository does not publish (name, sha256): never subjects
    unpublished: tuple[tuple[str, Digest], ...] = ()
    failure: str | None = None  # why the rebuild failed; then outputs is empty
    failure_stage: Stage | None = None
    limit: str | None = None  # the node's limit that stopped the build ("timeout", "disk", ...)
    log_path: Path | None = None
    environment: Literal["host", "mmdebstrap"] = "host"
    internal_parameters: dict[str, Any] = field(default_factory=dict)
    resolved_dependencies: tuple[dict[str, Any], ...] = ()
    artifacts_dir: Path | None = None  # where the rebuilt files are kept

    @property
    def verdict(self) -> JobVerdict:
        """failed, tampered, unreproducible or reproduced (verifier/verdicts.py); a build
        that produced none of the published files is failed, as its statement says."""
        if self.failure is None and not any(o.rebuilt for o in self.outputs):
            return "failed"
        return job_verdict((o.verdict for o in self.outputs), self.failure is not None)
