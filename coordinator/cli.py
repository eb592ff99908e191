"""``coordinator`` command line: ``run`` the service, ``status`` of its database.

    coordinator run --config /etc/repro-quorum/coordinator.toml
    coordinator status --config /etc/repro-quorum/coordinator.toml [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from coordinator.app import create_app
from coordinator.config import CoordinatorConfig, load_config
from coordinator.store import rfc3339
from rebuilder import _stopsignals
from verifier.errors import ConfigError


async def serve(config: CoordinatorConfig) -> None:
    """Run until SIGINT/SIGTERM."""
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.listen_host, config.listen_port)
    await site.start()
    logging.getLogger("coordinator").info(
        "coordinator listening on %s:%d (%s), %d rebuilders registered",
        config.listen_host,
        config.listen_port,
        config.public_url,
        len(config.rebuilders),
    )
    stop = asyncio.Event()
    # a stop signal since the process started (coordinator/__main__.py) stops it now; one during
    # the cleanup is absorbed: SIGTERM means exit 0 whenever it comes
    detach = _stopsignals.attach(asyncio.get_running_loop(), stop.set)
    try:
        await stop.wait()
    finally:
        try:
            await runner.cleanup()
        finally:
            detach()


def status(config: CoordinatorConfig) -> dict[str, Any]:
    """Counts, rebuilders online and disagreements, read from the database (read-only)."""
    if not config.database.exists():
        raise ConfigError(f"database {config.database} does not exist yet: has `run` started?")
    uri = f"file:{config.database}?mode=ro"
    now = time.time()
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        envelopes = db.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0]
        disagreements = db.execute("SELECT COUNT(*) FROM disagreements").fetchone()[0]
        states = {
            r[0]: r[1:]
            for r in db.execute("SELECT id, last_seen, state, last_error FROM rebuilders")
        }
        counts: dict[str, dict[str, int]] = {}
        for rebuilder, verdict, n in db.execute("SELECT rebuilder, verdict, n FROM counts"):
            counts.setdefault(rebuilder, {})[verdict] = n
        recent = db.execute(
            "SELECT source, version, artifact, digests FROM disagreements ORDER BY id DESC LIMIT 10"
        ).fetchall()
    rebuilders = []
    for rb in config.rebuilders:
        last_seen, state, error = states.get(rb.id, (None, None, None))
        online = (
            state == "online" and last_seen is not None and now - last_seen <= config.online_after
        )
        rebuilders.append(
            {
                "id": rb.id,
                "operator": rb.operator,
                "online": online,
                "last_seen": rfc3339(last_seen),
                "counts": counts.get(rb.id, {}),
                "last_error": error,
            }
        )
    return {
        "envelopes": envelopes,
        "disagreements": disagreements,
        "rebuilders_online": sum(r["online"] for r in rebuilders),
        "rebuilders": rebuilders,
        "recent_disagreements": [
            {"package": f"{s} {v}", "artifact": a, "digests": json.loads(d)}
            for s, v, a, d in recent
        ],
    }


def _print_status(s: dict[str, Any]) -> None:
    print(f"envelopes stored: {s['envelopes']}")
    print(f"rebuilders online: {s['rebuilders_online']} of {len(s['rebuilders'])}")
    for r in s["rebuilders"]:
        c = r["counts"]
        print(
            f"  {r['id']:<20} {r['operator']:<24} {'online' if r['online'] else 'OFFLINE':<8}"
            f" last seen {r['last_seen'] or 'never'}"
            f"  reproduced {c.get('reproduced', 0)}"
            f" unreproducible {c.get('unreproducible', 0) + c.get('mismatch', 0)}"
            f" tampered {c.get('tampered', 0)} failed {c.get('failed', 0)}"
            + (f"  last catch-up error: {r['last_error']}" if r["last_error"] else "")
        )
    print(f"disagreements: {s['disagreements']}")
    for d in s["recent_disagreements"]:
        digests = ", ".join(f"{k}={v[:12]}" for k, v in d["digests"].items())
        print(f"  {d['package']} {d['artifact']}: {digests}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coordinator",
        description="repro-quorum coordinator: verified aggregation of rebuilder attestations,"
        " disagreement detection, query API and dashboard.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the coordinator service")
    run_p.add_argument("--config", type=Path, required=True)
    status_p = sub.add_parser("status", help="show counts, rebuilders online, disagreements")
    status_p.add_argument("--config", type=Path, required=True)
    status_p.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config)
        if args.command == "run":
            installed = _stopsignals.catch()  # done by coordinator/__main__.py, unless in-process
            try:
                asyncio.run(serve(config))
            finally:
                if installed:
                    _stopsignals.release()
            return 0
        s = status(config)
    except ConfigError as e:
        print(f"coordinator: configuration error: {e}", file=sys.stderr)
        print("  check the file against docs/configuration.md", file=sys.stderr)
        return 2
    except sqlite3.Error as e:
        print(f"coordinator: cannot read the database: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        _print_status(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
