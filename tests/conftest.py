from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Mosquitto, running_mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto broker on a free port, for this test only."""
    d = tmp_path / "mosquitto"
    d.mkdir()
    with running_mosquitto(d) as broker:
        yield broker
