"""The verifier's memory of logs: per rebuilder key, the largest checkpoint it has verified.

A JSON file, read and replaced under an exclusive ``flock`` of ``<file>.lock`` so concurrent
apt runs see each other's updates. Default location: ``$REPRO_QUORUM_LOG_STATE``, else
``/var/lib/repro-quorum/verifier-logs.json`` for root, else
``$XDG_STATE_HOME/repro-quorum/verifier-logs.json`` (``~/.local/state/...``); a policy's
``[log] state_file`` overrides it::

    with LogState.locked(path) as state:
        old = state.compare(keyid, checkpoint)   # SplitView when it contradicts memory
        ...  # online: prove consistency with `old` from the log's tiles (verifier.tlog.online)
        state.remember(keyid, checkpoint, note_bytes)
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verifier.errors import BadDataError
from verifier.tlog.checkpoint import Checkpoint

__all__ = ["LogState", "Remembered", "SplitView", "default_state_path"]

MAX_STATE_BYTES = 16 * 1024 * 1024


class SplitView(BadDataError):
    """A checkpoint contradicts one this verifier verified before for the same log."""

    def __init__(self, reason: str) -> None:
        super().__init__("split view", reason)


def default_state_path() -> Path:
    env = os.environ.get("REPRO_QUORUM_LOG_STATE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/repro-quorum/verifier-logs.json")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "repro-quorum" / "verifier-logs.json"


@dataclass(frozen=True)
class Remembered:
    origin: str
    size: int
    root: bytes


class LogState:
    def __init__(self, logs: dict[str, dict[str, Any]]) -> None:
        self.logs = logs
        self.changed = False

    @classmethod
    @contextlib.contextmanager
    def locked(cls, path: Path) -> Iterator[LogState]:
        """Read under an exclusive lock; written back (atomically) when changed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            state = cls(_read(path))
            yield state
            if state.changed:
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"logs": state.logs}, sort_keys=True, indent=1))
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                tmp.replace(path)

    def compare(self, log_key: str, cp: Checkpoint) -> Remembered | None:
        """What ``cp`` must be proved consistent with before it counts: the remembered
        checkpoint of ``log_key`` (a rebuilder's keyid) when its size differs, None when ``cp``
        is the remembered one or the first of its log; ``SplitView`` for another origin or
        another root at the same size."""
        old = self.logs.get(log_key)
        if old is None:
            return None
        if old["origin"] != cp.origin:
            raise SplitView(f"the rebuilder's log was {old['origin']!r}, this checkpoint "
                            f"names {cp.origin!r}")
        try:
            root = base64.b64decode(old["root"], validate=True)
        except ValueError as e:  # binascii.Error is one
            raise BadDataError("log state", f"root of {log_key} is not base64") from e
        if cp.size == old["size"]:
            if root != cp.root:
                raise SplitView(f"two different roots for size {cp.size} of {cp.origin}")
            return None
        return Remembered(old["origin"], old["size"], root)

    def remember(self, log_key: str, cp: Checkpoint, note: bytes) -> None:
        """Keep ``cp`` as the largest verified checkpoint of ``log_key`` unless a larger one is
        remembered; call only once ``cp`` is known consistent with what was (``compare``)."""
        old = self.logs.get(log_key)
        if old is not None and old["size"] >= cp.size:
            return
        self.logs[log_key] = {"origin": cp.origin, "size": cp.size,
                              "root": base64.b64encode(cp.root).decode(),
                              "checkpoint": note.decode()}
        self.changed = True

    def observe(self, log_key: str, cp: Checkpoint, note: bytes) -> None:
        """Offline (no tiles to prove consistency from): remember ``cp`` when it is the first
        of its log; a smaller one is a ``SplitView``; a larger one counts on its witnesses'
        cosignatures but is not remembered, so the next online check proves it from here."""
        old = self.compare(log_key, cp)
        if old is None:
            self.remember(log_key, cp, note)
        elif cp.size < old.size:
            raise SplitView(f"checkpoint of size {cp.size} of {cp.origin} is smaller than "
                            f"size {old.size} verified before (offline: no consistency proof "
                            "can be fetched)")


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return {}
    if len(data) > MAX_STATE_BYTES:
        raise BadDataError("log state", f"{path} is over {MAX_STATE_BYTES} bytes")
    try:
        doc = json.loads(data)
        logs = doc["logs"]
        if not isinstance(logs, dict):
            raise TypeError
        for v in logs.values():
            if not (isinstance(v, dict) and isinstance(v.get("size"), int)
                    and isinstance(v.get("root"), str) and isinstance(v.get("origin"), str)):
                raise TypeError
    except (ValueError, KeyError, TypeError) as e:
        raise BadDataError("log state", f"{path} is not a verifier log state file") from e
    return logs
