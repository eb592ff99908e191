"""The ``rebuilder`` command: init, run, rebuild, status, revoke, requeue, keyinfo.

Environment and argv are read here only; everything below takes a ``Config``.

Exit codes: 0 success (``rebuild``: reproduced), 1 ``rebuild``: unreproducible, 2 ``rebuild``: the
build failed, 3 the command could not do its job (bad config, existing key, unreachable input),
4 ``rebuild``: tampered (the rebuild matches the buildinfo, the repository serves other bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import sqlite3
import sys
import tomllib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from debian import deb822

from rebuilder import __version__, _stopsignals, limits
from rebuilder._template import render_config
from rebuilder.attest import revocation_statement, sign_statement
from rebuilder.config import (
    NODE_ID,
    Config,
    ConfigError,
    RepositoryConfig,
    load_config,
    parse_config,
)
from rebuilder.db import NewAttestation, SchemaError, Store
from rebuilder.outcome import BuildJob
from verifier.debian import SOURCE_FIELD, is_package_name, is_version
from verifier.dsse import Envelope
from verifier.errors import BadDataError, UnreachableError, VerifierError
from verifier.keys import (
    generate_private_key,
    keyid,
    load_private_key,
    public_key_pem,
    save_private_key,
)
from verifier.statement import RevocationStatement, parse_statement
from verifier.verdicts import JOB_VERDICTS

__all__ = ["main"]

EXIT_OK, EXIT_MISMATCH, EXIT_FAILED, EXIT_ERROR, EXIT_TAMPERED = 0, 1, 2, 3, 4
MAX_BUILDINFO_BYTES = 4 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class CliError(ConfigError):
    """A problem the operator can fix (a bad argument, an existing file); printed without a
    traceback."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


async def _create_db(path: Path) -> None:
    store = await Store.open(path)
    await store.close()


def cmd_init(args: argparse.Namespace) -> int:
    if not NODE_ID.fullmatch(args.id):
        raise CliError(f"--id {args.id!r} must match {NODE_ID.pattern}")
    d = Path(args.dir).absolute()
    key_path = d / "keys" / "signing.pem"
    config_path = d / "config.toml"
    if key_path.exists():
        raise CliError(
            f"{key_path} already exists; refusing to overwrite a signing key (its attestations "
            "would become unverifiable). Use another --dir, or move the key away yourself."
        )
    if config_path.exists():
        raise CliError(f"{config_path} already exists; refusing to overwrite it")
    text = render_config(args)
    # Validate what would be written before anything touches the disk.
    parse_config(tomllib.loads(text), d)
    d.mkdir(parents=True, exist_ok=True)
    (d / "keys").mkdir(mode=0o700, exist_ok=True)
    key = generate_private_key()
    save_private_key(key, key_path)
    config_path.write_text(text, encoding="utf-8")
    config = load_config(config_path)  # what we wrote must load
    asyncio.run(_create_db(config.node.db_path))
    pub = key.public_key()
    print(f"initialised rebuilder node {config.node.id!r} in {d}")
    print(f"  config:   {config_path}")
    print(f"  key:      {key_path} (mode 0600; back it up, never share it)")
    print(f"  database: {config.node.db_path}")
    print(f"keyid: {keyid(pub)}")
    print(public_key_pem(pub), end="")
    print(f"Next: review {config_path}, then `rebuilder run --config {config_path}`.")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    # already done by the entry point (rebuilder/__main__.py) unless called in-process
    installed = _stopsignals.catch()
    from rebuilder.daemon import DaemonError, run_daemon

    try:
        asyncio.run(run_daemon(config, grace=args.grace))
    except DaemonError as e:
        print(f"rebuilder run: {e}; see the log above", file=sys.stderr)
        return EXIT_MISMATCH  # 1: systemd's Restart=on-failure restarts the node
    finally:
        if installed:
            _stopsignals.release()
    return EXIT_OK


