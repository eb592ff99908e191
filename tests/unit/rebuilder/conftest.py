"""Fixtures of the rebuilder node's unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.rebuilder.node_helpers import NodeStore, open_node_store


@pytest.fixture
async def node_store(tmp_path: Path) -> AsyncIterator[NodeStore]:
    """A node made by ``rebuilder init`` under ``tmp_path``, its store open; closed after the
    test whatever its outcome."""
    async with open_node_store(tmp_path) as node:
        yield node
