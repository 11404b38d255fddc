"""Handling one delivery from receipt to ack, release or dead letter (DESIGN.md section 3).

Pick-up, in order: parse the body (bad JSON or job id: dead-letter at once); read the record
(``succeeded``/``cancelled``: ack without running; held by another live holder: hand it back);
cancel marker: mark ``cancelled`` and ack; validate the payload (bad: dead-letter at once and
mark the record ``dead``). Then run it with a checkpoint claimed for this delivery, and end:

Endings (:mod:`lrtkit.worker.endings`):

* returned: store the result, upload ``ctx.output_dir``, record ``succeeded``, then ack;
* raised: ``failures + 1``; below ``LRT_MAX_FAILURES`` release with exponential backoff
  (record ``failed``), at the limit dead-letter with the exception's summary (record ``dead``);
* stopped: ``cancelled`` is recorded and acked; ``shutdown`` puts the record back to ``queued``
  and releases at once; ``lease_lost`` writes nothing at all. None of these is a failure.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrtkit.errors import InvalidJob, LeaseLost, LrtError, Stop
from lrtkit.jobs import JobRecord, JobState, parse_body, utcnow
from lrtkit.worker.context import CANCELLED, LEASE_LOST, JobContext
from lrtkit.worker.endings import Endings
from lrtkit.worker.lease import LeaseKeeper
from lrtkit.worker.logs import job_logger
from lrtkit.worker.outcome import BadJob, CommandFailed, Outcome, RetryLater, clip, summarize
from lrtkit.worker.retry import retrying

if TYPE_CHECKING:
    from lrtkit.broker import Broker
    from lrtkit.config import Settings
    from lrtkit.records import JobStore
    from lrtkit.storage.base import Storage
    from lrtkit.worker.attempt import Attempt
    from lrtkit.worker.task import Task

INFO = logging.INFO
WARNING = logging.WARNING
HAND_BACK_DELAY = 5.0


class JobProcessor:
    """Runs deliveries through one task; shared by every job thread of a worker."""

    def __init__(  # noqa: PLR0917
        self,
        broker: Broker,
        storage: Storage,
        store: JobStore,
        settings: Settings,
        task: Task,
        work_root: Path | None = None,
    ) -> None:
        self.broker = broker
        self.storage = storage
        self.store = store
        self.settings = settings
        self.task = task
        self.work_root = work_root
        self.end = Endings(broker, store, settings)

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, attempt: Attempt, keeper: LeaseKeeper) -> Outcome:
        """Handle one delivery; the caller started ``keeper`` and this stops it before the end."""
        try:
            return self._handle(attempt, keeper)
        finally:
            keeper.stop()

    def _handle(self, attempt: Attempt, keeper: LeaseKeeper) -> Outcome:
        try:
            job_id, payload = parse_body(attempt.delivery.body)
        except InvalidJob as exc:
            return self.end.dead_letter_now(attempt, keeper, f"invalid job: {exc}", None)
        attempt.job_id = job_id
        attempt.store = self.store
        attempt.log = job_logger(job_id, attempt.attempt_number)
        attempt.log.event(INFO, "job.received")

        try:
            record = self._retry(attempt, "read the job record", lambda: self.store.get(job_id))
            cancel = self._retry(
                attempt, "check the cancel marker", lambda: self.store.cancel_requested(job_id)
            )
        except LrtError as exc:
            return self.end.give_back(
                attempt, keeper, f"storage unavailable: {exc}", self.settings.retry_backoff_seconds
            )

        if record is not None and record.state in (JobState.SUCCEEDED, JobState.CANCELLED):
            return self.end.skipped(attempt, keeper, record.state.value)
        if record is not None and record.held_elsewhere(attempt.owner):
            attempt.log.event(INFO, "job.held_elsewhere", holder=record.holder)
            delay = HAND_BACK_DELAY
            if record.held_until is not None:
                delay = max(0.0, min(delay, (record.held_until - utcnow()).total_seconds()))
            return self.end.give_back(attempt, keeper, "held by another worker", delay)
        if cancel:
            return self.end.cancelled(attempt, keeper)
        try:
            job = self.task.validate(job_id, payload)
        except InvalidJob as exc:
            return self.end.dead_letter_now(attempt, keeper, f"invalid job: {exc}", record)
        return self._run(attempt, keeper, job, record)

    # -- running -------------------------------------------------------------------------------

    def _run(
        self, attempt: Attempt, keeper: LeaseKeeper, job: Any, record: JobRecord | None
    ) -> Outcome:
        from lrtkit.checkpoint import Checkpoint

        assert attempt.job_id is not None
        job_id = attempt.job_id
        attempts = (record.attempts if record else 0) + 1
        # A dead record on a delivered job means it was sent back from the dead-letter queue
        # (``lrtkit dlq redrive``): it starts with a clean failure count.
        failures_before = record.failures if record and record.state != JobState.DEAD else 0
        try:
            self._retry(
                attempt,
                "mark the job running",
                lambda: attempt.update_record(
                    state=JobState.RUNNING, attempts=attempts, failures=failures_before
                ),
            )
            checkpoint = Checkpoint(
                self.storage, job_id, owner=attempt.owner, keep=self.settings.checkpoint_keep
            )
            self._retry(attempt, "claim the checkpoint", checkpoint.claim)
        except LeaseLost as exc:
            attempt.lose(str(exc))
            return Outcome.INTERRUPTED
        except LrtError as exc:
            return self.end.give_back(
                attempt, keeper, f"storage unavailable: {exc}", self.settings.retry_backoff_seconds
            )

        folder = Path(tempfile.mkdtemp(prefix=f"lrt-{job_id[:40]}-", dir=self.work_root))
        output_dir = folder / "output"
        output_dir.mkdir()
        ctx = JobContext(job_id, attempt.attempt_number, checkpoint, output_dir, attempt.log)
        attempt.attach(ctx, checkpoint)
        attempt.log.event(INFO, "job.started", task=self.task.name, attempts=attempts)
        try:
            return self._execute(attempt, keeper, ctx, job, failures_before)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _execute(
        self, attempt: Attempt, keeper: LeaseKeeper, ctx: JobContext, job: Any, failures_before: int
    ) -> Outcome:
        try:
            result = self.task.run(attempt, ctx, job)
        except Stop as stop:
            if attempt.stop_reason is None:
                # The handler raised Stop on its own: an interruption, retried after a pause.
                why = f"the handler raised Stop({stop.reason!r})"
                return self.end.interrupted(
                    attempt, keeper, why, self.settings.retry_backoff_seconds
                )
            return self.end.stopped(attempt, keeper, attempt.stop_reason)
        except LeaseLost as exc:
            # A checkpoint save was fenced out: a newer holder owns the job. Not a failure.
            attempt.lose(f"checkpoint fenced out: {exc}")
            return self.end.stopped(attempt, keeper, LEASE_LOST)
        except RetryLater as exc:
            if attempt.stop_reason is not None:
                return self.end.stopped(attempt, keeper, attempt.stop_reason)
            return self.end.interrupted(
                attempt, keeper, str(exc), self.settings.retry_backoff_seconds
            )
        except (BadJob, InvalidJob) as exc:
            if attempt.stop_reason is not None:
                return self.end.stopped(attempt, keeper, attempt.stop_reason)
            return self.end.dead_letter_now(attempt, keeper, clip(f"{exc}"), None)
        except (Exception, SystemExit) as exc:
            if attempt.stop_reason is not None:
                attempt.log.event(WARNING, "job.raised_while_stopping", error=summarize(exc))
                return self.end.stopped(attempt, keeper, attempt.stop_reason)
            if isinstance(exc, CommandFailed):
                summary = str(exc)
            else:
                summary = summarize(exc)
                attempt.log.error("job.raised", exc_info=exc)
            return self.end.failed(attempt, keeper, summary, failures_before + 1)
        if attempt.lost.is_set():
            return self.end.stopped(attempt, keeper, LEASE_LOST)
        if attempt.stop_reason == CANCELLED:
            return self.end.stopped(attempt, keeper, CANCELLED)
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            summary = (
                f"the handler returned a {type(result).__name__}, which is not JSON-serialisable "
                f"({exc}): return dicts, lists, strings, numbers, booleans or None"
            )
            return self.end.failed(attempt, keeper, clip(summary), failures_before + 1)
        return self.end.succeeded(attempt, keeper, ctx, result)

    @staticmethod
    def _retry(attempt: Attempt, what: str, op: Any) -> Any:
        return retrying(what, op, keep_trying=lambda: not attempt.lost.is_set())
