"""The rebuild pipeline: one ``BuildJob`` in, one ``RebuildOutcome`` out (ARCHITECTURE §5, 2-4).

``run_rebuild`` fetches the buildinfo and the source, checks every hash before anything is
unpacked, prepares the environment (host check or pinned mmdebstrap chroot), runs
``dpkg-buildpackage`` in bubblewrap at the buildinfo's Build-Path with its Environment, hashes the
outputs, compares them with the buildinfo and the repository, and runs diffoscope on every published
file that was not reproduced.
It never raises for a bad package: every failure is an outcome with ``failure`` and
``failure_stage``. It does not sign, store or publish; the daemon does. Layout of ``work_dir``::

    build.log        everything the steps printed (capped), appended to by every attempt and
                     ending with each published file's published, buildinfo and rebuilt digests
    inputs/          buildinfo, .dsc and source files, hash-checked
    tree/            bound at dirname(Build-Path) in the sandbox; removed after the build
                     (as root: its own ext4 filesystem of max_disk_mb, tree.ext4 the image)
    artifacts/       the rebuilt .deb files (copied out of the tree, regular files only)
    published/       published .debs fetched for diffoscope
    reports/         diffoscope <name>.html / <name>.txt
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shutil
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import aiohttp

from rebuilder import compare, recovery, sandbox
from rebuilder.config import BuildConfig, DiffoscopeConfig
from rebuilder.debian import environment, pins
from rebuilder.debian.buildinfo import (
    ENV_DENYLIST,
    MAX_BUILDINFO_BYTES,
    MAX_DSC_BYTES,
    Buildinfo,
    parse_buildinfo,
    parse_dsc,
    validate_file_name,
    version_noepoch,
)
from rebuilder.fetch import fetch_bytes, fetch_file
from rebuilder.openpgp import SourcePolicy, check_dsc_signature
from rebuilder.outcome import (
    BuildJob,
    Interrupted,
    OutputResult,
    RebuildOutcome,
    Stage,
    StateDiskFull,
)
from verifier.debian import parse_deb_name
from verifier.errors import BadDataError, ConfigError, HTTPStatusError, UnreachableError
from verifier.statement import Digest
from verifier.verdicts import job_verdict

__all__ = ["BACKEND", "BuildSettings", "StageError", "run_rebuild"]

BACKEND = "repro-quorum-bwrap/1"
_MB = 1024 * 1024
_INPUTS = "/run/rebuild-inputs"  # where the fetched inputs appear, read-only, in the sandbox
_BINNMU_ENTRY = "rq-binnmu.changelog"  # in inputs/, next to the source files


@dataclass(frozen=True)
class BuildSettings:
    """The ``[build]`` and ``[diffoscope]`` sections of the node config (docs/configuration.md)."""

    # the defaults are the config's (rebuilder.config), written once there
    environment: Literal["host", "mmdebstrap"] = BuildConfig.environment
    mirror: str = BuildConfig.mirror
    timeout: float = float(BuildConfig.timeout)
    max_disk_mb: int = BuildConfig.max_disk_mb
    max_output_mb: int = BuildConfig.max_output_mb
    max_log_mb: int = BuildConfig.max_log_mb
    max_source_mb: int = BuildConfig.max_source_mb
    max_memory_mb: int = BuildConfig.max_memory_mb  # per build (cgroup memory.max, no swap)
    max_processes: int = BuildConfig.max_processes  # per build (cgroup pids.max)
    diffoscope_enabled: bool = DiffoscopeConfig.enabled
    diffoscope_timeout: float = float(DiffoscopeConfig.timeout)
    max_report_mb: int = DiffoscopeConfig.max_report_mb
    # Where pins are resolved and mmdebstrap installs from: the job's repository's
    # build_suite entries (the daemon sets them); without any, ``mirror`` and ``suite``.
    suites: tuple[pins.SuiteSource, ...] = ()
    suite: str | None = None
    snapshot_url: str | None = None  # snapshot.debian.org's API, for pins in no suite
    chroot_cache_mb: int = 0  # least recently used chroots evicted above this; 0: no cap
    cache_dir: Path | None = None  # chroot cache (the node's state_dir/cache); None: per job
    hidden_paths: tuple[Path, ...] = ()  # state dir, signing key: covered if ever visible
    fetch_timeout: float = 600.0
    # per repository name: how .dsc signatures are checked (uploader_keyring, ...)
    source_policies: Mapping[str, SourcePolicy] = field(default_factory=dict)
    min_free_mb: int = 0  # node.min_free_mb: a build failing below it blames the full disk

    @classmethod
    def from_config(cls, build: BuildConfig, diffoscope: DiffoscopeConfig,
                    **node: Any) -> BuildSettings:
        """The [build] and [diffoscope] values, plus what the node adds (``node``)."""
        shared = {f.name: getattr(build, f.name) for f in dataclasses.fields(build)
                  if f.name != "parallel"}  # the daemon's, not one build's
        shared["timeout"] = float(build.timeout)
        return cls(**shared, diffoscope_enabled=diffoscope.enabled,
                   diffoscope_timeout=float(diffoscope.timeout),
                   max_report_mb=diffoscope.max_report_mb, **node)

    def __post_init__(self) -> None:
        if self.environment not in ("host", "mmdebstrap"):
            raise ConfigError(f"build environment {self.environment!r} is not host or mmdebstrap")
        for name in (
            "timeout",
            "max_disk_mb",
            "max_output_mb",
            "max_log_mb",
            "max_source_mb",
            "max_memory_mb",
            "max_processes",
            "diffoscope_timeout",
            "max_report_mb",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"build setting {name} must be positive")
        # relative paths (a config loaded from ".") are taken from the current directory
        object.__setattr__(self, "hidden_paths", tuple(p.absolute() for p in self.hidden_paths))
        sandbox.check_hidden(self.hidden_paths)


class StageError(BadDataError):
    """A step of the pipeline failed for this package (not a bug of ours); ``limit`` names the
    node's limit that stopped it, if one did."""

    def __init__(self, stage: Stage, message: str, limit: str | None = None) -> None:
        super().__init__(f"{stage} stage", message, message=message)
        self.stage = stage
        self.message = message
        self.limit = limit


