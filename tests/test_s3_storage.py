"""The S3 storage against a moto server over real HTTP: objects, conditions, files, settings."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lrtkit.config import load_settings
from lrtkit.errors import (
    ConfigError,
    CorruptCheckpoint,
    NotFound,
    PreconditionFailed,
    StorageConfigError,
    StorageError,
)
from lrtkit.plugins import load_storage
from lrtkit.storage.s3 import S3Storage, file_crc32
from lrtkit.testing import StorageTarget, unique_name

pytest.register_assert_rewrite("tests.s3_fixtures")

from tests.s3_fixtures import (  # noqa: E402
    KEYS,
    raw_client,
    temporary_bucket,
    when_a_part_is_uploaded,
)

pytest_plugins = ["tests.s3_fixtures"]


@pytest.fixture
def lrt_storage_target(s3_target: StorageTarget) -> StorageTarget:
    return s3_target


MiB = 1024 * 1024


def storage_from(env: dict[str, str]) -> S3Storage:
    storage = load_storage(load_settings(environ=env))
    assert isinstance(storage, S3Storage)
    return storage


# -- conditional writes -----------------------------------------------------------------------


def test_boto3_and_moto_support_conditional_put(s3_moto_url: str, s3_bucket: str) -> None:
    """This boto3 sends IfMatch/IfNoneMatch on PutObject and this moto enforces them."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("s3")
    shape = model.operation_model("PutObject").input_shape
    assert shape is not None
    members = shape.members
    assert "IfMatch" in members
    assert "IfNoneMatch" in members
    client = raw_client(s3_moto_url)
    key = unique_name("raw")
    etag = client.put_object(Bucket=s3_bucket, Key=key, Body=b"1")["ETag"]
    for kwargs in ({"IfMatch": '"0000"'}, {"IfNoneMatch": "*"}):
        with pytest.raises(client.exceptions.ClientError) as info:
            client.put_object(Bucket=s3_bucket, Key=key, Body=b"2", **kwargs)  # type: ignore[arg-type]
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.put_object(Bucket=s3_bucket, Key=key, Body=b"3", IfMatch=etag)["ETag"] != etag
    client.delete_object(Bucket=s3_bucket, Key=key)


