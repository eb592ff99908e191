"""Which build limits this node's kernel holds, and which are only advisory (ARCHITECTURE §2.5).

``announce`` runs once at daemon start: it asks the sandbox what the machine gives
(``sandbox.enforcement()``: a delegated cgroup for memory and processes, a mountable bounded
filesystem for the build tree), logs one line per limit (a warning for each advisory one),
and writes ``<state_dir>/sandbox-limits.json`` for ``rebuilder status``. ``/metrics`` shows
the same as ``rq_sandbox_limit_enforced{limit}``::

    entries = announce(config)      # in the daemon
    read(config.node.state_dir)     # in `rebuilder status`, another process
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rebuilder import sandbox
from rebuilder.config import Config

__all__ = ["FILE_NAME", "announce", "check", "current", "read"]

log = logging.getLogger("rebuilder.limits")
FILE_NAME = "sandbox-limits.json"
MAX_FILE_BYTES = 64 * 1024
_current: list[dict[str, Any]] | None = None


def check(config: Config) -> list[dict[str, Any]]:
    """One entry per limit: ``limit``, ``value`` (as configured), ``enforced``, ``mechanism``."""
    b = config.build
    values = {
        "memory": f"{b.max_memory_mb} MiB",
        "pids": f"{b.max_processes} processes",
        "disk": f"{b.max_disk_mb} MiB",
        "time": f"{b.timeout} s",
    }
    return [{**e.to_dict(), "value": values[e.limit]} for e in sandbox.enforcement()]


def announce(config: Config) -> list[dict[str, Any]]:
    """Check, log and record the node's limits; the daemon calls it before taking jobs."""
    global _current
    entries = check(config)
    for e in entries:
        if e["enforced"]:
            log.info("build limit %s (%s) enforced: %s",
                     e["limit"], e["value"], e["mechanism"])
        else:
            log.warning("build limit %s (%s) is ONLY ADVISORY on this node: %s",
                        e["limit"], e["value"], e["mechanism"])
    _current = entries
    doc = {"checked_at": datetime.now(UTC).isoformat(timespec="seconds"), "pid": os.getpid(),
           "limits": entries}
    path = config.node.state_dir / FILE_NAME
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        log.warning("could not record the build limits in %s: %s", path, e.strerror)
    return entries


def current() -> list[dict[str, Any]] | None:
    """What ``announce`` found in this process (None before it ran)."""
    return _current


def read(state_dir: Path) -> dict[str, Any] | str:
    """The running node's record, or a sentence saying why there is none."""
    path = state_dir / FILE_NAME
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return "unknown: the node has not started since this was added"
    except OSError as e:
        return f"unknown: cannot read {path}: {e.strerror}"
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError("too large")
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("limits"), list):
            raise ValueError("no limits list")
        for entry in doc["limits"]:
            if not isinstance(entry, dict) or not {"limit", "enforced", "mechanism"} <= set(entry):
                raise ValueError("bad entry")
    except ValueError as bad:
        return f"unknown: {path} is not a limits record ({bad})"
    return doc