@dataclass
class _Run:
    job: BuildJob
    settings: BuildSettings
    work: Path
    session: aiohttp.ClientSession
    log: BinaryIO
    started: datetime
    buildinfo: Buildinfo | None = None
    buildinfo_sha256: Digest | None = None  # set once fetched, even if it then fails to parse
    resolved: list[dict[str, Any]] = field(default_factory=list)
    internal: dict[str, Any] = field(default_factory=dict)
    outputs: list[OutputResult] = field(default_factory=list)
    unpublished: list[tuple[str, Digest]] = field(default_factory=list)
    chroot: environment.PreparedChroot | None = None
    log_start: int = 0  # where this attempt's part of the (appended) log begins

    def say(self, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        self.log.write(f"[{stamp}] {text}\n".encode("utf-8", "replace"))
        self.log.flush()

    def log_budget(self) -> int:
        return max(4096, self.settings.max_log_mb * _MB - (self.log.tell() - self.log_start))


async def run_rebuild(
    job: BuildJob, settings: BuildSettings, work_dir: Path, session: aiohttp.ClientSession
) -> RebuildOutcome:
    """Rebuild one (source, version, architecture); never raises for a bad package."""
    log_path = work_dir / "build.log"
    started = datetime.now(UTC)
    with await asyncio.to_thread(_open_log, log_path) as log:
        run = _Run(job, settings, work_dir, session, log, started, log_start=log.tell())
        run.say(f"=== rebuild of {job.source} {job.version} {job.architecture} started")
        failure: StageError | None = None
        try:
            await _pipeline(run)
        except StageError as e:
            failure = e
        except (BadDataError, UnreachableError) as e:  # escaped a step's own wrapping
            failure = StageError("fetch", str(e))
        except asyncio.CancelledError:
            run.say("cancelled")
            raise
        except Interrupted as e:  # not a verdict: the daemon retries the job
            run.say(f"interrupted: {e.reason}")
            raise
        except Exception as e:  # a bug or a broken host must still give an outcome and a log
            failure = StageError("internal", f"{type(e).__name__}: {e}")
        finally:
            _remove_tree(work_dir / "tree")
            _remove_tree(work_dir / _UNPACK_INPUTS)
            if run.chroot is not None:
                run.chroot.release()
        _log_summary(run, failure)
    return RebuildOutcome(
        job=run.job,  # with the buildinfo URL that answered
        started_on=started,
        finished_on=datetime.now(UTC),
        buildinfo_sha256=run.buildinfo_sha256,
        outputs=() if failure else tuple(run.outputs),
        unpublished=() if failure else tuple(run.unpublished),
        failure=failure.message[:4000] if failure else None,
        failure_stage=failure.stage if failure else None,
        limit=failure.limit if failure else None,
        log_path=log_path,
        environment=settings.environment,
        internal_parameters=run.internal,
        resolved_dependencies=tuple(run.resolved),
        artifacts_dir=work_dir / "artifacts",
    )


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    # append mode: every write lands at the end, whoever else (mmdebstrap, the sandbox) wrote
    # to the file meanwhile, and a retried attempt adds to the log of the earlier ones
    return open(path, "ab")  # closed by the caller's with statement


def _log_summary(run: _Run, failure: StageError | None) -> None:
    """The log's last lines: the verdict, and every published file's three digests."""
    if failure is not None:
        run.say(f"FAILED at {failure.stage}: {failure.message}")
    verdict = "failed" if failure else job_verdict((o.verdict for o in run.outputs), False)
    lines = [f"verdict: {verdict}"]
    for name, (digest, _) in sorted(run.job.published.items()):
        out = next((o for o in run.outputs if o.name == name), None)
        binfo = run.buildinfo and next(
            (f.sha256 for f in run.buildinfo.checksums if f.name == name), None
        )
        lines.append(
            f"  {name}: {out.verdict if out and not failure else 'not compared'}\n"
            f"    published {digest}\n"
            f"    buildinfo {binfo or '(not listed)'}\n"
            f"    rebuilt   {(out.rebuilt if out else None) or '(not rebuilt)'}"
        )
    for name, digest in run.unpublished:
        lines.append(f"  {name}: unpublished byproduct, rebuilt {digest}")
    run.say("\n".join(lines))


def _mkdirs(*paths: Path) -> None:
    for p in paths:
        p.mkdir(parents=True, exist_ok=True)


def _share_read_only(directory: Path) -> None:
    directory.chmod(0o755)
    for p in directory.iterdir():
        if p.is_file() and not p.is_symlink():
            p.chmod(0o644)


def _remove_tree(path: Path) -> None:
    sandbox.release_build_tree(path)  # the tree's own filesystem, if it has one
    if path.exists():
        # the sandbox may have left read-only directories behind
        def onerror(func: Any, p: str, exc: Any) -> None:
            with contextlib.suppress(OSError):
                os.chmod(os.path.dirname(p), 0o700)
                func(p)

        shutil.rmtree(path, onerror=onerror)


async def _pipeline(run: _Run) -> None:
    settings = run.settings
    # a retried job starts clean: nothing of an earlier attempt may be mistaken for this one's
    for leftover in ("inputs", "tree", _UNPACK_INPUTS, "artifacts", "published", "reports"):
        _remove_tree(run.work / leftover)
    inputs = run.work / "inputs"
    _mkdirs(inputs)
    run.internal.update(
        {"backend": BACKEND, "environment": settings.environment, "bwrap": sandbox.bwrap_version()}
    )

    # 1. fetch: buildinfo, then the .dsc and every file it names, all hash-checked; the chain
    # starts at the Release the watcher verified (docs/formats.md, "What was authenticated")
    if run.job.release is not None:
        run.resolved.append(run.job.release.dependency())
    info = await _fetch_buildinfo(run, inputs)
    build_path = info.build_path or f"/build/{info.source}-{version_noepoch(info.version)}"
    run.internal["build_path"] = build_path
    run.internal["build_path_recorded"] = info.build_path is not None
    dsc_path = await _fetch_source(run, inputs, info)

    # 2. environment
    host_arch = await asyncio.to_thread(environment.host_architecture)
    run.internal["host_architecture"] = host_arch
    native = [a for a in info.binary_architectures if a != "all"]
    if any(a != host_arch for a in native):
        raise StageError(
            "environment", f"buildinfo builds for {' '.join(native)}, this node is {host_arch}"
        )
    root, system_paths = await _prepare_environment(run, info, host_arch)
    for dep in info.installed_build_depends:
        entry: dict[str, Any] = {"uri": dep.purl, "annotations": {"version": dep.version}}
        entry["name"] = dep.name
        if dep.arch:
            entry["annotations"]["architecture"] = dep.arch
        run.resolved.append(entry)

    env = {k: v for k, v in info.environment if k not in ENV_DENYLIST}
    ignored = sorted(k for k, _ in info.environment if k in ENV_DENYLIST)
    run.internal["environment_variables"] = env
    if ignored:
        run.internal["environment_ignored"] = ignored
        run.say(f"buildinfo Environment entries not applied: {', '.join(ignored)}")

    # 3. unpack and build inside the sandbox
    if info.binary_only_changes is not None:
        # a binNMU: the changelog entry sbuild --make-binNMU prepended, from the buildinfo
        if (inputs / _BINNMU_ENTRY).exists():
            raise StageError("fetch", f"the .dsc names {_BINNMU_ENTRY}, a name this node uses")
        (inputs / _BINNMU_ENTRY).write_text(info.binary_only_changes + "\n", encoding="utf-8")
        run.internal["binnmu"] = {"version": info.binary_version, "source_version": info.version}
    tree = run.work / "tree"
    _remove_tree(tree)
    bounded = await asyncio.to_thread(sandbox.make_build_tree, tree, settings.max_disk_mb * _MB)
    run.say(f"build tree: {bounded or 'a directory, measured every few seconds'}")
    # explicit modes: the daemon's umask may be 077, and the sandbox user must read the
    # (public) inputs and own the tree
    _share_read_only(inputs)
    tree.chmod(0o755)
    parent, leaf = build_path.rsplit("/", 1)
    drop = os.geteuid() == 0
    if drop:
        os.chown(tree, sandbox.NOBODY, sandbox.NOBODY)
    limits = sandbox.Limits(
        timeout=settings.timeout,
        max_log_bytes=run.log_budget(),
        max_disk_bytes=settings.max_disk_mb * _MB,
        max_memory_bytes=settings.max_memory_mb * _MB,
        max_processes=settings.max_processes,
    )
    view = await asyncio.to_thread(_unpack_inputs, run.work, inputs)
    cfg = unpack_config(view, tree, parent, env, root, system_paths, settings.hidden_paths)
    deadline = time.monotonic() + settings.timeout
    run.say(f"unpacking {dsc_path.name} at {build_path}")
    await _sandboxed(
        run,
        ["dpkg-source", "--no-copy", "-x", f"{_INPUTS}/{dsc_path.name}", leaf],
        cfg,
        limits,
        tree,
        "unpacking the source",
    )
    if info.binary_only_changes is not None:
        run.say(f"binNMU {info.binary_version}: prepending its changelog entry")
        # inside the sandbox: the unpacked tree is the package's, links and all
        await _sandboxed(
            run,
            ["sh", "-ec", 'cat "$1" debian/changelog > debian/changelog.rq-binnmu'
             " && mv debian/changelog.rq-binnmu debian/changelog", "sh",
             f"{_INPUTS}/{_BINNMU_ENTRY}"],
            sandbox.SandboxConfig(
                binds=cfg.binds, chdir=build_path, env=cfg.env, root=root,
                system_paths=system_paths, hidden=settings.hidden_paths,
            ),
            sandbox.Limits(timeout=60, max_log_bytes=run.log_budget(),
                           max_disk_bytes=limits.max_disk_bytes),
            tree,
            "applying the binNMU changelog entry",
        )
    if view != inputs:
        _remove_tree(view)  # the build step does not get the inputs
    arch_flag = _arch_flag(info)
    argv = ["dpkg-buildpackage", arch_flag, "--no-sign", "-rfakeroot"]
    run.internal["build_command"] = argv
    run.internal["sandbox"] = {
        "network": "none",
        "user": "nobody" if drop else "invoking user",
        "system": "host" if root == Path("/") else "chroot",
        "writable": [parent],
    }
    build_cfg = sandbox.SandboxConfig(
        # the build needs the unpacked tree only: the fetched inputs (and their host path in
        # the sandbox's mount table) stay out of it
        binds=(sandbox.Bind(tree, parent, writable=True),),
        chdir=build_path,
        env=cfg.env,
        root=root,
        system_paths=system_paths,
        hidden=settings.hidden_paths,
    )
    remaining = max(1.0, deadline - time.monotonic())
    limits = replace(limits, timeout=remaining, max_log_bytes=run.log_budget())
    run.say("$ " + " ".join(argv))
    await _sandboxed(run, argv, build_cfg, limits, tree, "dpkg-buildpackage")

    # 4. collect, hash, compare
    rebuilt = _collect(run, tree, info)
    await _compare(run, info, rebuilt)


_UNPACK_INPUTS = "unpack-inputs"  # in the work dir: the inputs' own filesystem, while unpacking


def _unpack_inputs(work: Path, inputs: Path) -> Path:
    """The directory the unpack step binds at ``/run/rebuild-inputs``.

    Where the node can mount one, a copy of the inputs on a filesystem of its own
    (``make_build_tree``): the sandbox's mount table then shows the root of a filesystem, not
    the inputs' path on the host (a bind mount's entry names its source directory relative to
    its filesystem's root). Otherwise ``inputs`` itself. ``_remove_tree`` releases it.
    Blocking (mkfs, copies): call in a thread."""
    view = work / _UNPACK_INPUTS
    _remove_tree(view)
    files = [p for p in inputs.iterdir() if p.is_file() and not p.is_symlink()]
    size = sum(p.stat().st_size for p in files) + 8 * _MB
    if sandbox.make_build_tree(view, size) is None:
        _remove_tree(view)
        return inputs
    for p in files:
        shutil.copyfile(p, view / p.name)
    _share_read_only(view)
    return view


def unpack_config(
    inputs: Path,
    tree: Path,
    parent: str,
    env: Mapping[str, str],
    root: Path,
    system_paths: tuple[str, ...],
    hidden: tuple[Path, ...],
) -> sandbox.SandboxConfig:
    """The unpack step's sandbox: the inputs read-only at ``/run/rebuild-inputs``, the tree
    writable at ``parent`` (tested by ``tests/integration/test_sandbox_mountinfo.py``)."""
    return sandbox.SandboxConfig(
        # /run is a reserved top directory, so no Build-Path can overlap the inputs
        binds=(sandbox.Bind(inputs, _INPUTS), sandbox.Bind(tree, parent, writable=True)),
        chdir=parent,
        env=env,
        root=root,
        system_paths=system_paths,
        hidden=hidden,
    )


def _arch_flag(info: Buildinfo) -> str:
    archs = set(info.binary_architectures)
    if archs == {"all"}:
        return "-A"  # architecture-independent packages only
    if "all" in archs:
        return "-b"  # both
    return "-B"  # architecture-dependent only


async def _fetch_buildinfo(run: _Run, inputs: Path) -> Buildinfo:
    """The first of the job's buildinfo URLs that answers; a 404 moves on to the next."""
    job = run.job
    urls = list(dict.fromkeys((job.buildinfo_url, *job.buildinfo_candidates)))
    absent: list[str] = []
    data = b""
    for url in urls:
        run.say(f"fetching buildinfo {url}")
        try:
            data = await fetch_bytes(
                run.session, url, MAX_BUILDINFO_BYTES, run.settings.fetch_timeout
            )
        except UnreachableError as e:
            if isinstance(e, HTTPStatusError) and e.status == 404 and url != urls[-1]:
                absent.append(url)
                run.say("not there (HTTP 404); trying the next candidate")
                continue
            tried = f" (also tried, HTTP 404: {', '.join(absent)})" if absent else ""
            raise StageError("fetch", f"buildinfo: {e}{tried}") from e
        except BadDataError as e:
            raise StageError("fetch", f"buildinfo: {e}") from e
        if url != job.buildinfo_url:
            job = run.job = replace(job, buildinfo_url=url)
        break
    # the digest names the document a failure statement is about, valid or not
    run.buildinfo_sha256 = Digest(hashlib.sha256(data).hexdigest())
    (inputs / "job.buildinfo").write_bytes(data)
    try:
        info = parse_buildinfo(data)
    except BadDataError as e:
        raise StageError("fetch", f"buildinfo: {e}") from e
    run.buildinfo = info
    if (info.source, info.binary_version) != (job.source, job.version):
        raise StageError(
            "fetch",
            f"buildinfo is for {info.source} {info.binary_version}, the job is {job.source}"
            f" {job.version}",
        )
    if job.source_version is not None and job.source_version != info.version:
        raise StageError(
            "fetch",
            f"buildinfo is a build of source {info.source} {info.version}, the job's source"
            f" version is {job.source_version}",
        )
    if job.architecture not in info.binary_architectures:
        raise StageError(
            "fetch",
            f"buildinfo Architecture is {' '.join(info.architectures)}, "
            f"the job is for {job.architecture}",
        )
    run.say(f"buildinfo sha256 {info.sha256}: {len(info.installed_build_depends)} build deps")
    return info


def _dsc_location(job: BuildJob, info: Buildinfo) -> str:
    if job.dsc_url:
        return job.dsc_url
    name = f"{info.source}_{version_noepoch(info.version)}.dsc"
    for _, url in job.published.values():
        if "/pool/" in url:
            return url.rsplit("/", 1)[0] + "/" + name
    raise StageError(
        "fetch", "no .dsc URL: the job names none and no published binary shows the pool directory"
    )


async def _fetch_source(run: _Run, inputs: Path, info: Buildinfo) -> Path:
    job, settings = run.job, run.settings
    url = _dsc_location(job, info)
    run.say(f"fetching {url}")
    try:
        data = await fetch_bytes(run.session, url, MAX_DSC_BYTES, settings.fetch_timeout)
        dsc = parse_dsc(data)
    except (BadDataError, UnreachableError) as e:
        raise StageError("fetch", f"source: {e}") from e
    if job.dsc_sha256 and dsc.sha256 != job.dsc_sha256:
        raise StageError(
            "fetch", f".dsc sha256 {dsc.sha256}, the Sources index says {job.dsc_sha256}"
        )
    if job.dsc_sha256 is None and job.release is not None and job.release.signer is not None:
        raise StageError("fetch", f"the verified Sources index of {job.release.uri} does not "
                                  f"list {info.source} {info.version}: its .dsc cannot be "
                                  "authenticated")
    policy = settings.source_policies.get(job.repository, SourcePolicy())
    try:
        signed, note = await asyncio.to_thread(check_dsc_signature, data, policy, "the .dsc")
        if signed is not None and parse_dsc(signed.content).files != dsc.files:
            raise BadDataError("dsc", "the signed part names other files than the whole file")
    except BadDataError as e:
        raise StageError("fetch", f"source: {e}") from e
    run.say(note)
    if (dsc.source, dsc.version) != (info.source, info.version):
        raise StageError(
            "fetch",
            f".dsc is for {dsc.source} {dsc.version}, buildinfo for {info.source} {info.version}",
        )
    dsc_name = validate_file_name(url.rsplit("/", 1)[1], "dsc url")
    if not dsc_name.endswith(".dsc"):
        raise StageError("fetch", f"source control file {dsc_name!r} does not end in .dsc")
    total = sum(f.size for f in dsc.files) + len(data)
    if total > settings.max_source_mb * _MB:
        raise StageError(
            "fetch", f"source files total {total} bytes, limit {settings.max_source_mb} MiB"
        )
    if dsc_name in {f.name for f in dsc.files}:
        raise StageError("fetch", f".dsc lists itself ({dsc_name})")
    dsc_path = inputs / dsc_name
    dsc_path.write_bytes(data)
    dsc_entry: dict[str, Any] = {"name": dsc_name, "uri": url, "digest": {"sha256": dsc.sha256}}
    if signed is not None:
        dsc_entry["annotations"] = {"signer": signed.fingerprint}
    run.resolved.append(dsc_entry)
    base = url.rsplit("/", 1)[0]
    for f in dsc.files:
        run.say(f"fetching {f.name} ({f.size} bytes)")
        try:
            await fetch_file(
                run.session,
                f"{base}/{f.name}",
                inputs / f.name,
                limit=settings.max_source_mb * _MB,
                sha256=f.sha256,
                size=f.size,
                time_limit=settings.fetch_timeout,
            )
        except (BadDataError, UnreachableError) as e:
            raise StageError("fetch", f"source file {f.name}: {e}") from e
        run.resolved.append(
            {"name": f.name, "uri": f"{base}/{f.name}", "digest": {"sha256": f.sha256}}
        )
    run.say(f"source {dsc.source} {dsc.version}: {len(dsc.files)} files, all hashes match")
    return dsc_path


async def _prepare_environment(
    run: _Run, info: Buildinfo, host_arch: str
) -> tuple[Path, tuple[str, ...]]:
    settings = run.settings
    if settings.environment == "host":
        diffs = await asyncio.to_thread(environment.host_differences, info.installed_build_depends)
        if diffs:
            listing = "\n".join(f"  {d}" for d in diffs)
            run.say(f"host differs from the buildinfo in {len(diffs)} packages:\n{listing}")
            shown = "; ".join(diffs[:20]) + (
                f"; and {len(diffs) - 20} more" if len(diffs) > 20 else ""
            )
            raise StageError(
                "environment",
                f"host does not match Installed-Build-Depends ({len(diffs)} differences): {shown}",
            )
        run.say(f"host matches all {len(info.installed_build_depends)} Installed-Build-Depends")
        return Path("/"), sandbox.HOST_SYSTEM_PATHS
    cache = settings.cache_dir or (run.work / "cache")
    suites = settings.suites or (
        (pins.SuiteSource(settings.mirror, settings.suite),) if settings.suite else ()
    )
    if not suites:
        raise StageError("environment", "no build suite is configured to install pins from")
    local, pool = await _resolve_pins(run, info, suites, host_arch, cache)
    first = suites[0]
    mirror = first.apt_line() if first.keyring else first.mirror
    extra = [s.apt_line() for s in suites[1:]]
    run.say(f"preparing an mmdebstrap chroot from {first.label}"
            + (f" and {len(extra)} more sources" if extra else ""))
    try:
        chroot = await environment.prepare_chroot(
            info.installed_build_depends,
            cache,
            mirror,
            first.suite,
            host_arch,
            run.work / "build.log",
            time_limit=settings.timeout,
            extra_sources=extra,
            local_debs=local,
            cache_cap_bytes=settings.chroot_cache_mb * _MB,
            pool_files=pool,
        )
        run.chroot = chroot  # held until the run is over: never evicted while in use
    except environment.ChrootError as e:
        raise StageError("environment", f"could not pin the environment: {e}") from e
    run.log.seek(0, os.SEEK_END)
    run.internal.update(
        {
            "chroot": {
                "key": chroot.key,
                "mirror": first.mirror,
                "suite": first.suite,
                "sources": [mirror, *extra],
                "snapshot_files": sorted(p.name for p in local.values()),
                "cached": chroot.cached,
                "base": chroot.base,
                "base_cached": chroot.base_cached,
                "layout": chroot.layout,
                "delta": chroot.delta,
            }
        }
    )
    how = ("cached" if chroot.cached else
           f"new: {chroot.delta} pins on {'cached ' if chroot.base_cached else 'new '}"
           f"{chroot.base}, {chroot.layout}")
    run.say(f"chroot {chroot.name} ({how}) in {chroot.seconds:.1f}s")
    return chroot.path, sandbox.CHROOT_SYSTEM_PATHS


async def _resolve_pins(
    run: _Run, info: Buildinfo, suites: tuple[pins.SuiteSource, ...], arch: str, cache: Path
) -> tuple[dict[Any, Path], dict[Any, tuple[str, str]]]:
    """Every Installed-Build-Depends pin found before anything is bootstrapped: in the
    suites, else in the snapshot archive (its files fetched and checked now); any pin found
    nowhere fails here, naming each. The snapshot's pins with their verified cached files, and
    the suites' pins with their pool path and sha256 (the package cache is checked by them)."""
    settings = run.settings
    started = time.monotonic()
    indexes: list[tuple[pins.SuiteSource, pins.PoolFiles]] = []
    for suite in suites:
        try:
            indexes.append((suite, await pins.suite_index(
                run.session, suite, arch, settings.fetch_timeout)))
        except (BadDataError, UnreachableError) as e:
            raise StageError("environment", f"build suite {suite.label}: {e}") from e
    deps = info.installed_build_depends
    first = pins.resolve(deps, indexes, arch)
    found: dict[Any, pins.SnapshotFile | None] = {}
    client = None
    if first.missing and settings.snapshot_url:
        client = pins.SnapshotClient(run.session, settings.snapshot_url,
                                     cache / "packages", settings.fetch_timeout)
        for dep in first.missing:
            try:
                found[dep] = await client.lookup(dep, arch)
            except (BadDataError, UnreachableError) as e:
                raise StageError("environment", f"snapshot lookup of {dep}: {e}") from e
    resolution = pins.resolve(deps, indexes, arch, found)
    run.internal["pins"] = resolution.summary()
    run.say(f"pins resolved in {time.monotonic() - started:.1f}s: "
            + ", ".join(f"{n} from {where}" for where, n in resolution.summary().items()))
    if not resolution.complete:
        run.say("pins found nowhere:\n" + "\n".join(
            f"  {d}: in no configured suite or snapshot" for d in resolution.missing))
        raise StageError("environment", resolution.error())
    pool = {dep: pins.pool_file(dep, dict(indexes)[suite], arch)
            for dep, suite in resolution.suites.items()}
    files: dict[Any, Path] = {}
    if not resolution.snapshot:
        return files, pool
    assert client is not None
    for dep, f in sorted(resolution.snapshot.items(), key=lambda kv: kv[1].name):
        run.say(f"{dep}: from the snapshot archive, {f.name} sha1 {f.sha1}")
        try:
            files[dep] = await client.download(f)
        except (BadDataError, UnreachableError) as e:
            raise StageError("environment", f"snapshot file of {dep}: {e}") from e
    return files, pool


async def _sandboxed(
    run: _Run,
    argv: list[str],
    cfg: sandbox.SandboxConfig,
    limits: sandbox.Limits,
    tree: Path,
    what: str,
) -> None:
    oom_before = recovery.oom_kills()  # host-wide: used only when the build has no cgroup
    result = await sandbox.run_sandboxed(argv, cfg, run.log, limits, watch_dir=tree)
    run.log.seek(0, os.SEEK_END)
    # the disk limit is polled; a build may have passed it between two looks
    if (result.limit is None and result.returncode != 0 and limits.max_disk_bytes is not None
            and await asyncio.to_thread(sandbox.directory_size, tree) > limits.max_disk_bytes):
        result = dataclasses.replace(result, returncode=None, limit="disk")
    if result.limit is not None:
        run.internal["stopped_by_limit"] = result.limit
        raise StageError("build", f"{what} {sandbox.describe_limit(result.limit, limits)}",
                         limit=result.limit)
    if result.returncode != 0:
        why = recovery.killed_from_outside(result.returncode, oom_before, recovery.oom_kills(),
                                           result.outside_oom_kills)
        if why is not None:
            raise Interrupted(f"{what}: {why}")
        # the state filesystem, not the build tree (which may be its own bounded filesystem)
        free = await asyncio.to_thread(recovery.free_bytes, run.work)
        if free < max(recovery.MiB, run.settings.min_free_mb * _MB):
            raise StateDiskFull(f"the state filesystem filled up during {what}"
                                f" ({free // _MB} MiB free)", counted=True)
        raise StageError("build", f"{what} exited with status {result.returncode} (see the log)")


def _deb_arch(name: str) -> str | None:
    parts = parse_deb_name(name)
    return parts[2] if parts else None


def _collect(run: _Run, tree: Path, info: Buildinfo) -> dict[str, tuple[Digest, Path]]:
    """Copy this build's .debs out of the tree: regular files only, never through a link."""
    archs = set(info.binary_architectures)
    artifacts = run.work / "artifacts"
    _remove_tree(artifacts)
    artifacts.mkdir()
    cap = run.settings.max_output_mb * _MB
    total = 0
    found: dict[str, tuple[Digest, Path]] = {}
    for entry in sorted(os.scandir(tree), key=lambda e: e.name):
        arch = _deb_arch(entry.name)
        if arch is None or arch not in archs:
            continue
        try:
            validate_file_name(entry.name, "build output")
        except BadDataError as e:
            raise StageError("build", str(e)) from e
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise StageError("build", f"output {entry.name} is not a regular file")
        total += st.st_size
        if total > cap:
            raise StageError(
                "build", f"outputs exceed the limit of {run.settings.max_output_mb} MiB"
            )
        dest = artifacts / entry.name
        h = hashlib.sha256()
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as src, open(dest, "wb") as out:
            copied = 0
            while chunk := src.read(1024 * 1024):
                copied += len(chunk)
                if copied > st.st_size:  # grew under us: the sandbox is gone, so it cannot
                    raise StageError("build", f"output {entry.name} changed while copied")
                h.update(chunk)
                out.write(chunk)
        found[entry.name] = (Digest(h.hexdigest()), dest)
        run.say(f"rebuilt {entry.name} sha256 {h.hexdigest()}")
    if not found:
        raise StageError("build", "the build produced no .deb for " + " ".join(sorted(archs)))
    return found


async def _compare(run: _Run, info: Buildinfo, rebuilt: dict[str, tuple[Digest, Path]]) -> None:
    job, settings = run.job, run.settings
    comparison = compare.compare_outputs(
        {n: d for n, (d, _) in rebuilt.items()},
        {f.name: f.sha256 for f in info.checksums if f.name.endswith(".deb")},
        {n: d for n, (d, _) in job.published.items()},
    )
    run.unpublished = list(comparison.unpublished)
    for name, _ in comparison.unpublished:
        run.say(f"{name}: not published by the repository; a byproduct, not a subject")
    reports = run.work / "reports"
    for v in comparison.verdicts:
        html = txt = None
        diffable = v.verdict in ("unreproducible", "tampered") and v.rebuilt is not None
        if diffable and settings.diffoscope_enabled:
            html, txt = await _diffoscope(run, v.name, rebuilt[v.name][1], reports)
        run.say(f"{v.name}: {v.verdict}")
        run.outputs.append(
            OutputResult(
                name=v.name,
                verdict=v.verdict,
                rebuilt=v.rebuilt,
                buildinfo=v.buildinfo,
                repository=v.repository,
                report_html=html,
                report_txt=txt,
            )
        )


async def _diffoscope(
    run: _Run, name: str, rebuilt: Path, reports: Path
) -> tuple[Path | None, Path | None]:
    digest, url = run.job.published[name]
    published_dir = run.work / "published"
    _mkdirs(published_dir, reports)
    published = published_dir / name
    try:
        await fetch_file(
            run.session,
            url,
            published,
            limit=run.settings.max_output_mb * _MB,
            sha256=digest,
            time_limit=run.settings.fetch_timeout,
        )
    except (BadDataError, UnreachableError) as e:
        run.say(f"diffoscope skipped for {name}: published file: {e}")
        return None, None
    run.say(f"diffoscope {name}")
    result = await compare.run_diffoscope(
        published,
        rebuilt,
        reports / f"{name}.html",
        reports / f"{name}.txt",
        time_limit=run.settings.diffoscope_timeout,
        max_report_bytes=run.settings.max_report_mb * _MB,
    )
    run.internal.setdefault("diffoscope", await compare.diffoscope_version())
    if result.error:
        run.say(f"diffoscope {name}: {result.error}")
    return result.html, result.text
