"""The coordinator's database: the ``Store`` interface, its typed rows, and the SQLite backend.

::

    store = await open_store(Path("coordinator.db"))
    result = await store.store_batch(accepted, now=time.time())
    for r in await store.package_results("hello", "2.10-3"):
        ...
    await store.close()

``interface.py`` says what callers may ask, ``rows.py`` what they get back, ``sqlite.py`` (with
``_write.py``, ``_read.py`` and the migrations in ``_schema.py``) how SQLite answers.
"""

from __future__ import annotations

from pathlib import Path

from coordinator.store._schema import SCHEMA_VERSION
from coordinator.store.interface import Store
from coordinator.store.rows import (
    DEFAULT_ECOSYSTEM,
    BatchResult,
    Disagreement,
    EnvelopeRef,
    FilterValues,
    LogInconsistency,
    OutputReport,
    PackageResult,
    PackageSummary,
    RebuilderResult,
    RebuilderState,
    StatusChange,
    StoredOutput,
    TamperedFile,
    Totals,
    rfc3339,
)
from coordinator.store.sqlite import SqliteStore

__all__ = [
    "DEFAULT_ECOSYSTEM",
    "SCHEMA_VERSION",
    "BatchResult",
    "Disagreement",
    "EnvelopeRef",
    "FilterValues",
    "LogInconsistency",
    "OutputReport",
    "PackageResult",
    "PackageSummary",
    "RebuilderResult",
    "RebuilderState",
    "SqliteStore",
    "StatusChange",
    "Store",
    "StoredOutput",
    "TamperedFile",
    "Totals",
    "open_store",
    "rfc3339",
]


async def open_store(path: Path) -> Store:
    """The coordinator's database at ``path`` (SQLite), migrated to ``SCHEMA_VERSION``."""
    return await SqliteStore.open(path)
