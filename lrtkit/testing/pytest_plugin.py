"""pytest plugin registered by lrtkit (``pytest11`` entry point): shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lrtkit.testing.services import moto_server


@pytest.fixture(scope="session")
def lrt_moto_url() -> Iterator[str]:
    """Endpoint URL of a moto server (SQS and S3 over real HTTP) for the whole session."""
    with moto_server() as url:
        yield url


@pytest.fixture
def lrt_aws_env(lrt_moto_url: str) -> dict[str, str]:
    """AWS variables that point boto3 at the moto server with throwaway credentials."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
