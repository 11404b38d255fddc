"""The worker contract suite (real ``lrtkit run`` processes, SIGKILL, SIGTERM) on SQS."""

from __future__ import annotations

from lrtkit.testing.worker_contract import WorkerContract


class TestSqsWorker(WorkerContract):
    lease_seconds = 2.0
