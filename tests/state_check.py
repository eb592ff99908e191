"""What a node's state directory may hold: every file is explained by the config, the database
or a job row. ``unexplained(state_dir)`` lists the rest (leftovers of interrupted attempts)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

_TOP = {"config.toml", "state.db", "state.db-wal", "state.db-shm", "state.db-journal", "keys",
        "cache", "builds", "logs", "reports"}
_WORK = re.compile(r"([0-9]+)-([0-9]+)")


def unexplained(state_dir: Path) -> list[str]:
    """Paths (relative to ``state_dir``) that no job or build row explains."""
    conn = sqlite3.connect(f"file:{state_dir / 'state.db'}?mode=ro", uri=True, timeout=10)
    try:
        running = {(int(r[0]), int(r[1])) for r in conn.execute(
            "SELECT id, attempts FROM jobs WHERE state = 'running'")}
        referenced = {str(r[0]) for r in conn.execute(
            "SELECT log_path FROM builds WHERE log_path IS NOT NULL"
            " UNION SELECT report_html FROM outputs WHERE report_html IS NOT NULL"
            " UNION SELECT report_txt FROM outputs WHERE report_txt IS NOT NULL")}
    finally:
        conn.close()
    found: list[str] = []
    for entry in sorted(state_dir.iterdir()):
        if entry.name not in _TOP:
            found.append(entry.name)
    builds = state_dir / "builds"
    if builds.is_dir():
        for entry in sorted(builds.iterdir()):
            m = _WORK.fullmatch(entry.name)
            if not m or (int(m.group(1)), int(m.group(2))) not in running:
                found.append(f"builds/{entry.name}")
    for d in ("logs", "reports"):
        if (state_dir / d).is_dir():
            for entry in sorted((state_dir / d).iterdir()):
                rel = f"{d}/{entry.name}"
                if rel not in referenced:
                    found.append(rel)
    return found
