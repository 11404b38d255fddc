"""The storage contract suite (objects and fenced checkpoints) on the S3 backend over moto."""

from __future__ import annotations

import pytest

from lrtkit.testing import StorageTarget
from lrtkit.testing.storage_contract import StorageContract

pytest_plugins = ["tests.s3_fixtures"]


@pytest.fixture
def lrt_storage_target(s3_target: StorageTarget) -> StorageTarget:
    return s3_target


class TestS3StorageContract(StorageContract):
    """The same suite the file storage passes, stale-writer fencing included."""
