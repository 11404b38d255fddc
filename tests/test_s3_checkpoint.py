"""Checkpoints on the S3 storage: a 1 GiB folder, a writer killed mid-upload, failed uploads."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lrtkit.checkpoint import Checkpoint
from lrtkit.config import load_settings
from lrtkit.errors import StorageConfigError, StorageError
from lrtkit.plugins import load_storage
from lrtkit.storage import layout
from lrtkit.storage.s3 import S3Storage
from lrtkit.testing import StorageTarget, unique_name

pytest.register_assert_rewrite("tests.s3_fixtures")

from tests.s3_fixtures import (  # noqa: E402
    KEYS,
    raw_client,
    temporary_bucket,
    when_a_part_is_uploaded,
)

pytest_plugins = ["tests.s3_fixtures"]

MiB = 1024 * 1024


@pytest.fixture
def lrt_storage_target(s3_target: StorageTarget) -> StorageTarget:
    return s3_target


def make_file(path: Path, size: int, seed: int) -> str:
    """Write ``size`` bytes, every MiB different, cheaply; return the sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(MiB))
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        left, i = size, 0
        while left > 0:
            block[:8] = (seed * 1_000_003 + i).to_bytes(8, "big")
            chunk = bytes(block[: min(MiB, left)])
            fh.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
            i += 1
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def s3_env_with(env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**env, **{f"LRT_S3_{k.upper()}": v for k, v in extra.items()}}


@pytest.mark.slow
def test_one_gib_folder_round_trips_intact(
    s3_target: StorageTarget, s3_moto_url: str, s3_bucket: str, tmp_path: Path
) -> None:
    storage = s3_target.storage()
    assert isinstance(storage, S3Storage)
    job_id = unique_name("big")
    src = tmp_path / "src"
    sizes = {"model/weights-0.bin": 400 * MiB, "model/weights-1.bin": 400 * MiB}
    sizes["optimizer.bin"] = 224 * MiB - 3  # 1 GiB in all, give or take a few bytes
    expected = {
        rel: make_file(src / rel, size, seed) for seed, (rel, size) in enumerate(sizes.items())
    }
    (src / "step.txt").write_text("1200")
    expected["step.txt"] = hashlib.sha256(b"1200").hexdigest()
    (src / "empty-dir").mkdir()
    dest = tmp_path / "dest"
    try:
        writer = Checkpoint(storage, job_id, unique_name("w"))
        writer.claim()
        writer.save_dir(src)

        # The big files went up as multipart uploads with a full-object CRC32.
        client = raw_client(s3_moto_url)
        blobs = list(storage.list_keys(layout.blobs_prefix(job_id)))
        assert len(blobs) == 4
        parts = []
        for key in blobs:
            head = client.head_object(
                Bucket=s3_bucket, Key=f"{storage.prefix}/{key}", ChecksumMode="ENABLED"
            )
            etag = head["ETag"].strip('"')
            parts.append(int(etag.rpartition("-")[2]) if "-" in etag else 1)
            assert head["Metadata"]["lrt-crc32"]
        assert sorted(parts) == [1, 14, 25, 25]  # 16 MiB parts of 224 and 400 MiB

        for src_file in list(src.rglob("*.bin")):
            src_file.unlink()  # room on the disk, and proof the bytes come from S3
        reader = Checkpoint(storage, job_id, unique_name("r"))
        reader.claim()
        assert reader.restore_dir(dest) is True
        got = {p.relative_to(dest).as_posix(): sha256_of(p) for p in dest.rglob("*") if p.is_file()}
        assert got == expected
        assert (dest / "empty-dir").is_dir()
        assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) >= 1024 * MiB - 3
    finally:
        storage.delete_prefix(layout.job_prefix(job_id))
        shutil.rmtree(src, ignore_errors=True)  # 2 GiB of disk, not left for pytest to rotate
        shutil.rmtree(dest, ignore_errors=True)


_KILLED_WRITER = """
import sys
from lrtkit.checkpoint import Checkpoint
from lrtkit.config import load_settings
from lrtkit.plugins import load_storage

checkpoint = Checkpoint(load_storage(load_settings()), sys.argv[1], "doomed-writer")
checkpoint.claim()
print("claimed", flush=True)
checkpoint.save({"step": 999})
checkpoint.save_dir(sys.argv[2])
print("saved", flush=True)
"""


