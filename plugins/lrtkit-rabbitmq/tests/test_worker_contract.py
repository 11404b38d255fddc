"""The worker contract suite (real ``lrtkit run`` processes) on a real RabbitMQ."""

from __future__ import annotations

from lrtkit.testing.worker_contract import WorkerContract


class TestRabbitWorker(WorkerContract):
    lease_seconds = 2.0
