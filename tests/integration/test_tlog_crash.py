"""kill -9 a process appending to the node's log and checkpointing it, at many points, and
check after every restart: one root per size, each the RFC 6962 root of the committed entries
(so no checkpoint lacks an entry that was stored, hence servable, before it), dense indexes,
and files on disk that match the latest checkpoint."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration._tlog_writer import ORIGIN
from verifier.keys import generate_private_key, load_private_key, save_private_key
from verifier.tlog.checkpoint import Checkpoint
from verifier.tlog.merkle import leaf_hash, node_hash
from verifier.tlog.note import Note, NoteVerifier
from verifier.tlog.tiles import tile_path

pytestmark = pytest.mark.slow


def _mth(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _run(directory: Path, count: int, kill_after: float | None) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration._tlog_writer", str(directory), str(count)],
        stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    assert proc.stdout is not None
    lines: list[str] = []
    started = None
    for raw in proc.stdout:
        line = raw.decode().strip()
        lines.append(line)
        if line == "ready":
            started = time.monotonic()
        if kill_after is not None and started and time.monotonic() - started > kill_after:
            proc.kill()  # SIGKILL, somewhere in an append, an integration or a file write
            break
    proc.wait(30)
    return lines


def _check(directory: Path, served: list[str], verifier: NoteVerifier) -> int:
    conn = sqlite3.connect(directory / "state.db")
    try:
        entries = conn.execute(
            "SELECT e.idx, a.envelope, a.envelope_sha256 FROM log_entries e"
            " JOIN attestations a ON a.seq = e.seq ORDER BY e.idx").fetchall()
        cps = conn.execute("SELECT size, root, note FROM log_checkpoints ORDER BY size").fetchall()
        n_att = conn.execute("SELECT COUNT(*) FROM attestations").fetchone()[0]
    finally:
        conn.close()
    assert [e[0] for e in entries] == list(range(len(entries))), "indexes must be dense"
    assert len(entries) == n_att, "every stored envelope is in the log"
    logged = {e[2]: e[0] for e in entries}
    assert set(served) <= set(logged), "an envelope committed (and servable) is not logged"
    leaves = [leaf_hash(bytes(e[1])) for e in entries]
    for size, root, note in cps:
        assert bytes(root) == _mth(leaves[:size]), f"checkpoint {size} is not the entries' root"
        n = Note.from_bytes(bytes(note))
        n.verify([verifier])
        assert Checkpoint.from_text(n.text) == Checkpoint(ORIGIN, size, bytes(root))
    return len(entries)


def test_kill_9_during_appends_and_checkpoints(tmp_path: Path) -> None:
    key = generate_private_key()
    save_private_key(key, tmp_path / "key.pem")
    verifier = NoteVerifier.ed25519(ORIGIN, load_private_key(tmp_path / "key.pem").public_key())
    rng = random.Random(16)
    served: list[str] = []
    for _ in range(8):
        lines = _run(tmp_path, 100000, kill_after=rng.uniform(0.05, 0.8))
        served += [line.split()[1] for line in lines if line.startswith("stored ")]
        _check(tmp_path, served, verifier)
    lines = _run(tmp_path, 3, kill_after=None)  # a clean run after the last kill
    assert lines[-1] == "done"
    served += [line.split()[1] for line in lines if line.startswith("stored ")]
    size = _check(tmp_path, served, verifier)  # every printed (committed) envelope is logged
    # A kill between a COMMIT and its "stored" line leaves logged envelopes we never saw.
    assert size >= len(served) > 20
    # The files match the latest checkpoint, written again on start after each kill.
    served_note = Note.from_bytes((tmp_path / "log" / "checkpoint").read_bytes())
    assert Checkpoint.from_text(served_note.text).size == size
    conn = sqlite3.connect(tmp_path / "state.db")
    leaves = [leaf_hash(bytes(r[0])) for r in conn.execute(
        "SELECT a.envelope FROM log_entries e JOIN attestations a ON a.seq = e.seq"
        " ORDER BY e.idx")]
    conn.close()
    full = size // 256
    for n in range(full):
        assert (tmp_path / "log" / tile_path(0, n)).read_bytes() == b"".join(
            leaves[n * 256:(n + 1) * 256])
    if size % 256:
        assert (tmp_path / "log" / tile_path(0, full, size % 256)).read_bytes() == b"".join(
            leaves[full * 256:])