def _parse_buildinfo_identity(data: bytes) -> tuple[str, str, str]:
    try:
        para = deb822.Deb822(data.decode("utf-8").splitlines())
    except (UnicodeDecodeError, ValueError) as e:
        raise BadDataError("buildinfo", f"cannot be parsed: {e}") from e
    source = (para.get("Source") or "").split(" ")[0].strip()
    version = (para.get("Version") or "").strip()
    archs = (para.get("Architecture") or "").split()
    if not is_package_name(source):
        raise BadDataError("buildinfo", f"Source {source!r} is missing or malformed")
    if not is_version(version):
        raise BadDataError("buildinfo", f"Version {version!r} is missing or malformed")
    binary_archs = [a for a in archs if a != "source"]
    if not binary_archs:
        raise BadDataError("buildinfo", "Architecture names no binary architecture")
    arch = next((a for a in binary_archs if a != "all"), "all")
    return source, version, arch


def _binnmu_source_version(data: bytes, version: str) -> str | None:
    """A binNMU buildinfo's source version (``Source: hello (2.10-3)``), else None."""
    from rebuilder.debian.indexes import is_binnmu_version

    m = re.search(rf"^Source:[ \t]*({SOURCE_FIELD.pattern})[ \t]*$",
                  data.decode("utf-8", "replace"), re.MULTILINE)
    source_version = m[3] if m else None
    if source_version and is_binnmu_version(version, source_version):
        return source_version
    return None


async def _read_buildinfo(where: str) -> tuple[str | None, bytes]:
    """The buildinfo's URL (None for a local file) and its bytes."""
    if urlsplit(where).scheme in ("http", "https"):
        from rebuilder.debian.watch import fetch_bounded

        async with aiohttp.ClientSession() as session:
            return where, await fetch_bounded(session, where, MAX_BUILDINFO_BYTES)
    return None, _read_local_buildinfo(where)


def _read_local_buildinfo(where: str) -> bytes:
    path = Path(where).absolute()
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BUILDINFO_BYTES + 1)
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from e
    if len(data) > MAX_BUILDINFO_BYTES:
        raise CliError(f"{path} is larger than {MAX_BUILDINFO_BYTES} bytes")
    return data


async def _from_repository(repo: RepositoryConfig, job: BuildJob, store: Store) -> BuildJob:
    """The watcher's job for the same triple (published digests, .dsc), when the repository
    lists it; otherwise ``job`` as given (compared with the buildinfo only)."""
    from rebuilder.debian.indexes import check_release
    from rebuilder.debian.indexproc import JobSink
    from rebuilder.debian.watch import Watcher, fetch_release

    async with aiohttp.ClientSession() as session:
        watcher = Watcher((repo,), None, session)
        try:
            verified = await fetch_release(session, repo)
            # the same freshness and rollback checks as the watcher's
            state = await store.release_state(repo.name)
            check_release(verified.release, repo.suite, datetime.now(UTC),
                          datetime.fromisoformat(state["date"]) if state and state["date"]
                          else None, verified.ref.uri)
            only = (job.source, job.version, job.architecture)
            jobs = (await watcher.read_jobs(repo, verified, JobSink(only=only))).new
        except (BadDataError, UnreachableError) as e:
            print(f"could not read repository {repo.name} ({e}); comparing with the buildinfo only")
            return job
        finally:
            watcher.stop()
    for found in jobs:
        if (found.source, found.version, found.architecture) == (
                job.source, job.version, job.architecture):
            return replace(found, buildinfo_url=job.buildinfo_url)
    print(f"repository {repo.name} does not list {job.source} {job.version} {job.architecture}")
    return job


