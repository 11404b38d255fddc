"""The storage contract suite (objects and fenced checkpoints) on the S3 backend over moto."""

from __future__ import annotations

from typing import ClassVar

import pytest

from lrtkit.testing import StorageTarget
from lrtkit.testing.storage_contract import StorageContract

pytest_plugins = ["tests.s3_fixtures"]


@pytest.fixture
def lrt_storage_target(s3_target: StorageTarget) -> StorageTarget:
    """Parts of 5 MiB (S3's minimum), so the suite's larger files go up as multipart."""
    return StorageTarget(
        env={
            **s3_target.env,
            "LRT_S3_MULTIPART_THRESHOLD_MB": "5",
            "LRT_S3_MULTIPART_CHUNK_MB": "5",
        }
    )


class TestS3StorageContract(StorageContract):
    """The same suite the file storage passes, stale-writer fencing included."""

    large_file_mb: ClassVar[int] = 12
