"""The APT hook's record of every decision: an append-only JSON-lines file, and syslog.

Each line is one hook run (docs/verifier.md, "Decision log")::

    {"time": "2026-12-04T18:00:00Z", "user": "alice", "uid": 0, "mode": "enforce",
     "outcome": "accepted" | "refused" | "would-refuse" | "breakglass",
     "breakglass_reason": "..." (breakglass only), "policy": "/etc/repro-quorum/policy.toml",
     "packages": [{"path", "name", "version", "architecture", "sha256", "checked": bool,
                   "accepted": bool | null, "agreeing": ["rb-alpha", ...], "reasons": [...]}]}

Lines are written with ``O_APPEND`` under an exclusive ``flock``, so concurrent APT runs never
interleave; the file is created mode 0640 and never rewritten. A breakglass run is also sent to
syslog (the journal on systemd machines) at warning level with its reason and packages.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import logging.handlers
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from verifier.errors import ConfigError

__all__ = ["MAX_LINE_BYTES", "append_record", "invoking_user", "read_records", "to_syslog"]

MAX_LINE_BYTES = 4 * 1024 * 1024
MAX_LOG_READ = 512 * 1024 * 1024
_SYSLOG = "/dev/log"


def invoking_user() -> tuple[str, int]:
    """Who ran APT: sudo's caller when there is one, else the process owner."""
    uid = os.getuid()
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        return sudo_user, uid
    try:
        return pwd.getpwuid(uid).pw_name, uid
    except KeyError:
        return str(uid), uid


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one line; ``ConfigError`` (naming the file) if it cannot be written."""
    line = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
    data = line.encode()
    if len(data) > MAX_LINE_BYTES:
        raise ConfigError(f"decision record of {len(data)} bytes is over {MAX_LINE_BYTES}")
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
    except OSError as e:
        raise ConfigError(f"cannot append to the decision log {path}: {e.strerror or e}") from e


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every well-formed line (others are skipped: a torn last line after a crash)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_LOG_READ)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(f"cannot read the decision log {path}: {e.strerror or e}") from e
    for raw in data.splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(raw)
            if isinstance(rec, dict):
                yield rec


def to_syslog(message: str) -> bool:
    """Send one warning to syslog / the journal; False when the machine has no syslog socket."""
    if not os.path.exists(_SYSLOG):
        return False
    handler = logging.handlers.SysLogHandler(address=_SYSLOG,
                                             facility=logging.handlers.SysLogHandler.LOG_AUTH)
    handler.ident = "repro-quorum-verifier: "
    try:
        handler.emit(logging.makeLogRecord({"msg": message, "levelno": logging.WARNING,
                                            "levelname": "WARNING"}))
    finally:
        handler.close()
    return True
