"""The worker contract on the embedded SQLite broker, plus unit tests of the worker's pieces."""

from __future__ import annotations

from lrtkit.testing.worker_contract import WorkerContract


class TestLocalWorker(WorkerContract):
    """Every worker guarantee, with real worker processes on the local broker."""
