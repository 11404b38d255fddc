"""Fixtures for the S3 storage tests: a bucket on the moto server, a fresh prefix per test.

Test modules load them with ``pytest_plugins = ["tests.s3_fixtures"]`` and define
``lrt_storage_target`` from ``s3_target`` themselves (a module fixture outranks the core
conftest's file-storage one; a plugin fixture would not).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from lrtkit.storage.s3 import S3Storage
from lrtkit.testing import StorageTarget, unique_name

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client


@pytest.fixture(scope="session")
def s3_moto_url(lrt_moto_url: str) -> str:
    """The session's moto server (conditional writes atomic, see lrtkit.testing.moto_runner)."""
    return lrt_moto_url


KEYS = {"LRT_S3_ACCESS_KEY_ID": "testing", "LRT_S3_SECRET_ACCESS_KEY": "testing-secret-0042"}


def raw_client(endpoint: str, **credentials: str) -> S3Client:
    """A plain boto3 client on ``endpoint`` (to arrange and inspect, never under test)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=credentials.get("key_id", "testing"),
        aws_secret_access_key=credentials.get("secret", "testing"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def empty_bucket(client: S3Client, bucket: str) -> None:
    """Delete every object and pending multipart upload, then the bucket (best effort)."""
    with contextlib.suppress(Exception):
        uploads = client.list_multipart_uploads(Bucket=bucket)
        for up in uploads.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})  # type: ignore[typeddict-item]
    with contextlib.suppress(Exception):
        client.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def temporary_bucket(endpoint: str) -> Iterator[str]:
    client = raw_client(endpoint)
    bucket = unique_name("lrt-test")
    client.create_bucket(Bucket=bucket)
    try:
        yield bucket
    finally:
        empty_bucket(client, bucket)


@pytest.fixture(scope="module")
def s3_bucket(s3_moto_url: str) -> Iterator[str]:
    """A bucket of its own for the test module; emptied and deleted after."""
    with temporary_bucket(s3_moto_url) as bucket:
        yield bucket


@pytest.fixture
def s3_env(s3_moto_url: str, s3_bucket: str) -> Iterator[dict[str, str]]:
    """Variables selecting a fresh prefix of the module's bucket; the prefix is deleted after."""
    prefix = unique_name("t")
    env = {
        "LRT_STORAGE": f"s3://{s3_bucket}/{prefix}",
        "LRT_S3_ENDPOINT_URL": s3_moto_url,
        "LRT_S3_REGION": "us-east-1",
        **KEYS,
    }
    yield env
    client = raw_client(s3_moto_url)
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=s3_bucket, Prefix=prefix + "/"
        ):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=s3_bucket, Delete={"Objects": keys, "Quiet": True})  # type: ignore[typeddict-item]


@pytest.fixture
def s3_target(s3_env: dict[str, str]) -> StorageTarget:
    """A fresh prefix on the moto server (test modules hand it on as ``lrt_storage_target``)."""
    return StorageTarget(env=dict(s3_env))


@pytest.fixture
def s3_storage(s3_target: StorageTarget) -> S3Storage:
    storage = s3_target.storage()
    assert isinstance(storage, S3Storage)
    return storage


def when_a_part_is_uploaded(client: S3Client, bucket: str, thread: threading.Thread) -> bool:
    """Wait while ``thread`` runs until a multipart upload in ``bucket`` has a part stored.

    True once it has (the upload is half-way: the caller then breaks something), False if the
    thread finished first.
    """
    while thread.is_alive():
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        if uploads and client.list_parts(
            Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]
        ).get("Parts"):
            return True
    return False
