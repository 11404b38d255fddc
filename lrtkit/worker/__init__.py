"""The worker runtime: ``lrtkit run MOD:FN`` and ``lrtkit run --command CMD``.

:func:`run_worker` serves jobs from the broker named by ``LRT_BROKER`` with a handler or a
command, keeping every rule of DESIGN.md section 3 (heartbeat, fencing, graceful shutdown,
failures versus interruptions, dead letters, cancellation). See docs/worker.md.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from lrtkit.errors import ConfigError
from lrtkit.worker.context import JobContext
from lrtkit.worker.handler import load_handler
from lrtkit.worker.logs import configure_logging, event, log

if TYPE_CHECKING:
    from lrtkit.broker import Broker
    from lrtkit.config import Settings
    from lrtkit.worker.task import Task

__all__ = ["JobContext", "load_handler", "run_worker"]

STARTUP_RETRY_SECONDS = 300.0


def _task(
    settings: Settings, handler: str | None, command: str | None, checkpoint_interval: float | None
) -> Task:
    if (handler is None) == (command is None):
        raise ConfigError("give exactly one of a handler (MODULE:FUNCTION) or --command CMD")
    if handler is not None:
        from lrtkit.worker.task import PythonTask

        return PythonTask(handler)
    from lrtkit.worker.command import CommandTask

    interval = (
        checkpoint_interval if checkpoint_interval is not None else settings.heartbeat_seconds
    )
    if interval <= 0:
        raise ConfigError(f"--checkpoint-interval must be positive, got {interval}")
    assert command is not None
    return CommandTask(command, checkpoint_interval=interval, grace_seconds=settings.grace_seconds)


def _connect(settings: Settings) -> Broker:
    """The broker, retrying connection trouble for a while (services may start after us)."""
    from lrtkit.plugins import load_broker
    from lrtkit.worker.retry import retrying

    deadline = time.monotonic() + STARTUP_RETRY_SECONDS
    return retrying("connect to the broker", lambda: load_broker(settings), deadline=deadline)


def run_worker(
    settings: Settings,
    *,
    handler: str | None = None,
    command: str | None = None,
    concurrency: int = 1,
    exit_when_idle: float | None = None,
    max_jobs: int | None = None,
    checkpoint_interval: float | None = None,
) -> int:
    """Serve jobs; return 0 after shutdown, idle time or ``max_jobs``, 1 on a broker failure.

    Exactly one of ``handler`` (``"module:function"``) and ``command`` is given.
    ``checkpoint_interval`` (command mode) is how often the checkpoint folder is uploaded while
    the command runs (default: every heartbeat, ``LRT_LEASE_SECONDS / 3``). Raises
    :class:`~lrtkit.errors.ConfigError` for a bad handler, command or limit.
    """
    from lrtkit.autoscale.imds import node_reporter
    from lrtkit.plugins import load_storage
    from lrtkit.records import JobStore
    from lrtkit.worker.process import JobProcessor
    from lrtkit.worker.runtime import Limits, Worker

    configure_logging(settings.log_level, settings.log_format)
    task = _task(settings, handler, command, checkpoint_interval)
    limits = Limits(concurrency=concurrency, exit_when_idle=exit_when_idle, max_jobs=max_jobs)
    storage = load_storage(settings)
    broker = _connect(settings)
    try:
        processor = JobProcessor(broker, storage, JobStore(storage), settings, task)
        worker = Worker(
            broker,
            processor,
            node_reporter(settings),
            limits,
            lease_seconds=settings.lease_seconds,
            grace_seconds=settings.grace_seconds,
        )
        return worker.run()
    finally:
        try:
            broker.close()
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            event(log, logging.WARNING, "broker.close_failed", error=str(exc))
