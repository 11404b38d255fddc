"""``lrtkit run`` on SQS: jobs sent the SaladCloud guide's way, and jobs past the visibility cap."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lrtkit_sqs.broker import SqsBroker

from lrtkit.jobs import JobState
from lrtkit.testing.target import BrokerTarget
from lrtkit.testing.worker_contract import WorkerHarness, expected_sum, redone

LEASE = 2.0
CAP = {"LRT_SQS_MAX_LEASE_SECONDS": "4"}  # SQS's 12 hours, shortened


@pytest.fixture
def workers(lrt_broker_target: BrokerTarget, tmp_path: Path) -> Iterator[WorkerHarness]:
    harness = WorkerHarness(lrt_broker_target, tmp_path, LEASE)
    try:
        yield harness
    finally:
        harness.close()


def log_of(harness: WorkerHarness, index: int) -> str:
    return harness.processes[index][1].read_text(errors="replace")


def test_jobs_sent_the_guide_way_are_served_by_lrtkit_run(
    workers: WorkerHarness, sqs_client: Any
) -> None:
    broker = workers.broker
    assert isinstance(broker, SqsBroker)
    # The guide's submitter, verbatim in substance: CSV rows, steps made int, batch of entries
    # with Id = MessageGroupId = MessageDeduplicationId = job_id, body = json.dumps(job).
    rows = [{"job_id": f"job-{i}", "steps": str(3 + i)} for i in range(3)]

    def job_to_entry(job: dict[str, Any]) -> dict[str, str]:
        job["steps"] = int(job["steps"])
        return {
            "Id": job["job_id"],
            "MessageDeduplicationId": job["job_id"],
            "MessageGroupId": job["job_id"],
            "MessageBody": json.dumps(job),
        }

    response = sqs_client.send_message_batch(
        QueueUrl=broker.queues.url, Entries=[job_to_entry(r) for r in rows]
    )
    assert not response.get("Failed")

    proc = workers.start_handler("sum_job", "--exit-when-idle", "3")
    assert workers.wait_exit(proc, 90) == 0, workers.logs()
    for i in range(3):
        job_id, steps = f"job-{i}", 3 + i
        assert workers.record(job_id).state == JobState.SUCCEEDED
        assert workers.store.get_result(job_id) == {"sum": expected_sum(steps)}
        assert sorted(r.step for r in workers.trace(job_id)) == list(range(1, steps + 1))
    workers.depth_becomes((0, 0, 0))


def test_job_longer_than_the_cap_runs_once_across_rollovers(workers: WorkerHarness) -> None:
    steps = 40  # about 8 s: the 4 s cap is rolled over several times
    job_id = workers.submit(workers.new_id("long"), steps=steps, tick=0.2)
    holder = workers.start_handler("sum_job", "--max-jobs", "1", **CAP)
    workers.steps_done(job_id, 1, 30)
    idle = workers.start_handler("sum_job", **CAP)  # polls the queue the whole time
    assert workers.wait_exit(holder, 60) == 0, workers.logs()
    idle.send_signal(signal.SIGTERM)
    assert workers.wait_exit(idle, 30) == 0, workers.logs()

    rows = workers.trace(job_id)
    assert sorted(r.step for r in rows) == list(range(1, steps + 1)), "steps lost or redone"
    assert {r.pid for r in rows} == {holder.pid}, "a second worker ran the job"
    assert {r.attempt for r in rows} == {1}
    assert workers.store.get_result(job_id) == {"sum": expected_sum(steps)}
    assert workers.record(job_id).state == JobState.SUCCEEDED
    assert log_of(workers, 0).count("lease.rolled_over") >= 2, workers.logs()
    assert "job.started" not in log_of(workers, 1), workers.logs()
    workers.depth_becomes((0, 0, 0))


def test_worker_killed_after_a_rollover_resumes_elsewhere(workers: WorkerHarness) -> None:
    steps = 30
    job_id = workers.submit(workers.new_id("killed"), steps=steps, tick=0.2)
    first = workers.start_handler("sum_job", **CAP)
    workers.eventually(
        lambda: "lease.rolled_over" in log_of(workers, 0), 30, "a rollover in the first worker"
    )
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    done_before = {r.step for r in workers.trace(job_id)}
    assert 0 < len(done_before) < steps

    second = workers.start_handler("sum_job", "--max-jobs", "1", **CAP)
    assert workers.wait_exit(second, 60) == 0, workers.logs()
    rows = workers.trace(job_id)
    assert {r.step for r in rows} == set(range(1, steps + 1)), "steps lost"
    # Resumed from the checkpoint, not from scratch.
    steps_seen = [f"{r.step}/{r.attempt}/{r.pid}" for r in rows]
    assert redone(rows) <= 1, f"{steps_seen}\n{workers.logs()}"
    assert {r.pid for r in rows if r.step not in done_before} == {second.pid}
    assert workers.store.get_result(job_id) == {"sum": expected_sum(steps)}
    assert workers.record(job_id).state == JobState.SUCCEEDED
    workers.depth_becomes((0, 0, 0))
