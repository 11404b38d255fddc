"""Fixtures for the core tests: the local broker and the file storage in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lrtkit.testing.target import BrokerTarget, StorageTarget, unique_name


@pytest.fixture
def lrt_broker_target(tmp_path: Path) -> Iterator[BrokerTarget]:
    """A fresh queue on the embedded SQLite broker."""
    target = BrokerTarget(
        env={
            "LRT_BROKER": "local",
            "LRT_LOCAL_DB": str(tmp_path / "queue.sqlite3"),
            "LRT_QUEUE": unique_name(),
        }
    )
    yield target
    target.close()


@pytest.fixture
def lrt_storage_target(tmp_path: Path) -> StorageTarget:
    """A fresh file storage root."""
    return StorageTarget(env={"LRT_STORAGE": f"file://{tmp_path / 'store'}"})