def test_put_get_and_conditions(s3_storage: S3Storage) -> None:
    etag = s3_storage.put("jobs/j1/checkpoint/manifest.json", b'{"epoch": 1}', if_none_match=True)
    data, got = s3_storage.get("jobs/j1/checkpoint/manifest.json")
    assert (data, got) == (b'{"epoch": 1}', etag)

    with pytest.raises(PreconditionFailed):
        s3_storage.put("jobs/j1/checkpoint/manifest.json", b"x", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        s3_storage.put("jobs/j1/checkpoint/manifest.json", b"x", if_match='"00000000"')
    with pytest.raises(PreconditionFailed):
        s3_storage.put("jobs/j1/never-written", b"x", if_match=etag)
    assert s3_storage.get("jobs/j1/checkpoint/manifest.json")[0] == b'{"epoch": 1}'

    new = s3_storage.put("jobs/j1/checkpoint/manifest.json", b'{"epoch": 2}', if_match=etag)
    assert new != etag
    with pytest.raises(PreconditionFailed):  # the old etag is stale now
        s3_storage.put("jobs/j1/checkpoint/manifest.json", b'{"epoch": 9}', if_match=etag)
    assert s3_storage.get("jobs/j1/checkpoint/manifest.json") == (b'{"epoch": 2}', new)


def test_stale_writers_lose_against_one_another(s3_storage: S3Storage) -> None:
    """Writers that all read the same etag: whoever writes first wins, the rest are refused."""
    etag = s3_storage.put("m", b"0")
    results: list[str] = []

    def write(i: int) -> None:
        try:
            s3_storage.put("m", str(i).encode(), if_match=etag)
            results.append(f"won {i}")
        except PreconditionFailed:
            results.append("lost")

    for i in range(1, 6):  # one after another: deterministic even on moto
        write(i)
    assert results == ["won 1", "lost", "lost", "lost", "lost"]
    assert s3_storage.get("m")[0] == b"1"


def test_missing_key_and_exists(s3_storage: S3Storage) -> None:
    with pytest.raises(NotFound) as info:
        s3_storage.get("jobs/nope/record.json")
    assert info.value.key == "jobs/nope/record.json"
    assert not s3_storage.exists("jobs/nope/record.json")
    s3_storage.put("jobs/yes/record.json", b"{}")
    assert s3_storage.exists("jobs/yes/record.json")
    s3_storage.delete("jobs/yes/record.json")
    s3_storage.delete("jobs/yes/record.json")  # already gone: no error
    assert not s3_storage.exists("jobs/yes/record.json")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", ""])
def test_bad_keys_are_refused(s3_storage: S3Storage, key: str) -> None:
    with pytest.raises(StorageError):
        s3_storage.put(key, b"x")


# -- listing and deleting ---------------------------------------------------------------------


def test_list_keys_is_sorted_and_scoped_to_the_prefix(
    s3_env: dict[str, str], s3_moto_url: str, s3_bucket: str
) -> None:
    storage = storage_from(s3_env)
    sibling = storage_from({**s3_env, "LRT_STORAGE": s3_env["LRT_STORAGE"] + "x"})
    for key in ["jobs/b/record.json", "jobs/a/record.json", "jobs/a/cancel", "other"]:
        storage.put(key, b"1")
    sibling.put("jobs/zzz/record.json", b"1")
    try:
        assert list(storage.list_keys("")) == [
            "jobs/a/cancel",
            "jobs/a/record.json",
            "jobs/b/record.json",
            "other",
        ]
        assert list(storage.list_keys("jobs/a/")) == ["jobs/a/cancel", "jobs/a/record.json"]
        assert list(storage.list_keys("jobs/a/rec")) == ["jobs/a/record.json"]
        assert list(storage.list_keys("nothing/")) == []
        assert list(sibling.list_keys("")) == ["jobs/zzz/record.json"]
        with pytest.raises(StorageError):
            list(storage.list_keys("../"))
    finally:
        sibling.delete_prefix("")


def test_list_and_delete_prefix_past_one_page(
    s3_storage: S3Storage, s3_moto_url: str, s3_bucket: str
) -> None:
    """More than 1000 keys: listing pages, DeleteObjects goes in batches of 1000."""
    client = raw_client(s3_moto_url)
    keys = [f"bulk/{i:05d}" for i in range(1105)]

    def put(key: str) -> None:
        client.put_object(Bucket=s3_bucket, Key=f"{s3_storage.prefix}/{key}", Body=b"")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, keys))
    s3_storage.put("keep/me", b"1")
    assert list(s3_storage.list_keys("bulk/")) == keys
    assert s3_storage.delete_prefix("bulk/") == 1105
    assert list(s3_storage.list_keys("")) == ["keep/me"]


# -- files ------------------------------------------------------------------------------------


def _write_file(path: Path, size: int) -> Path:
    block = os.urandom(MiB)
    with path.open("wb") as fh:
        left = size
        i = 0
        while left > 0:
            chunk = (bytes([i % 251]) + block)[: min(MiB, left)]
            fh.write(chunk)
            left -= len(chunk)
            i += 1
    return path


