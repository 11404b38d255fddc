"""The worker loop: receive, run up to N jobs in threads, shut down gracefully.

One broker object is shared by every thread (brokers are thread-safe by contract). The main
thread receives; each job runs in its own thread with its own lease keeper. On the first
SIGTERM/SIGINT the worker stops receiving and asks every running job to stop (reason
``shutdown``); handlers get ``LRT_GRACE_SECONDS`` to save and return, then any job still running
is released at once (its checkpoint fenced first) so another worker starts it without waiting
for a lease to run out. A second signal exits at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lrtkit.errors import ConfigError, LeaseLost, LrtError
from lrtkit.jobs import JobState
from lrtkit.worker.attempt import Attempt
from lrtkit.worker.context import SHUTDOWN
from lrtkit.worker.lease import LeaseKeeper
from lrtkit.worker.logs import event, job_logger, log
from lrtkit.worker.outcome import Outcome
from lrtkit.worker.retry import backoff, is_transient
from lrtkit.worker.signals import shutdown_signals

if TYPE_CHECKING:
    from lrtkit.autoscale.imds import NodeReporter
    from lrtkit.broker import Broker
    from lrtkit.worker.process import JobProcessor

INFO = logging.INFO
WARNING = logging.WARNING
RECEIVE_WAIT = 2.0
PAUSE = 0.5


@dataclass
class Limits:
    concurrency: int = 1
    exit_when_idle: float | None = None
    max_jobs: int | None = None


class Worker:
    """Receives deliveries and runs them through a :class:`JobProcessor`."""

    def __init__(
        self,
        broker: Broker,
        processor: JobProcessor,
        reporter: NodeReporter,
        limits: Limits,
        *,
        lease_seconds: float,
        grace_seconds: float,
    ) -> None:
        if limits.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {limits.concurrency}")
        if limits.max_jobs is not None and limits.max_jobs < 1:
            raise ConfigError(f"--max-jobs must be at least 1, got {limits.max_jobs}")
        if limits.exit_when_idle is not None and limits.exit_when_idle < 0:
            raise ConfigError(f"--exit-when-idle must not be negative, got {limits.exit_when_idle}")
        self.broker = broker
        self.processor = processor
        self.reporter = reporter
        self.limits = limits
        self.lease_seconds = lease_seconds
        self.grace_seconds = grace_seconds
        self.shutdown = threading.Event()
        self._shutdown_at: float | None = None
        # Reentrant: the signal handler runs on the main thread, maybe while it holds the lock.
        self._lock = threading.RLock()
        self._running: dict[Attempt, tuple[threading.Thread, LeaseKeeper]] = {}
        self._changed = threading.Event()
        self._last_job_end = 0.0
        self.finished = 0
        self.outcomes: Counter[Outcome] = Counter()

    # -- control -------------------------------------------------------------------------------

    def request_shutdown(self, signum: int | None = None) -> None:
        """Stop receiving and ask every running job to stop (reason ``shutdown``)."""
        if self.shutdown.is_set():
            return
        self._shutdown_at = time.monotonic()
        self.shutdown.set()
        with self._lock:
            attempts = list(self._running)
        event(
            log,
            INFO,
            "worker.shutdown",
            signal=signum,
            running=len(attempts),
            grace=self.grace_seconds,
        )
        for attempt in attempts:
            attempt.request_stop(SHUTDOWN)
        self._changed.set()

    def exit_now(self, signum: int) -> None:
        """A second signal: kill command children and leave without cleanup."""
        event(log, WARNING, "worker.exit_now", signal=signum)
        with self._lock:
            attempts = list(self._running)
        for attempt in attempts:
            if attempt.child is not None and attempt.child.poll() is None:
                attempt.child.kill()
        logging.shutdown()
        os._exit(128 + signum)

    # -- main loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until shutdown, idle timeout or ``max_jobs``; return the exit code."""
        with shutdown_signals(self.request_shutdown, self.exit_now):
            event(
                log,
                INFO,
                "worker.started",
                broker=self.broker.name,
                task=self.processor.task.name,
                concurrency=self.limits.concurrency,
                pid=os.getpid(),
            )
            self._safe_report("idle")
            code = self._loop()
            self._drain()
        counts = {outcome.value: n for outcome, n in sorted(self.outcomes.items(), key=str)}
        event(log, INFO, "worker.stopped", jobs=self.finished, code=code, **counts)
        return code

    def _loop(self) -> int:
        idle_since = time.monotonic()
        found_empty = False  # idle exits need one empty receive since the last job
        errors = 0
        limits = self.limits
        while not self.shutdown.is_set():
            with self._lock:
                running = len(self._running)
                started = self.finished + running
                # Idle time counts from when the last job ended, not from when it began.
                idle_since = max(idle_since, self._last_job_end)
            if limits.max_jobs is not None and started >= limits.max_jobs:
                if running == 0:
                    event(log, INFO, "worker.max_jobs", jobs=self.finished)
                    return 0
                self._wait_for_change()
                continue
            if running >= limits.concurrency:
                self._wait_for_change()
                continue
            wait = RECEIVE_WAIT
            if limits.exit_when_idle is not None and running == 0:
                idle_for = time.monotonic() - idle_since
                if found_empty and idle_for >= limits.exit_when_idle:
                    event(log, INFO, "worker.idle_exit", idle_seconds=round(idle_for, 1))
                    return 0
                wait = max(0.05, min(wait, limits.exit_when_idle - idle_for))
            try:
                delivery = self.broker.receive(wait)
            except LrtError as exc:
                if not is_transient(exc):
                    event(
                        log,
                        logging.ERROR,
                        "worker.broker_error",
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    return 1
                errors += 1
                pause = backoff(errors)
                event(
                    log,
                    WARNING,
                    "worker.receive_retry",
                    attempt=errors,
                    pause=round(pause, 2),
                    error=str(exc),
                )
                self.shutdown.wait(pause)
                continue
            errors = 0
            if delivery is None:
                found_empty = running == 0
                continue
            found_empty = False
            idle_since = time.monotonic()
            if self.shutdown.is_set():
                self._release_unstarted(delivery)
                break
            self._start(Attempt(delivery, job_logger(None, delivery.delivery_count)))
        return 0

    def _wait_for_change(self) -> None:
        self._changed.wait(PAUSE)
        self._changed.clear()

    def _release_unstarted(self, delivery: object) -> None:
        from lrtkit.broker import Delivery

        assert isinstance(delivery, Delivery)
        try:
            self.broker.release(delivery, 0)
        except LrtError as exc:
            event(log, WARNING, "worker.release_failed", error=str(exc))

    # -- job threads ---------------------------------------------------------------------------

    def _start(self, attempt: Attempt) -> None:
        keeper = LeaseKeeper(self.broker, attempt, self.lease_seconds)
        thread = threading.Thread(
            target=self._job_thread,
            args=(attempt, keeper),
            name=f"job-{attempt.owner[-12:]}",
            daemon=True,
        )
        with self._lock:
            first = not self._running
            self._running[attempt] = (thread, keeper)
        if first:
            self._safe_report("busy")
        keeper.start()
        thread.start()

    def _job_thread(self, attempt: Attempt, keeper: LeaseKeeper) -> None:
        outcome = Outcome.INTERRUPTED
        try:
            outcome = self.processor.handle(attempt, keeper)
        except BaseException as exc:
            attempt.log.error("job.crashed", exc_info=exc)
            with contextlib.suppress(Exception):
                self.processor.end.crashed(attempt, keeper)
        finally:
            with self._lock:
                self._running.pop(attempt, None)
                self._last_job_end = time.monotonic()
                if outcome.counts:
                    self.finished += 1
                self.outcomes[outcome] += 1
                now_idle = not self._running
            if outcome is Outcome.SUCCEEDED:
                self._safe_report("job_succeeded")
            elif outcome in (Outcome.FAILED, Outcome.DEAD):
                self._safe_report("job_failed")
            if now_idle:
                self._safe_report("idle")
            self._changed.set()

    def _drain(self) -> None:
        """Wait for running jobs; after a shutdown only for the grace period, then release them."""
        while True:
            with self._lock:
                running = list(self._running.items())
            if not running:
                return
            if not self.shutdown.is_set():
                self._wait_for_change()
                continue
            assert self._shutdown_at is not None
            deadline = self._shutdown_at + self.grace_seconds
            for _attempt, (thread, _keeper) in running:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                break
        with self._lock:
            late = list(self._running.items())
        for attempt, (thread, keeper) in late:
            if self._abandon(attempt, keeper):
                continue
            # The job thread is writing the job's outcome right now: let it finish.
            thread.join(timeout=self.lease_seconds)

    def _abandon(self, attempt: Attempt, keeper: LeaseKeeper) -> bool:
        """Release a job whose handler did not return within the grace period."""
        if not attempt.claim_final():
            return False
        attempt.log.event(WARNING, "job.grace_expired", grace=self.grace_seconds)
        if attempt.checkpoint is not None:
            attempt.checkpoint.revoke("the worker shut down after the grace period")
        if attempt.child is not None and attempt.child.poll() is None:
            attempt.child.kill()
        keeper.stop()
        if attempt.lost.is_set():
            return True
        try:
            attempt.update_record(final=True, state=JobState.QUEUED, holder=None, held_until=None)
        except LrtError as exc:
            attempt.log.event(WARNING, "record.write_failed", error=str(exc))
        try:
            self.broker.release(attempt.delivery, 0)
            attempt.log.event(INFO, "job.released", reason=SHUTDOWN)
        except LeaseLost:
            pass
        except LrtError as exc:
            attempt.log.event(WARNING, "broker.call_failed", action="release", error=str(exc))
        return True

    def _safe_report(self, what: str) -> None:
        try:
            getattr(self.reporter, what)()
        except Exception as exc:  # noqa: BLE001 - node reporting never breaks the worker
            event(log, WARNING, "node.report_failed", call=what, error=str(exc))
