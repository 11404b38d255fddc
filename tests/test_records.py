"""Job records, cancel markers, results and artifacts over the file storage."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from lrtkit.errors import InvalidJobId, LrtError, StorageError
from lrtkit.jobs import JobRecord, JobState, Progress, utcnow
from lrtkit.records import JobStore
from lrtkit.storage import layout
from lrtkit.storage.file import FileStorage


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(FileStorage(tmp_path / "store"))


def test_get_missing_is_none(store: JobStore) -> None:
    assert store.get("nope") is None
    assert not store.exists("nope")


def test_put_get_round_trip_sets_updated_at(store: JobStore) -> None:
    old = utcnow() - timedelta(days=1)
    record = JobRecord(job_id="job-1", state=JobState.RUNNING, attempts=2, updated_at=old)
    store.put(record)
    got = store.get("job-1")
    assert got is not None
    assert got.state == JobState.RUNNING
    assert got.attempts == 2
    assert got.updated_at > old
    assert store.exists("job-1")
    assert store.storage.exists(layout.record_key("job-1"))


def test_update_creates_then_changes(store: JobStore) -> None:
    created = store.update("job-2", state=JobState.QUEUED)
    assert created.state == JobState.QUEUED
    changed = store.update(
        "job-2", state="running", attempts=1, progress=Progress(done=3, total=10)
    )
    assert changed.state == JobState.RUNNING
    again = store.get("job-2")
    assert again is not None
    assert again.attempts == 1
    assert again.progress is not None
    assert again.progress.done == 3
    assert again.updated_at >= created.updated_at


def test_update_refuses_unknown_fields_and_bad_values(store: JobStore) -> None:
    with pytest.raises(LrtError, match="colour"):
        store.update("job-3", colour="red")
    with pytest.raises(LrtError, match="state"):
        store.update("job-3", state="sleeping")
    assert store.get("job-3") is None


def test_bad_job_id_refused(store: JobStore) -> None:
    with pytest.raises(InvalidJobId):
        store.get("../escape")
    with pytest.raises(InvalidJobId):
        store.update("a/b", state="queued")


def test_list_records_sorted_and_filtered(store: JobStore) -> None:
    for job_id, state in [("b", "running"), ("a", "queued"), ("c", "running")]:
        store.update(job_id, state=state)
    store.put_result("a", {"x": 1})  # other keys under jobs/ are not records
    store.request_cancel("b")
    assert [r.job_id for r in store.list_records()] == ["a", "b", "c"]
    assert [r.job_id for r in store.list_records(JobState.RUNNING)] == ["b", "c"]
    assert store.list_records(JobState.DEAD) == []


def test_list_records_empty_store(store: JobStore) -> None:
    assert store.list_records() == []


def test_corrupt_record_is_a_clear_error(store: JobStore) -> None:
    store.storage.put(layout.record_key("bad"), b"{not json")
    with pytest.raises(StorageError, match=r"jobs/bad/record\.json"):
        store.get("bad")


def test_cancel_marker(store: JobStore) -> None:
    assert not store.cancel_requested("job-4")
    store.request_cancel("job-4")
    assert store.cancel_requested("job-4")
    store.request_cancel("job-4")  # idempotent
    assert store.cancel_requested("job-4")


def test_results(store: JobStore) -> None:
    assert store.get_result("job-5") is None
    store.put_result("job-5", {"sum": 55, "items": [1, 2]})
    assert store.get_result("job-5") == {"sum": 55, "items": [1, 2]}


def test_result_not_json_names_the_type(store: JobStore) -> None:
    with pytest.raises(LrtError, match="set"):
        store.put_result("job-6", {"s": {1, 2}})
    assert store.get_result("job-6") is None


def test_upload_artifacts(store: JobStore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub" / "deeper").mkdir(parents=True)
    (out / "model.bin").write_bytes(b"\x00\x01" * 1000)
    (out / "sub" / "log.txt").write_text("hello")
    (out / "sub" / "deeper" / "x.json").write_text("{}")
    assert store.upload_artifacts("job-7", out) == 3
    keys = list(store.storage.list_keys(layout.artifacts_prefix("job-7")))
    assert keys == [
        "jobs/job-7/artifacts/model.bin",
        "jobs/job-7/artifacts/sub/deeper/x.json",
        "jobs/job-7/artifacts/sub/log.txt",
    ]
    data, _ = store.storage.get("jobs/job-7/artifacts/sub/log.txt")
    assert data == b"hello"
    assert store.upload_artifacts("job-7", tmp_path / "missing") == 0


def test_layout_keys() -> None:
    assert layout.record_key("j") == "jobs/j/record.json"
    assert layout.cancel_key("j") == "jobs/j/cancel"
    assert layout.result_key("j") == "jobs/j/result.json"
    assert layout.artifacts_prefix("j") == "jobs/j/artifacts/"
    assert layout.artifact_key("j", "a/b.txt") == "jobs/j/artifacts/a/b.txt"
    assert layout.checkpoint_prefix("j") == "jobs/j/checkpoint/"
    assert layout.manifest_key("j") == "jobs/j/checkpoint/manifest.json"
    assert layout.job_id_of_record_key("jobs/j/record.json") == "j"
    assert layout.job_id_of_record_key("jobs/j/result.json") is None
    assert layout.job_id_of_record_key("jobs/j/x/record.json") is None
    with pytest.raises(StorageError):
        layout.artifact_key("j", "../x")
    with pytest.raises(InvalidJobId):
        layout.manifest_key("..")
    # owner tags are key-safe and distinct even when the readable parts collide
    a, b = layout.owner_tag("host:1/2"), layout.owner_tag("host_1_2")
    assert a != b
    assert "/" not in a
    assert ":" not in a


def test_listing_skips_an_unreadable_record(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.update("good", state="queued")
    store.storage.put(layout.record_key("broken"), b"{not json")
    assert [r.job_id for r in store.list_records()] == ["good"]
    assert "broken" in caplog.text