@pytest.mark.parametrize("size", [0, 1000, 12 * MiB + 17])
def test_files_round_trip(
    s3_env: dict[str, str], tmp_path: Path, s3_moto_url: str, s3_bucket: str, size: int
) -> None:
    env = {**s3_env, "LRT_S3_MULTIPART_THRESHOLD_MB": "5", "LRT_S3_MULTIPART_CHUNK_MB": "5"}
    storage = storage_from(env)
    src = _write_file(tmp_path / "src.bin", size)
    etag = storage.upload_file("jobs/j/checkpoint/blob", src)
    head = raw_client(s3_moto_url).head_object(
        Bucket=s3_bucket, Key=f"{storage.prefix}/jobs/j/checkpoint/blob", ChecksumMode="ENABLED"
    )
    assert head["ETag"] == etag
    assert head["ContentLength"] == size
    assert head["Metadata"]["lrt-crc32"] == file_crc32(src)
    if size > 5 * MiB:
        assert etag.endswith('-3"')  # three parts of 5 MiB
        assert head.get("ChecksumType") == "FULL_OBJECT"
        assert head.get("ChecksumCRC32") == file_crc32(src)

    dest = tmp_path / "out" / "deep" / "dest.bin"
    storage.download_file("jobs/j/checkpoint/blob", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest.bin"]  # no temp left


def test_download_of_a_missing_key_is_not_found(s3_storage: S3Storage, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        s3_storage.download_file("jobs/none/blob", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == []


def test_download_that_does_not_match_its_checksum_is_refused(
    s3_storage: S3Storage, tmp_path: Path, s3_moto_url: str, s3_bucket: str
) -> None:
    """Bytes that differ from the recorded CRC32 never reach the destination."""
    raw_client(s3_moto_url).put_object(
        Bucket=s3_bucket,
        Key=f"{s3_storage.prefix}/blob",
        Body=b"these are not the bytes that were hashed",
        Metadata={"lrt-crc32": "AAAAAA=="},
    )
    dest = tmp_path / "dest.bin"
    dest.write_bytes(b"previous")
    with pytest.raises(CorruptCheckpoint, match="CRC32"):
        s3_storage.download_file("blob", dest)
    assert dest.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.bin"]


def test_upload_of_a_missing_local_file(s3_storage: S3Storage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot read"):
        s3_storage.upload_file("x", tmp_path / "absent.bin")


def test_bucket_deleted_mid_upload_raises(s3_moto_url: str, tmp_path: Path) -> None:
    """A multipart upload that loses its bucket half-way fails loudly, naming the bucket."""
    src = _write_file(tmp_path / "big.bin", 40 * MiB)
    with temporary_bucket(s3_moto_url) as bucket:
        client = raw_client(s3_moto_url)
        storage = storage_from(
            {
                "LRT_STORAGE": f"s3://{bucket}/p",
                "LRT_S3_ENDPOINT_URL": s3_moto_url,
                "LRT_S3_REGION": "us-east-1",
                "LRT_S3_MULTIPART_THRESHOLD_MB": "5",
                "LRT_S3_MULTIPART_CHUNK_MB": "5",
                "LRT_S3_MAX_CONCURRENCY": "1",
                "LRT_S3_MAX_ATTEMPTS": "2",
                **KEYS,
            }
        )
        errors: list[BaseException] = []

        def upload() -> None:
            try:
                storage.upload_file("ckpt/big.bin", src)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=upload)
        thread.start()
        deleted = when_a_part_is_uploaded(client, bucket, thread)
        if deleted:
            client.delete_bucket(Bucket=bucket)
        thread.join(60)
        assert deleted, "the upload finished before the bucket could be deleted"
        assert len(errors) == 1
        assert isinstance(errors[0], StorageError)
        assert bucket in str(errors[0])
        assert "s3:PutObject" in str(errors[0])


def test_unreachable_endpoint_is_one_clear_error(tmp_path: Path) -> None:
    from lrtkit.testing.services import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    storage = storage_from(
        {
            "LRT_STORAGE": "s3://some-bucket/p",
            "LRT_S3_ENDPOINT_URL": endpoint,
            "LRT_S3_MAX_ATTEMPTS": "2",
            "LRT_S3_CONNECT_TIMEOUT": "1",
            **KEYS,
        }
    )
    src = tmp_path / "f"
    src.write_bytes(b"data")
    actions: list[Callable[[], object]] = [
        lambda: storage.upload_file("k", src),
        lambda: storage.put("k", b"x"),
    ]
    for action in actions:
        with pytest.raises(StorageConfigError) as info:
            action()
        message = str(info.value)
        assert "s3:PutObject on some-bucket/p/k" in message
        assert endpoint in message
        assert "LRT_S3_ENDPOINT_URL" in message


def test_missing_bucket_is_one_clear_error(s3_moto_url: str, tmp_path: Path) -> None:
    bucket = unique_name("lrt-absent")
    storage = storage_from(
        {"LRT_STORAGE": f"s3://{bucket}/p", "LRT_S3_ENDPOINT_URL": s3_moto_url, **KEYS}
    )
    src = tmp_path / "f"
    src.write_bytes(b"data")
    cases: list[tuple[str, Callable[[], object]]] = [
        ("s3:GetObject", lambda: storage.get("k")),
        ("s3:GetObject", lambda: storage.exists("k")),
        ("s3:GetObject", lambda: storage.download_file("k", tmp_path / "d")),
        ("s3:PutObject", lambda: storage.put("k", b"x")),
        ("s3:PutObject", lambda: storage.upload_file("k", src)),
        ("s3:ListBucket", lambda: list(storage.list_keys(""))),
        ("s3:DeleteObject", lambda: storage.delete("k")),
    ]
    for action, call in cases:
        with pytest.raises(StorageConfigError) as info:
            call()
        assert str(info.value).startswith(f"{action} on {bucket}"), str(info.value)
        assert "does not exist" in str(info.value)
    checks = {c.name: c for c in storage.diagnose()}
    assert checks["s3 bucket"].status == "fail"
    assert bucket in checks["s3 bucket"].detail


# -- settings ---------------------------------------------------------------------------------


def test_guide_r2_variables_work(s3_moto_url: str, s3_bucket: str) -> None:
    """A user of the SaladCloud guide sets only the R2_* variables: nothing else changes."""
    env = {
        "R2_BUCKET_NAME": s3_bucket,
        "R2_S3_ENDPOINT_URL": s3_moto_url,
        "R2_AWS_ACCESS_KEY_ID": "r2-key-id",
        "R2_AWS_SECRET_ACCESS_KEY": "r2-secret-value-77",
    }
    storage = storage_from(env)
    assert storage.url == f"s3://{s3_bucket}"
    assert storage.endpoint == s3_moto_url
    assert storage.addressing_style == "path"
    assert storage.credentials_source == "explicit"
    key = f"{unique_name('r2')}/checkpoint.json"
    storage.put(key, b'{"step": 3}')
    got = raw_client(s3_moto_url).get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert got == b'{"step": 3}'
    storage.delete(key)


def test_r2_endpoint_signs_with_region_auto() -> None:
    storage = storage_from(
        {
            "R2_BUCKET_NAME": "my-bucket",
            "R2_S3_ENDPOINT_URL": "https://0123abcd.r2.cloudflarestorage.com",
            "R2_AWS_ACCESS_KEY_ID": "id",
            "R2_AWS_SECRET_ACCESS_KEY": "secret",
        }
    )
    assert storage.region == "auto"
    assert storage.addressing_style == "path"
    virtual = storage_from(
        {
            "LRT_STORAGE": "s3://b-1/p",
            "LRT_S3_ADDRESSING_STYLE": "virtual",
            "LRT_S3_REGION": "eu-west-1",
        }
    )
    assert (virtual.region, virtual.addressing_style) == ("eu-west-1", "virtual")
    assert (
        storage_from({"LRT_STORAGE": "s3://b-1", "LRT_S3_REGION": "eu-west-1"}).addressing_style
        == "auto"
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"LRT_STORAGE": "s3://"}, "names no bucket"),
        ({"LRT_STORAGE": "s3://b_/x?region=eu"}, "query strings"),
        ({"LRT_STORAGE": "s3://key:secret@bucket/x"}, "credentials do not belong"),
        ({"LRT_STORAGE": "s3://a/x"}, "not a valid bucket name"),
        ({"LRT_STORAGE": "s3://bucket/a/../b"}, "bad prefix"),
        ({"LRT_STORAGE": "s3://bucket", "LRT_S3_ACCESS_KEY_ID": "id"}, "LRT_S3_SECRET_ACCESS_KEY"),
        (
            {"LRT_STORAGE": "s3://bucket", "LRT_S3_ENDPOINT_URL": "localhost:9000"},
            "LRT_S3_ENDPOINT_URL",
        ),
        ({"LRT_STORAGE": "s3://bucket", "LRT_S3_CHECKSUM": "md5"}, "LRT_S3_CHECKSUM"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("?", r"\?")):
        load_storage(load_settings(environ=env))


def test_secrets_are_never_shown(s3_env: dict[str, str]) -> None:
    secret = KEYS["LRT_S3_SECRET_ACCESS_KEY"]
    storage = storage_from(s3_env)
    shown = [repr(storage), storage.url, repr(storage._cfg)]
    shown += [f"{c.detail} {c.fix}" for c in storage.diagnose()]
    with pytest.raises(StorageError) as info:
        storage_from({**s3_env, "LRT_STORAGE": "s3://lrt-absent-bucket-x"}).put("k", b"x")
    shown.append(str(info.value))
    assert shown
    for text in shown:
        assert secret not in text


def test_diagnose_reports_bucket_region_endpoint_and_fencing(s3_storage: S3Storage) -> None:
    checks = {c.name: c for c in s3_storage.diagnose()}
    settings = checks["s3 settings"].detail
    assert s3_storage.bucket in settings
    assert "region us-east-1" in settings
    assert s3_storage.endpoint in settings
    assert checks["s3 bucket"].status == "ok"
    assert checks["s3 read/write"].status == "ok"
    assert checks["conditional writes"].status == "ok"
    assert checks["s3 delete"].status == "ok"
    assert checks["s3 lifecycle"].status == "warn"  # the test bucket has no abort rule
    assert list(s3_storage.list_keys("")) == []  # the probe is gone


def test_without_boto3_the_error_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['boto3'] = None\n"
        "from lrtkit.config import load_settings\n"
        "from lrtkit.plugins import load_storage\n"
        "from lrtkit.errors import ConfigError\n"
        "try:\n"
        "    load_storage(load_settings(environ={'LRT_STORAGE': 's3://bucket/p'}))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert 'pip install "lrtkit[s3]"' in out.stdout


def test_storage_target_is_fresh(lrt_storage_target: StorageTarget) -> None:
    storage = lrt_storage_target.storage()
    assert list(storage.list_keys("")) == []


def test_standard_aws_chain_when_no_keys_are_set(
    lrt_aws_env: dict[str, str], s3_moto_url: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in lrt_aws_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    storage = storage_from(
        {
            "LRT_STORAGE": f"s3://{s3_bucket}/{unique_name('chain')}",
            "LRT_S3_ENDPOINT_URL": s3_moto_url,
        }
    )
    assert storage.credentials_source == "env"
    assert storage.region == lrt_aws_env["AWS_DEFAULT_REGION"]
    storage.put("k", b"v")
    assert storage.get("k")[0] == b"v"
    assert storage.delete_prefix("") == 1


def test_no_credentials_anywhere_is_one_clear_error(
    s3_moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = storage_from(
        {"LRT_STORAGE": "s3://some-bucket/p", "LRT_S3_ENDPOINT_URL": s3_moto_url}
    )
    assert storage.credentials_source == "none found"
    with pytest.raises(
        StorageConfigError, match="no S3 credentials found: set LRT_S3_ACCESS_KEY_ID"
    ):
        storage.put("k", b"x")
    checks = {c.name: c for c in storage.diagnose()}
    assert checks["s3 credentials"].status == "fail"
    assert "R2_AWS_ACCESS_KEY_ID" in checks["s3 credentials"].fix


@pytest.mark.parametrize(
    ("code", "status", "conditional", "error", "says"),
    [
        ("PreconditionFailed", 412, True, PreconditionFailed, "conditional write lost"),
        ("ConditionalRequestConflict", 409, True, PreconditionFailed, "conditional write lost"),
        ("NoSuchKey", 404, True, PreconditionFailed, "object to replace is gone"),
        ("NoSuchKey", 404, False, NotFound, "no object at 'k'"),
        ("NoSuchBucket", 404, False, StorageConfigError, "does not exist"),
        ("AccessDenied", 403, False, StorageConfigError, "need s3:PutObject"),
        ("InvalidAccessKeyId", 403, False, StorageConfigError, "credentials rejected"),
        ("SignatureDoesNotMatch", 403, False, StorageConfigError, "credentials rejected"),
        ("AuthorizationHeaderMalformed", 400, False, StorageConfigError, "LRT_S3_REGION"),
        ("PermanentRedirect", 301, False, StorageConfigError, "another region"),
        ("NotImplemented", 501, True, StorageConfigError, "conditional writes"),
        ("BadDigest", 400, False, StorageError, "BadDigest"),
        ("InternalError", 500, False, StorageError, "InternalError"),
    ],
)
def test_error_translation(
    code: str, status: int, conditional: bool, error: type[Exception], says: str
) -> None:
    """What a store's answer (after botocore's retries) becomes, and what the message says."""
    from botocore.exceptions import ClientError

    from lrtkit.storage.s3_errors import translate

    response: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    answer = ClientError(response, "PutObject")
    got = translate(
        answer,
        operation="PutObject",
        bucket="b",
        object_key="p/k",
        storage_key="k",
        conditional=conditional,
    )
    assert type(got) is error
    assert says in str(got)
    if error is not NotFound:
        assert str(got).startswith("s3:PutObject on b/p/k")
