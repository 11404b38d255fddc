"""Real ``lrtkit run`` workers keeping records, checkpoints and results in S3 (moto).

The queue is the embedded SQLite broker; everything a worker writes goes to a fresh prefix of
the module's bucket. A worker is SIGKILLed mid-job and the next one resumes from what the
first left in the bucket.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from lrtkit.jobs import JobState
from lrtkit.records import JobStore
from lrtkit.storage import layout
from lrtkit.testing import BrokerTarget, StorageTarget, unique_name
from lrtkit.testing.worker_contract import WorkerHarness, expected_sum, redone

pytest_plugins = ["tests.s3_fixtures"]

LEASE = 2.0
TICK = 0.15
STARTUP = 30.0


@pytest.fixture
def s3_workers(s3_target: StorageTarget, tmp_path: Path) -> Iterator[WorkerHarness]:
    broker = BrokerTarget(
        env={
            "LRT_BROKER": "local",
            "LRT_LOCAL_DB": str(tmp_path / "queue.sqlite3"),
            "LRT_QUEUE": unique_name(),
            **s3_target.env,
        }
    )
    harness = WorkerHarness(broker, tmp_path, LEASE)
    harness.storage_url = s3_target.env["LRT_STORAGE"]
    harness.store = JobStore(s3_target.storage())
    try:
        yield harness
    finally:
        harness.close()
        broker.close()


@pytest.mark.slow
@pytest.mark.parametrize("handler", ["sum_job", "folder_job"])
def test_sigkilled_worker_resumes_from_the_bucket(
    s3_workers: WorkerHarness, s3_target: StorageTarget, handler: str
) -> None:
    steps = 12
    job_id = s3_workers.submit(s3_workers.new_id(), steps=steps, tick=TICK)
    first = s3_workers.start_handler(handler)
    s3_workers.steps_done(job_id, 4, STARTUP)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    done_before = len(s3_workers.trace(job_id))

    second = s3_workers.start_handler(handler, "--max-jobs", "1")
    assert s3_workers.wait_exit(second, STARTUP + steps * TICK + 30) == 0, s3_workers.logs()
    record = s3_workers.record(job_id)
    assert record.state == JobState.SUCCEEDED, record
    assert record.result == {"sum": expected_sum(steps)}
    assert record.failures == 0
    rows = s3_workers.trace(job_id)
    assert sorted({r.step for r in rows}) == list(range(1, steps + 1))
    assert redone(rows) <= 1, rows
    resumed = [r for r in rows if r.pid != first.pid]
    assert resumed[0].step >= done_before, f"the second worker started over: {rows}"

    # Everything lives in the bucket: record, result, checkpoint manifest.
    storage = s3_target.storage()
    keys = set(storage.list_keys(layout.job_prefix(job_id)))
    assert {layout.record_key(job_id), layout.result_key(job_id)} <= keys
    assert layout.manifest_key(job_id) in keys
    assert JobStore(storage).get_result(job_id) == {"sum": expected_sum(steps)}
