"""Handling one delivery from receipt to ack, release or dead letter (DESIGN.md section 3).

Pick-up, in order: parse the body (bad JSON or job id: dead-letter at once); read the record
(``succeeded``/``cancelled``: ack without running; held by another live holder: hand it back);
cancel marker: mark ``cancelled`` and ack; validate the payload (bad: dead-letter at once and
mark the record ``dead``). Then run it with a checkpoint claimed for this delivery, and end:

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
from lrtkit.jobs import JobRecord, JobState, parse_body
from lrtkit.worker.context import CANCELLED, LEASE_LOST, JobContext
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
MAX_BACKOFF = 3600.0
HAND_BACK_DELAY = 5.0


def retry_delay(settings: Settings, failures: int) -> float:
    """``LRT_RETRY_BACKOFF_SECONDS * 2**(failures-1)``, capped at an hour."""
    return float(min(MAX_BACKOFF, settings.retry_backoff_seconds * 2 ** max(0, failures - 1)))


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
            return self._dead_letter_now(attempt, keeper, f"invalid job: {exc}", None)
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
            return self._give_back(
                attempt, keeper, f"storage unavailable: {exc}", self.settings.retry_backoff_seconds
            )

        if record is not None and record.state in (JobState.SUCCEEDED, JobState.CANCELLED):
            attempt.log.event(INFO, "job.skipped", state=record.state.value)
            self._final_broker_op(attempt, keeper, "ack", lambda: self.broker.ack(attempt.delivery))
            return Outcome.SKIPPED
        if record is not None and record.held_elsewhere(attempt.owner):
            attempt.log.event(INFO, "job.held_elsewhere", holder=record.holder)
            delay = HAND_BACK_DELAY
            if record.held_until is not None:
                from lrtkit.jobs import utcnow

                delay = max(0.0, min(delay, (record.held_until - utcnow()).total_seconds()))
            return self._give_back(attempt, keeper, "held by another worker", delay)
        if cancel:
            return self._cancelled(attempt, keeper)
        try:
            job = self.task.validate(payload)
        except InvalidJob as exc:
            return self._dead_letter_now(attempt, keeper, f"invalid job: {exc}", record)
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
            return self._give_back(
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
                return self._interrupted(attempt, keeper, why, self.settings.retry_backoff_seconds)
            return self._stopped(attempt, keeper, attempt.stop_reason)
        except LeaseLost as exc:
            # A checkpoint save was fenced out: a newer holder owns the job. Not a failure.
            attempt.lose(f"checkpoint fenced out: {exc}")
            return self._stopped(attempt, keeper, LEASE_LOST)
        except RetryLater as exc:
            if attempt.stop_reason is not None:
                return self._stopped(attempt, keeper, attempt.stop_reason)
            return self._interrupted(attempt, keeper, str(exc), self.settings.retry_backoff_seconds)
        except (BadJob, InvalidJob) as exc:
            if attempt.stop_reason is not None:
                return self._stopped(attempt, keeper, attempt.stop_reason)
            return self._dead_letter_now(attempt, keeper, clip(f"{exc}"), None)
        except (Exception, SystemExit) as exc:
            if attempt.stop_reason is not None:
                attempt.log.event(WARNING, "job.raised_while_stopping", error=summarize(exc))
                return self._stopped(attempt, keeper, attempt.stop_reason)
            if isinstance(exc, CommandFailed):
                summary = str(exc)
            else:
                summary = summarize(exc)
                attempt.log.error("job.raised", exc_info=exc)
            return self._failed(attempt, keeper, summary, failures_before + 1)
        if attempt.lost.is_set():
            return self._stopped(attempt, keeper, LEASE_LOST)
        if attempt.stop_reason == CANCELLED:
            return self._stopped(attempt, keeper, CANCELLED)
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            summary = (
                f"the handler returned a {type(result).__name__}, which is not JSON-serialisable "
                f"({exc}): return dicts, lists, strings, numbers, booleans or None"
            )
            return self._failed(attempt, keeper, clip(summary), failures_before + 1)
        return self._succeeded(attempt, keeper, ctx, result)

    # -- endings -------------------------------------------------------------------------------

    def _succeeded(
        self, attempt: Attempt, keeper: LeaseKeeper, ctx: JobContext, result: Any
    ) -> Outcome:
        assert attempt.job_id is not None
        job_id = attempt.job_id
        if not self._take_final(attempt):
            return Outcome.INTERRUPTED
        try:
            self._retry(attempt, "store the result", lambda: self.store.put_result(job_id, result))
            files = self._retry(
                attempt,
                "upload artifacts",
                lambda: self.store.upload_artifacts(job_id, ctx.output_dir),
            )
            if attempt.lost.is_set():
                return Outcome.INTERRUPTED
            fields: dict[str, Any] = {
                "state": JobState.SUCCEEDED,
                "result": result,
                "error": None,
                "holder": None,
                "held_until": None,
            }
            progress = ctx.take_progress()
            if progress is not None:
                fields["progress"] = progress
            self._retry(
                attempt,
                "mark the job succeeded",
                lambda: attempt.update_record(final=True, **fields),
            )
        except LeaseLost as exc:
            attempt.lose(str(exc))
            return Outcome.INTERRUPTED
        except LrtError as exc:
            # Not done: let the job come back (the checkpoint makes the rerun short).
            attempt.log.event(WARNING, "job.finish_failed", error=f"{type(exc).__name__}: {exc}")
            self._release(attempt, keeper, self.settings.retry_backoff_seconds)
            return Outcome.INTERRUPTED
        if attempt.lost.is_set():
            return Outcome.INTERRUPTED
        self._final_broker_op(attempt, keeper, "ack", lambda: self.broker.ack(attempt.delivery))
        attempt.log.event(INFO, "job.succeeded", artifacts=files)
        return Outcome.SUCCEEDED

    def _failed(
        self, attempt: Attempt, keeper: LeaseKeeper, summary: str, failures: int
    ) -> Outcome:
        if not self._take_final(attempt):
            return Outcome.INTERRUPTED
        limit = self.settings.max_failures
        dead = failures >= limit
        state = JobState.DEAD if dead else JobState.FAILED
        try:
            self._retry(
                attempt,
                "record the failure",
                lambda: attempt.update_record(
                    final=True,
                    state=state,
                    failures=failures,
                    error=summary,
                    holder=None,
                    held_until=None,
                ),
            )
        except LrtError as exc:
            attempt.log.event(WARNING, "record.write_failed", error=str(exc))
        if dead:
            reason = clip(f"failed {failures} time(s) (LRT_MAX_FAILURES={limit}): {summary}")
            attempt.log.event(WARNING, "job.dead", failures=failures, reason=reason)
            self._final_broker_op(
                attempt,
                keeper,
                "dead-letter",
                lambda: self.broker.dead_letter(attempt.delivery, reason),
            )
            return Outcome.DEAD
        delay = retry_delay(self.settings, failures)
        attempt.log.event(WARNING, "job.failed", failures=failures, retry_in=delay, error=summary)
        self._final_broker_op(
            attempt, keeper, "release", lambda: self.broker.release(attempt.delivery, delay)
        )
        return Outcome.FAILED

    def _stopped(self, attempt: Attempt, keeper: LeaseKeeper, reason: str) -> Outcome:
        if reason == LEASE_LOST or attempt.lost.is_set():
            attempt.log.event(WARNING, "job.abandoned", reason="lease_lost")
            return Outcome.INTERRUPTED
        if reason == CANCELLED:
            return self._cancelled(attempt, keeper)
        return self._interrupted(attempt, keeper, reason, 0.0)

    def _interrupted(
        self, attempt: Attempt, keeper: LeaseKeeper, why: str, delay: float
    ) -> Outcome:
        if not self._take_final(attempt):
            return Outcome.INTERRUPTED
        try:
            self._retry(
                attempt,
                "put the job back to queued",
                lambda: attempt.update_record(
                    final=True, state=JobState.QUEUED, holder=None, held_until=None
                ),
            )
        except LrtError as exc:
            attempt.log.event(WARNING, "record.write_failed", error=str(exc))
        attempt.log.event(INFO, "job.interrupted", reason=why, retry_in=delay)
        self._release(attempt, keeper, delay)
        return Outcome.INTERRUPTED

    def _cancelled(self, attempt: Attempt, keeper: LeaseKeeper) -> Outcome:
        if not self._take_final(attempt):
            return Outcome.INTERRUPTED
        try:
            self._retry(
                attempt,
                "mark the job cancelled",
                lambda: attempt.update_record(
                    final=True, state=JobState.CANCELLED, holder=None, held_until=None
                ),
            )
        except LrtError as exc:
            attempt.log.event(WARNING, "record.write_failed", error=str(exc))
        attempt.log.event(INFO, "job.cancelled")
        self._final_broker_op(attempt, keeper, "ack", lambda: self.broker.ack(attempt.delivery))
        return Outcome.CANCELLED

    def _dead_letter_now(
        self, attempt: Attempt, keeper: LeaseKeeper, reason: str, record: JobRecord | None
    ) -> Outcome:
        """A job that can never succeed: dead-letter it now, with the reason, and mark it dead."""
        if not self._take_final(attempt):
            return Outcome.INTERRUPTED
        reason = clip(reason)
        attempt.log.event(WARNING, "job.invalid", reason=reason)
        if attempt.job_id is not None:
            try:
                self._retry(
                    attempt,
                    "mark the job dead",
                    lambda: attempt.update_record(final=True, state=JobState.DEAD, error=reason),
                )
            except LrtError as exc:
                attempt.log.event(WARNING, "record.write_failed", error=str(exc))
        self._final_broker_op(
            attempt,
            keeper,
            "dead-letter",
            lambda: self.broker.dead_letter(attempt.delivery, reason),
        )
        return Outcome.INVALID

    def _give_back(self, attempt: Attempt, keeper: LeaseKeeper, why: str, delay: float) -> Outcome:
        """Release without running and without touching the record."""
        if not self._take_final(attempt):
            return Outcome.INTERRUPTED
        attempt.log.event(INFO, "job.handed_back", reason=why, retry_in=round(delay, 2))
        self._release(attempt, keeper, delay)
        return Outcome.HANDED_BACK

    # -- broker and storage calls ----------------------------------------------------------------

    def _take_final(self, attempt: Attempt) -> bool:
        """Take the right to end the delivery, once its lease is confirmed still ours.

        A worker that was frozen (or cut off) past its lease may wake up with a finished handler
        before its heartbeat notices; renewing the lease once more here, and checking the local
        deadline, keeps such a stale holder from writing a result, a record or an ack.
        """
        if not attempt.claim_final():
            return False
        if attempt.lost.is_set():
            return False
        try:
            self.broker.extend(attempt.delivery, self.settings.lease_seconds)
        except LeaseLost as exc:
            attempt.lose(f"lease gone when the job ended: {exc}")
            return False
        except LrtError as exc:
            # Connection trouble: the local deadline (checked by extend) still protects us.
            attempt.log.event(WARNING, "lease.confirm_failed", error=f"{type(exc).__name__}: {exc}")
        return True

    def _release(self, attempt: Attempt, keeper: LeaseKeeper, delay: float) -> None:
        self._final_broker_op(
            attempt, keeper, "release", lambda: self.broker.release(attempt.delivery, delay)
        )

    def _final_broker_op(self, attempt: Attempt, keeper: LeaseKeeper, what: str, op: Any) -> None:
        """Stop the heartbeat, then ack/release/dead-letter, retrying connection trouble."""
        keeper.stop()
        if attempt.lost.is_set():
            return
        try:
            retrying(what, op, keep_trying=lambda: not attempt.delivery.lease_expired())
        except LeaseLost as exc:
            attempt.log.event(WARNING, "lease.lost", action=what, reason=str(exc))
        except LrtError as exc:
            attempt.log.event(
                logging.ERROR,
                "broker.call_failed",
                action=what,
                error=f"{type(exc).__name__}: {exc}",
            )

    @staticmethod
    def _retry(attempt: Attempt, what: str, op: Any) -> Any:
        return retrying(what, op, keep_trying=lambda: not attempt.lost.is_set())
