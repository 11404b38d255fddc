"""Fixtures for the S3 storage tests: a bucket on the moto server, a fresh prefix per test.

Test modules load them with ``pytest_plugins = ["tests.s3_fixtures"]`` and define
``lrt_storage_target`` from ``s3_target`` themselves (a module fixture outranks the core
conftest's file-storage one; a plugin fixture would not).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import pytest

from lrtkit.storage.s3 import S3Storage
from lrtkit.testing import StorageTarget, service_unavailable, unique_name
from lrtkit.testing.services import free_port, wait_http

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

# moto's S3 checks a conditional PUT and then stores the object, two steps with no lock between
# them, on a threaded server: two writers racing with the same If-Match can both win. S3, R2
# and MinIO evaluate the condition and write atomically. This runner serves moto with the
# conditional writes serialised (everything else stays concurrent), so the race tests
# exercise lrtkit's side of the protocol rather than that gap of the emulator.
_SERVER = """
import sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
)
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()

def serialised(environ, start_response):
    conditional = "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
    if environ["REQUEST_METHOD"] in ("PUT", "POST") and conditional:
        with lock:
            return list(app(environ, start_response))
    return app(environ, start_response)

run_simple("127.0.0.1", int(sys.argv[1]), serialised, threaded=True,
           request_handler=MotoRequestHandler)
"""


@contextlib.contextmanager
def moto_s3_server(extra_env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A moto server of these tests' own (atomic conditional writes); yields its URL."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        service_unavailable('moto server (pip install "moto[server]")')
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port)],
        env={**os.environ, **(extra_env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}/moto-api/")
        except TimeoutError:
            service_unavailable(f"moto server on port {port}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_moto_url() -> Iterator[str]:
    """The S3 tests' moto server (see ``_SERVER``), shared by the session."""
    with moto_s3_server() as url:
        yield url


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
