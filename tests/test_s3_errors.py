"""Denied access and bad credentials: one clear error naming the bucket and the action.

They run on a moto server of their own that checks signatures and IAM policies
(``lrtkit.testing.moto_iam``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lrtkit.checkpoint import Checkpoint
from lrtkit.config import load_settings
from lrtkit.errors import StorageConfigError
from lrtkit.plugins import load_storage
from lrtkit.storage.s3 import S3Storage
from lrtkit.testing import unique_name

pytest.register_assert_rewrite("tests.s3_fixtures")

from lrtkit.testing.moto_iam import moto_iam_server  # noqa: E402
from tests.s3_fixtures import empty_bucket, raw_client  # noqa: E402

MiB = 1024 * 1024


@dataclass
class AuthServer:
    url: str
    bucket: str
    admin: tuple[str, str]
    read_only: tuple[str, str]


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    with moto_iam_server() as moto:
        read_only = moto.user("reader", ["s3:GetObject", "s3:ListBucket"])
        bucket = unique_name("lrt-auth")
        client = raw_client(moto.url, key_id=moto.admin[0], secret=moto.admin[1])
        client.create_bucket(Bucket=bucket)
        try:
            yield AuthServer(moto.url, bucket, moto.admin, read_only)
        finally:
            empty_bucket(client, bucket)


def storage_for(server: AuthServer, key_id: str, secret: str, **extra: str) -> S3Storage:
    env = {
        "LRT_STORAGE": f"s3://{server.bucket}/p",
        "LRT_S3_ENDPOINT_URL": server.url,
        "LRT_S3_REGION": "us-east-1",
        "LRT_S3_ACCESS_KEY_ID": key_id,
        "LRT_S3_SECRET_ACCESS_KEY": secret,
        **extra,
    }
    storage = load_storage(load_settings(environ=env))
    assert isinstance(storage, S3Storage)
    return storage


def test_admin_keys_work(auth_server: AuthServer) -> None:
    """The control: with rights, the same calls succeed on this server."""
    storage = storage_for(auth_server, *auth_server.admin)
    storage.put("ok", b"1")
    assert storage.get("ok")[0] == b"1"
    storage.delete("ok")


def test_denied_write_names_bucket_and_action(auth_server: AuthServer, tmp_path: Path) -> None:
    storage = storage_for(
        auth_server,
        *auth_server.read_only,
        LRT_S3_MULTIPART_THRESHOLD_MB="5",
        LRT_S3_MULTIPART_CHUNK_MB="5",
    )
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (6 * MiB))
    where = f"{auth_server.bucket}/p"
    cases: list[tuple[str, str, Callable[[], object]]] = [
        ("s3:PutObject", "k", lambda: storage.put("k", b"x")),
        ("s3:PutObject", "big", lambda: storage.upload_file("big", big)),
        ("s3:DeleteObject", "k", lambda: storage.delete("k")),
    ]
    for action, key, call in cases:
        with pytest.raises(StorageConfigError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{action} on {where}/{key} at {auth_server.url}: access denied")
        assert f"need {action}" in message
    assert list(storage.list_keys("")) == []  # what it may do still works


def test_denied_checkpoint_save_is_one_clear_error(auth_server: AuthServer) -> None:
    storage = storage_for(auth_server, *auth_server.read_only)
    checkpoint = Checkpoint(storage, "job-7", "holder")
    with pytest.raises(StorageConfigError) as info:
        checkpoint.claim()
    message = str(info.value)
    assert message.startswith(
        f"s3:PutObject on {auth_server.bucket}/p/jobs/job-7/checkpoint/manifest.json"
    )
    assert "access denied" in message


@pytest.mark.parametrize(
    ("which", "code"),
    [("unknown key id", "InvalidAccessKeyId"), ("wrong secret", "SignatureDoesNotMatch")],
)
def test_bad_credentials_say_so(auth_server: AuthServer, which: str, code: str) -> None:
    key_id = "AKIAUNKNOWNKEY000000" if which == "unknown key id" else auth_server.admin[0]
    storage = storage_for(auth_server, key_id, "not-the-secret")
    calls: list[tuple[str, Callable[[], object]]] = [
        ("s3:GetObject", lambda: storage.get("k")),
        ("s3:PutObject", lambda: storage.put("k", b"x")),
        ("s3:ListBucket", lambda: list(storage.list_keys(""))),
    ]
    for action, call in calls:
        with pytest.raises(StorageConfigError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{action} on {auth_server.bucket}")
        assert f"credentials rejected ({code}" in message
        assert "not-the-secret" not in message
    with pytest.raises(StorageConfigError, match="access denied or credentials rejected"):
        storage.exists("k")  # a HEAD request: 403 without a reason


def test_doctor_reports_denied_writes(auth_server: AuthServer) -> None:
    checks = {c.name: c for c in storage_for(auth_server, *auth_server.read_only).diagnose()}
    assert checks["s3 bucket"].status == "ok", checks["s3 bucket"]
    assert checks["s3 read/write"].status == "fail"
    assert "s3:PutObject" in checks["s3 read/write"].detail
    assert auth_server.bucket in checks["s3 read/write"].detail
