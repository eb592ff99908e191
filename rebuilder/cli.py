"""The ``rebuilder`` command: init, run, rebuild, status, revoke, requeue, keyinfo.

Environment and argv are read here only; everything below takes a ``Config``.

Exit codes: 0 success (``rebuild``: reproduced), 1 ``rebuild``: mismatch, 2 ``rebuild``: the
build failed, 3 the command could not do its job (bad config, existing key, unreachable input).
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

from rebuilder import __version__
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
from verifier.errors import BadDataError, UnreachableError, VerifierError
from verifier.keys import (
    generate_private_key,
    keyid,
    load_private_key,
    public_key_pem,
    save_private_key,
)

__all__ = ["main"]

EXIT_OK, EXIT_MISMATCH, EXIT_FAILED, EXIT_ERROR = 0, 1, 2, 3
MAX_BUILDINFO_BYTES = 4 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class CliError(Exception):
    """A problem the operator can fix; printed without a traceback."""


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
    from rebuilder.daemon import DaemonError, run_daemon

    try:
        asyncio.run(run_daemon(config, grace=args.grace))
    except DaemonError as e:
        print(f"rebuilder run: {e}; see the log above", file=sys.stderr)
        return EXIT_MISMATCH  # 1: systemd's Restart=on-failure restarts the node
    return EXIT_OK


def _parse_buildinfo_identity(data: bytes) -> tuple[str, str, str]:
    try:
        para = deb822.Deb822(data.decode("utf-8").splitlines())
    except (UnicodeDecodeError, ValueError) as e:
        raise BadDataError("buildinfo", f"cannot be parsed: {e}") from e
    source = (para.get("Source") or "").split(" ")[0].strip()
    version = (para.get("Version") or "").strip()
    archs = (para.get("Architecture") or "").split()
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,99}", source):
        raise BadDataError("buildinfo", f"Source {source!r} is missing or malformed")
    if not re.fullmatch(r"(?:[0-9]{1,9}:)?[A-Za-z0-9][A-Za-z0-9.+~-]{0,127}", version):
        raise BadDataError("buildinfo", f"Version {version!r} is missing or malformed")
    binary_archs = [a for a in archs if a != "source"]
    if not binary_archs:
        raise BadDataError("buildinfo", "Architecture names no binary architecture")
    arch = next((a for a in binary_archs if a != "all"), "all")
    return source, version, arch


async def _read_buildinfo(where: str) -> tuple[str | None, bytes]:
    """The buildinfo's URL (None for a local file) and its bytes."""
    if urlsplit(where).scheme in ("http", "https"):
        from rebuilder.watch import fetch_bounded

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


async def _from_repository(repo: RepositoryConfig, job: BuildJob) -> BuildJob:
    """The watcher's job for the same triple (published digests, .dsc), when the repository
    lists it; otherwise ``job`` as given (compared with the buildinfo only)."""
    from rebuilder.indexes import group_jobs
    from rebuilder.watch import Watcher

    async with aiohttp.ClientSession() as session:
        try:
            binaries, sources = await Watcher((repo,), None, session).read_indexes(repo)
        except (BadDataError, UnreachableError) as e:
            print(f"could not read repository {repo.name} ({e}); comparing with the buildinfo only")
            return job
    for found in group_jobs(binaries, repo, sources):
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
        if known is not None and (url is None or url == known.buildinfo_url):
            job_id = known.id
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
            candidate = BuildJob(source, version, arch, repo.name if repo else "cli", url, {})
            if repo is not None:
                candidate = await _from_repository(repo, candidate)
            row = await store.ensure_job(candidate)
            job_id = row.id
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
    return {"reproduced": EXIT_OK, "mismatch": EXIT_MISMATCH}.get(result.verdict, EXIT_FAILED)


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
        "disk": disk.to_dict(),
        "latest": [{"job": r["job_id"], "package": f"{r['source']} {r['version']} {r['arch']}",
                    "verdict": r["verdict"], "finished_at": r["finished_at"],
                    "failure": r["failure"]} for r in recent],
    }


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    s = asyncio.run(_status(config))
    if args.json:
        print(json.dumps(s, indent=2))
        return EXIT_OK
    print(f"node {s['node']}: {s['queue']} queued, {len(s['running'])} running, "
          f"{s['done']} done, {s['failed']} failed")
    print(f"outbox backlog: {s['outbox_backlog']} unpublished of {s['attestations']} attestations")
    disk = s["disk"]
    print(f"state filesystem: {disk['free_bytes'] / 2**20:.0f} MiB free, floor"
          f" {disk['min_free_bytes'] / 2**20:.0f} MiB"
          + (f"; NOT TAKING JOBS: {disk['reason']}" if disk["paused"] else ""))
    for r in s["running"]:
        print(f"  running  job {r['job']} {r['package']} attempt {r['attempt']} "
              f"since {r['started_at']}")
    if s["latest"]:
        print("latest results:")
    for b in s["latest"]:
        extra = f" ({b['failure'][:100]})" if b["failure"] else ""
        print(f"  {b['finished_at']}  job {b['job']} {b['package']}: {b['verdict']}{extra}")
    return EXIT_OK


async def _revoke(args: argparse.Namespace, config: Config) -> int:
    from rebuilder.publish import flush_once
    from rebuilder.queue import node_identity

    target = args.envelope_sha256.lower()
    if not _HEX64.fullmatch(target):
        raise CliError("ENVELOPE_SHA256 must be 64 hex characters (see GET /v1/builds/<id>)")
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
        if await store.revocations_of([target]):
            raise CliError(f"{target} is already revoked")
        pkg = await store.attestation_package(target)
        statement = revocation_statement(target, args.reason, node_identity(config),
                                         datetime.now(UTC))
        envelope = sign_statement(statement.to_bytes(), key)
        seq = await store.add_attestation(NewAttestation(
            envelope_sha256=envelope.digest(), envelope=envelope.to_bytes(), kind="revocation",
            source=pkg[0] if pkg else None, version=pkg[1] if pkg else None,
            arch=pkg[2] if pkg else None, subjects=(), revokes=target,
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
    rv.add_argument("envelope_sha256", metavar="ENVELOPE_SHA256")
    rv.add_argument("--reason", required=True)
    rv.add_argument("--publish-now", action="store_true",
                    help="publish the outbox to the broker now instead of leaving it to the daemon")
    rq = with_config("requeue", "queue finished jobs again (a new attempt each)")
    rq.add_argument("job_ids", metavar="JOB_ID", type=int, nargs="*")
    rq.add_argument("--all-failed", action="store_true", help="every failed job")
    k = with_config("keyinfo", "print this node's identity and public key")
    k.add_argument("--json", action="store_true")
    return p


COMMANDS = {"run": cmd_run, "rebuild": cmd_rebuild, "status": cmd_status,
            "revoke": cmd_revoke, "requeue": cmd_requeue, "keyinfo": cmd_keyinfo}


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
        from rebuilder.recovery import describe_storage_error

        state_dir = config.node.state_dir if config is not None else (
            Path(args.dir) if args.command == "init" else None)
        print(f"rebuilder {args.command}: {describe_storage_error(e, state_dir)}",
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