async def _rebuild(args: argparse.Namespace, config: Config) -> int:
    from rebuilder.daemon import make_builder
    from rebuilder.queue import JobRunner

    url, data = await _read_buildinfo(args.buildinfo)
    source, version, arch = _parse_buildinfo_identity(data)
    key = load_private_key(config.node.signing_key)
    for d in (config.node.builds_dir, config.node.reports_dir, config.node.logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    store = await Store.open(config.node.db_path)
    try:
        known = await store.find_job(source, version, arch)
        if known is not None and known.state == "running":
            raise CliError(f"job {known.id} for {source} {version} {arch} is running in the daemon")
        given = url  # an http(s) URL the operator named: used as given, even for a known job
        if known is not None:
            job_id = known.id
            if given is not None:
                await store.set_buildinfo_url(job_id, given, pinned=True)
            print(f"job {job_id} ({known.repository}): comparing with "
                  f"{len(known.published)} published binaries")
        else:
            repo = config.repository(args.repository) if args.repository else (
                config.repositories[0] if config.repositories else None)
            if url is None:
                # The pipeline fetches every input over HTTP(S) and checks it; a local file
                # names the package, the repository's template says where to fetch it.
                if repo is None:
                    raise CliError("a local buildinfo needs a configured [[repository]] to fetch"
                                   " it and its sources from; or pass an http(s) URL")
                url = repo.buildinfo_for(source, version, arch)
                print(f"fetching the buildinfo from {url}")
            candidate = BuildJob(source, version, arch, repo.name if repo else "cli", url, {},
                                 source_version=_binnmu_source_version(data, version))
            if repo is not None:
                candidate = await _from_repository(repo, candidate, store)
            row = await store.ensure_job(candidate)
            job_id = row.id
            if given is not None:
                await store.set_buildinfo_url(job_id, given, pinned=True)
            print(f"job {job_id}: {source} {version} {arch}; comparing with "
                  f"{len(row.published)} published binaries")
        claimed = await store.claim_job(job_id)
        assert claimed is not None
        try:
            async with aiohttp.ClientSession() as session:
                runner = JobRunner(config, store, key, make_builder(config, session))
                result = await runner.run(claimed)
        except BaseException:
            # nothing was signed (a full disk, Ctrl-C): give the job back to the daemon's queue
            with contextlib.suppress(sqlite3.Error):
                await store.requeue_running([claimed.id])
            raise
    finally:
        await store.close()
    print(f"{source} {version} {arch}: {result.verdict}"
          + (f" ({result.failure})" if result.failure else ""))
    print(f"attestation {result.envelope_sha256} (seq {result.seq}); "
          f"build {config.node.public_url}/v1/builds/{result.job_id}")
    if result.verdict == "tampered":
        print("TAMPERED: this node rebuilt what the buildinfo describes, but the repository"
              " serves other bytes; do not install them; report to the repository's maintainers")
    return {"reproduced": EXIT_OK, "unreproducible": EXIT_MISMATCH,
            "tampered": EXIT_TAMPERED}.get(result.verdict, EXIT_FAILED)


def cmd_rebuild(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_rebuild(args, config))


async def _status(config: Config) -> dict[str, Any]:
    from rebuilder.recovery import DiskGuard, MiB

    disk = DiskGuard(config.node.state_dir, config.node.min_free_mb * MiB).status()
    store = await Store.open(config.node.db_path, readonly=True)
    try:
        counts = await store.counts()
        running = await store.running_jobs()
        recent = await store.recent_builds(10)
        revocations = await store.recent_revocations(10)
        verdicts = await store.build_verdicts()
        # each latest build's files that were not reproduced, with the three digests
        files = {r["id"]: [
            {"name": o["name"], "verdict": o["verdict"], "published": o["repository"],
             "buildinfo": o["buildinfo"], "rebuilt": o["rebuilt"]}
            for o in await store.outputs(r["id"]) if o["verdict"] != "reproduced"
        ] for r in recent}
    finally:
        await store.close()
    return {
        "node": config.node.id,
        "queue": counts["queued"],
        "running": [{"job": j.id, "package": f"{j.source} {j.version} {j.arch}",
                     "attempt": j.attempts, "started_at": j.started_at} for j in running],
        "done": counts["done"],
        "failed": counts["failed"],
        "outbox_backlog": counts["backlog"],
        "attestations": counts["last_seq"],
        "verdicts": {v: verdicts.get(v, 0) for v in JOB_VERDICTS},
        "disk": disk.to_dict(),
        "latest": [{"job": r["job_id"], "package": f"{r['source']} {r['version']} {r['arch']}",
                    "verdict": r["verdict"], "finished_at": r["finished_at"],
                    "failure": r["failure"], "envelope_sha256": r["envelope_sha256"],
                    "revoked_by": r["revoked_by"], "files": files[r["id"]]} for r in recent],
        "revocations": [_revocation_view(r.envelope_sha256, r.envelope) for r in revocations],
        "limits": limits.read(config.node.state_dir),
    }


def _print_limits(record: dict[str, Any] | str) -> None:
    if isinstance(record, str):
        print(f"build limits: {record}")
        return
    advisory = [e["limit"] for e in record["limits"] if not e["enforced"]]
    print(f"build limits (checked {record.get('checked_at', '?')}): "
          + (f"ADVISORY ONLY: {', '.join(advisory)}" if advisory else "all enforced"))
    for e in record["limits"]:
        state = "enforced" if e["enforced"] else "advisory"
        print(f"  {e['limit']:<7} {e.get('value', ''):<16} {state:<9} {e['mechanism']}")


def _revocation_view(digest: str, envelope: bytes) -> dict[str, Any]:
    """What a stored revocation says: which envelope, why, when (from its signed payload)."""
    try:
        st = parse_statement(Envelope.from_bytes(envelope).payload)
    except (BadDataError, ValueError) as e:
        return {"envelope_sha256": digest, "revokes": None, "reason": f"(unreadable: {e})",
                "revoked_on": None}
    if not isinstance(st, RevocationStatement):
        return {"envelope_sha256": digest, "revokes": None, "reason": "(not a revocation)",
                "revoked_on": None}
    return {"envelope_sha256": digest, "revokes": st.revoked, "reason": st.reason,
            "revoked_on": st.revoked_on.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    s = asyncio.run(_status(config))
    if args.json:
        print(json.dumps(s, indent=2))
        return EXIT_OK
    print(f"node {s['node']}: {s['queue']} queued, {len(s['running'])} running, "
          f"{s['done']} done, {s['failed']} failed")
    print(f"outbox backlog: {s['outbox_backlog']} unpublished of {s['attestations']} attestations")
    _print_limits(s["limits"])
    print("builds: " + ", ".join(f"{n} {v}" for v, n in s["verdicts"].items()))
    disk = s["disk"]
    print(f"state filesystem: {disk['free_bytes'] / 2**20:.0f} MiB free, floor"
          f" {disk['min_free_bytes'] / 2**20:.0f} MiB"
          + (f"; NOT TAKING JOBS: {disk['reason']}" if disk["paused"] else ""))
    for r in s["running"]:
        print(f"  running  job {r['job']} {r['package']} attempt {r['attempt']} "
              f"since {r['started_at']}")
    if s["latest"]:
        print("latest results (envelope sha256 is what `rebuilder revoke` takes):")
    for b in s["latest"]:
        extra = f" ({b['failure'][:100]})" if b["failure"] else ""
        print(f"  {b['finished_at']}  job {b['job']} {b['package']}: {b['verdict']}{extra}")
        if b["envelope_sha256"]:
            revoked = " REVOKED" if b["revoked_by"] else ""
            print(f"      envelope {b['envelope_sha256']}{revoked}")
        for f in b["files"]:
            print(f"      {f['name']}: {f['verdict']}  published {f['published']}"
                  f"  buildinfo {f['buildinfo'] or '-'}  rebuilt {f['rebuilt'] or '-'}")
        if b["verdict"] == "tampered":
            print("      TAMPERED: the repository serves bytes that no rebuild produced;"
                  " do not install; report to the repository's maintainers")
    if s["revocations"]:
        print("revocations:")
    for v in s["revocations"]:
        print(f"  {v['revoked_on']}  revoked {v['revokes']}: {v['reason']}")
    return EXIT_OK


async def _revoke(args: argparse.Namespace, config: Config) -> int:
    from rebuilder.publish import flush_once
    from rebuilder.queue import node_identity

    target = args.envelope_sha256.lower()
    if not _HEX64.fullmatch(target):
        raise CliError("DIGEST must be 64 hex characters: the statement_sha256 or"
                       " envelope_sha256 of GET /v1/builds/<id>")
    if not args.reason.strip() or len(args.reason) > 4000:
        raise CliError("--reason must be non-empty text of at most 4000 characters")
    key = load_private_key(config.node.signing_key)
    store = await Store.open(config.node.db_path)
    try:
        row = await store.attestation(target)
        if row is None:
            raise CliError(f"this node stored no attestation {target}")
        if row.kind == "revocation":
            raise CliError(f"{target} is itself a revocation; revocations cannot be revoked")
        # A revocation (v2) names the signed statement, whatever envelope carries it.
        statement_sha256 = Envelope.from_bytes(row.envelope).payload_digest()
        if await store.revocations_of([statement_sha256, row.envelope_sha256]):
            raise CliError(f"{target} is already revoked")
        pkg = await store.attestation_package(target)
        statement = revocation_statement(statement_sha256, args.reason, node_identity(config),
                                         datetime.now(UTC))
        envelope = sign_statement(statement.to_bytes(), key)
        seq = await store.add_attestation(NewAttestation(
            envelope_sha256=envelope.digest(), envelope=envelope.to_bytes(), kind="revocation",
            source=pkg[0] if pkg else None, version=pkg[1] if pkg else None,
            arch=pkg[2] if pkg else None, subjects=(), revokes=statement_sha256,
        ))
        print(f"revoked {target}: revocation {envelope.digest()} stored (seq {seq})")
        if args.publish_now:
            try:
                sent = await flush_once(config, store)
                print(f"published {sent} outbox row(s) to {config.mqtt.host}:{config.mqtt.port}")
            except Exception as e:  # the revocation is stored; the daemon will publish it
                print(f"could not publish now ({e}); the running daemon publishes it later")
        else:
            print("the running daemon publishes it from the outbox")
    finally:
        await store.close()
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_revoke(args, config))


async def _requeue(args: argparse.Namespace, config: Config) -> int:
    if not args.job_ids and not args.all_failed:
        raise CliError("name job ids (see `rebuilder status`) or pass --all-failed")
    store = await Store.open(config.node.db_path)
    try:
        done = await store.requeue_finished(args.job_ids, all_failed=args.all_failed)
    finally:
        await store.close()
    skipped = sorted(set(args.job_ids) - set(done))
    print(f"re-queued {len(done)} job(s){': ' + ' '.join(map(str, done)) if done else ''}")
    if skipped:
        print(f"not re-queued (unknown, queued or running): {' '.join(map(str, skipped))}")
    print("the running daemon picks them up within seconds; each gets a new attempt and a new"
          " attestation")
    return EXIT_OK


def cmd_requeue(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_requeue(args, config))


def cmd_keyinfo(args: argparse.Namespace, config: Config) -> int:
    pub = load_private_key(config.node.signing_key).public_key()
    if args.json:
        from rebuilder.api import node_document

        print(json.dumps(node_document(config, public_key_pem(pub), keyid(pub)), indent=2))
        return EXIT_OK
    print(f"id:       {config.node.id}")
    print(f"operator: {config.node.operator}")
    print(f"url:      {config.node.public_url}")
    print(f"keyid:    {keyid(pub)}")
    print(public_key_pem(pub), end="")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rebuilder", description="repro-quorum rebuilder node")
    p.add_argument("--version", action="version", version=f"repro-quorum {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("init", help="create a node directory: config, signing key, database")
    i.add_argument("--dir", required=True)
    i.add_argument("--id", required=True)
    i.add_argument("--operator", required=True)
    i.add_argument("--public-url", required=True)
    i.add_argument("--listen", default="127.0.0.1:8401")
    i.add_argument("--mqtt-host", default="127.0.0.1")
    i.add_argument("--mqtt-port", type=int, default=1883)
    i.add_argument("--no-mqtt", action="store_true", help="write [mqtt] enabled = false")
    i.add_argument("--repository-url", action="append", help="APT repository root; repeatable")
    i.add_argument("--suite", action="append", help="suite of the matching --repository-url")
    i.add_argument("--repository-name", action="append")
    i.add_argument("--signed-by", action="append", metavar="KEYRING",
                   help="keyring the matching repository's InRelease must verify under")
    i.add_argument("--trusted", action="store_true",
                   help="repositories without --signed-by are unsigned: trusted = true")
    i.add_argument("--architectures", default="amd64,all")
    i.add_argument("--poll-interval", type=int, default=300)
    i.add_argument("--environment", choices=["host", "mmdebstrap"], default="host")
    i.add_argument("--parallel", type=int, default=1)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--config", required=True, help="the node's config.toml")
        return s

    r = with_config("run", "run the node until SIGTERM/SIGINT")
    r.add_argument("--grace", type=float, default=60.0,
                   help="seconds a running build gets to finish on shutdown before re-queueing")
    rb = with_config("rebuild", "rebuild one buildinfo in the foreground; sign, store, queue")
    rb.add_argument("--buildinfo", required=True, help="path or http(s) URL")
    rb.add_argument("--repository", help="repository name to file the job under")
    st = with_config("status", "queue, running builds, latest results, outbox backlog")
    st.add_argument("--json", action="store_true")
    rv = with_config("revoke", "sign and store a revocation of one of this node's attestations")
    rv.add_argument("envelope_sha256", metavar="DIGEST",
                    help="statement_sha256 (or envelope_sha256) of the attestation, as"
                    " GET /v1/builds/<id> shows them")
    rv.add_argument("--reason", required=True)
    rv.add_argument("--publish-now", action="store_true",
                    help="publish the outbox to the broker now instead of leaving it to the daemon")
    rq = with_config("requeue", "queue finished jobs again (a new attempt each)")
    rq.add_argument("job_ids", metavar="JOB_ID", type=int, nargs="*")
    rq.add_argument("--all-failed", action="store_true", help="every failed job")
    sy = with_config("sync", "read every repository once (verify, parse, queue); never builds")
    sy.add_argument("--once", action="store_true", required=True,
                    help="one round per repository, then exit (rebuilder run polls for ever)")
    sy.add_argument("--dry-run", action="store_true", help="queue nothing, record nothing")
    sy.add_argument("--show", type=int, default=20, metavar="N",
                    help="list at most N new and N known source versions per repository")
    k = with_config("keyinfo", "print this node's identity and public key")
    k.add_argument("--json", action="store_true")
    return p


def cmd_sync(args: argparse.Namespace, config: Config) -> int:
    from rebuilder.sync import sync_once

    return asyncio.run(sync_once(config, dry_run=args.dry_run, show=max(0, args.show)))


COMMANDS = {"run": cmd_run, "rebuild": cmd_rebuild, "status": cmd_status,
            "revoke": cmd_revoke, "requeue": cmd_requeue, "keyinfo": cmd_keyinfo,
            "sync": cmd_sync}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    config: Config | None = None
    try:
        if args.command == "init":
            return cmd_init(args)
        config = load_config(Path(args.config))
        return COMMANDS[args.command](args, config)
    except (CliError, ConfigError, SchemaError) as e:
        print(f"rebuilder {args.command}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (BadDataError, UnreachableError, VerifierError) as e:
        print(f"rebuilder {args.command}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (sqlite3.Error, OSError) as e:  # a full disk, an unreadable state directory, a port
        from rebuilder.recovery import describe_storage_error, is_disk_full

        state_dir = config.node.state_dir if config is not None else (
            Path(args.dir) if args.command == "init" else None)
        # a file or directory the command needs says which and what to do; a database error or
        # a full disk says so
        message = (os_error_message(e) if isinstance(e, OSError) and not is_disk_full(e)
                   and e.filename else describe_storage_error(e, state_dir))
        print(f"rebuilder {args.command}: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _whoami() -> str:
    import os
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def os_error_message(e: OSError) -> str:
    """``cannot write /x/y: Permission denied`` plus what to do about the usual causes."""
    where = f" {e.filename}" if e.filename else ""
    what = e.strerror or str(e)
    text = f"cannot use{where}: {what}"
    if isinstance(e, PermissionError):
        text += (
            f" (running as {_whoami()}: run the command as the node's user, and create "
            "its directory for that user first, e.g. `install -d -o <user> -g <user> -m 0750 "
            "<dir>`)"
        )
    elif isinstance(e, FileNotFoundError):
        text += " (check the path, or create the missing directory)"
    return text


if __name__ == "__main__":
    sys.exit(main())