@pytest.mark.slow
def test_writer_killed_mid_upload_leaves_previous_checkpoint_loadable(
    s3_target: StorageTarget, s3_moto_url: str, s3_bucket: str, tmp_path: Path
) -> None:
    storage = s3_target.storage()
    job_id = unique_name("kill")
    v1 = tmp_path / "v1"
    v1_hash = make_file(v1 / "weights.bin", 3 * MiB, seed=1)
    (v1 / "epoch.txt").write_text("1")
    first = Checkpoint(storage, job_id, "first-writer")
    first.claim()
    first.save({"step": 100})
    first.save_dir(v1)

    v2 = tmp_path / "v2"
    make_file(v2 / "weights.bin", 240 * MiB, seed=2)
    (v2 / "epoch.txt").write_text("2")
    env = s3_target.subprocess_env(
        {
            "LRT_S3_MULTIPART_THRESHOLD_MB": "5",
            "LRT_S3_MULTIPART_CHUNK_MB": "5",
            "LRT_S3_MAX_CONCURRENCY": "1",
        }
    )
    client = raw_client(s3_moto_url)
    prefix = f"{storage.prefix}/{layout.blobs_prefix(job_id)}"  # type: ignore[attr-defined]
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, job_id, str(v2)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    killed_with_parts = 0
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            uploads = client.list_multipart_uploads(Bucket=s3_bucket, Prefix=prefix)
            mine = uploads.get("Uploads", [])
            if mine:
                listed = client.list_parts(
                    Bucket=s3_bucket, Key=mine[0]["Key"], UploadId=mine[0]["UploadId"]
                )
                if len(listed.get("Parts", [])) >= 3:
                    killed_with_parts = len(listed["Parts"])
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and not killed_with_parts:
            proc.kill()
        out, _ = proc.communicate(timeout=30)
    assert killed_with_parts >= 3, f"the writer was not caught mid-upload: {out!r}"
    assert proc.returncode == -signal.SIGKILL
    assert "saved" not in out

    try:
        # The newest holder sees generation 1's folder, whole, and the newest JSON state.
        nxt = Checkpoint(storage, job_id, "next-writer")
        nxt.claim()
        dest = tmp_path / "dest"
        assert nxt.restore_dir(dest) is True
        assert sha256_of(dest / "weights.bin") == v1_hash
        assert (dest / "epoch.txt").read_text() == "1"
        assert nxt.load() in ({"step": 100}, {"step": 999})  # the JSON save may have landed
        # ...and it can go on checkpointing.
        (dest / "epoch.txt").write_text("3")
        nxt.save_dir(dest)
        again = tmp_path / "again"
        assert Checkpoint(storage, job_id, "reader").restore_dir(again) is True
        assert (again / "epoch.txt").read_text() == "3"
    finally:
        shutil.rmtree(v2, ignore_errors=True)
        storage.delete_prefix(layout.job_prefix(job_id))
        for up in client.list_multipart_uploads(Bucket=s3_bucket, Prefix=prefix).get("Uploads", []):
            client.abort_multipart_upload(Bucket=s3_bucket, Key=up["Key"], UploadId=up["UploadId"])


def test_checkpoint_upload_failure_is_an_error_not_a_silent_miss(
    s3_moto_url: str, tmp_path: Path
) -> None:
    """The bucket disappears while a folder checkpoint uploads: save_dir raises."""
    folder = tmp_path / "ckpt"
    make_file(folder / "weights.bin", 40 * MiB, seed=3)
    with temporary_bucket(s3_moto_url) as bucket:
        env = {
            "LRT_STORAGE": f"s3://{bucket}/p",
            "LRT_S3_ENDPOINT_URL": s3_moto_url,
            "LRT_S3_REGION": "us-east-1",
            "LRT_S3_MULTIPART_THRESHOLD_MB": "5",
            "LRT_S3_MULTIPART_CHUNK_MB": "5",
            "LRT_S3_MAX_CONCURRENCY": "1",
            "LRT_S3_MAX_ATTEMPTS": "2",
            **KEYS,
        }
        storage = load_storage(load_settings(environ=env))
        checkpoint = Checkpoint(storage, "job-1", "holder")
        checkpoint.claim()
        client = raw_client(s3_moto_url)
        errors: list[BaseException] = []
        returned: list[bool] = []

        def save() -> None:
            try:
                checkpoint.save_dir(folder)
                returned.append(True)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=save)
        thread.start()
        deleted = when_a_part_is_uploaded(client, bucket, thread)
        if deleted:
            client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": "p/" + layout.manifest_key("job-1")}]},
            )
            client.delete_bucket(Bucket=bucket)
        thread.join(60)
        assert deleted, "the save finished before the bucket could be deleted"
        assert returned == []
        assert len(errors) == 1
        assert isinstance(errors[0], StorageConfigError)
        assert f"s3:PutObject on {bucket}/p/jobs/job-1/checkpoint/" in str(errors[0])
        assert "does not exist" in str(errors[0])


def test_checkpoint_on_a_dead_endpoint_fails_loudly(tmp_path: Path) -> None:
    from lrtkit.testing.services import free_port

    env = {
        "LRT_STORAGE": "s3://my-bucket/p",
        "LRT_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "LRT_S3_MAX_ATTEMPTS": "2",
        "LRT_S3_CONNECT_TIMEOUT": "1",
        **KEYS,
    }
    checkpoint = Checkpoint(load_storage(load_settings(environ=env)), "job-1", "holder")
    with pytest.raises(StorageError, match=r"my-bucket/p/jobs/job-1/checkpoint/manifest\.json"):
        checkpoint.claim()
    folder = tmp_path / "f"
    make_file(folder / "a.bin", 1000, seed=4)
    with pytest.raises(StorageError, match="cannot reach the endpoint"):
        checkpoint.save_dir(folder)


def test_guide_r2_variables_carry_a_checkpoint(
    s3_moto_url: str, s3_bucket: str, tmp_path: Path
) -> None:
    env = {
        "R2_BUCKET_NAME": s3_bucket,
        "R2_S3_ENDPOINT_URL": s3_moto_url,
        "R2_AWS_ACCESS_KEY_ID": "r2-id",
        "R2_AWS_SECRET_ACCESS_KEY": "r2-secret",
    }
    job_id = unique_name("r2job")
    storage = load_storage(load_settings(environ=env))
    writer = Checkpoint(storage, job_id, "w")
    writer.claim()
    writer.save({"step": 7, "sum": 28})
    try:
        reader = Checkpoint(load_storage(load_settings(environ=env)), job_id, "r")
        assert reader.load() == {"step": 7, "sum": 28}
        head = raw_client(s3_moto_url).head_object(
            Bucket=s3_bucket, Key=layout.manifest_key(job_id)
        )
        assert head["ContentLength"] > 0  # at the bucket root: R2_BUCKET_NAME alone, no prefix
    finally:
        storage.delete_prefix(layout.job_prefix(job_id))
