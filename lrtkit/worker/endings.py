"""How a delivery ends: ack, release or dead letter, and what the job record then says.

Every ending first takes the right to end the delivery (once only: the job thread and the
shutdown path may race for it) and confirms the lease is still held, then writes the record,
then talks to the broker. A holder whose lease is gone writes nothing at all.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lrtkit.errors import LeaseLost, LrtError
from lrtkit.jobs import JobState
from lrtkit.worker.context import CANCELLED, LEASE_LOST
from lrtkit.worker.outcome import Outcome, clip
from lrtkit.worker.retry import retrying

if TYPE_CHECKING:
    from lrtkit.broker import Broker
    from lrtkit.config import Settings
    from lrtkit.jobs import JobRecord
    from lrtkit.records import JobStore
    from lrtkit.worker.attempt import Attempt
    from lrtkit.worker.context import JobContext
    from lrtkit.worker.lease import LeaseKeeper

INFO = logging.INFO
WARNING = logging.WARNING
MAX_BACKOFF = 3600.0


def retry_delay(settings: Settings, failures: int) -> float:
    """``LRT_RETRY_BACKOFF_SECONDS * 2**(failures-1)``, capped at an hour."""
    return float(min(MAX_BACKOFF, settings.retry_backoff_seconds * 2 ** max(0, failures - 1)))


class Endings:
    """The ways one delivery can end; shared by every job thread of a worker."""

    def __init__(self, broker: Broker, store: JobStore, settings: Settings) -> None:
        self.broker = broker
        self.store = store
        self.settings = settings

    def skipped(self, attempt: Attempt, keeper: LeaseKeeper, state: str) -> Outcome:
        """Already succeeded or cancelled: ack without running."""
        if not self._take_final(attempt):
            return Outcome.INTERRUPTED
        attempt.log.event(INFO, "job.skipped", state=state)
        self.final_broker_op(attempt, keeper, "ack", lambda: self.broker.ack(attempt.delivery))
        return Outcome.SKIPPED

    # -- endings -------------------------------------------------------------------------------

    def succeeded(
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
        except Exception as exc:  # noqa: BLE001 - storage, a full disk, a record it rejects
            # Not done: let the job come back (the checkpoint makes the rerun short).
            attempt.log.event(WARNING, "job.finish_failed", error=f"{type(exc).__name__}: {exc}")
            self._release(attempt, keeper, self.settings.retry_backoff_seconds)
            return Outcome.INTERRUPTED
        if attempt.lost.is_set():
            return Outcome.INTERRUPTED
        self.final_broker_op(attempt, keeper, "ack", lambda: self.broker.ack(attempt.delivery))
        attempt.log.event(INFO, "job.succeeded", artifacts=files)
        return Outcome.SUCCEEDED

    def failed(self, attempt: Attempt, keeper: LeaseKeeper, summary: str, failures: int) -> Outcome:
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
            self.final_broker_op(
                attempt,
                keeper,
                "dead-letter",
                lambda: self.broker.dead_letter(attempt.delivery, reason),
            )
            return Outcome.DEAD
        delay = retry_delay(self.settings, failures)
        attempt.log.event(WARNING, "job.failed", failures=failures, retry_in=delay, error=summary)
        self.final_broker_op(
            attempt, keeper, "release", lambda: self.broker.release(attempt.delivery, delay)
        )
        return Outcome.FAILED

    def stopped(self, attempt: Attempt, keeper: LeaseKeeper, reason: str) -> Outcome:
        if reason == LEASE_LOST or attempt.lost.is_set():
            attempt.log.event(WARNING, "job.abandoned", reason="lease_lost")
            return Outcome.INTERRUPTED
        if reason == CANCELLED:
            return self.cancelled(attempt, keeper)
        return self.interrupted(attempt, keeper, reason, 0.0)

    def interrupted(self, attempt: Attempt, keeper: LeaseKeeper, why: str, delay: float) -> Outcome:
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

    def cancelled(self, attempt: Attempt, keeper: LeaseKeeper) -> Outcome:
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
        self.final_broker_op(attempt, keeper, "ack", lambda: self.broker.ack(attempt.delivery))
        return Outcome.CANCELLED

    def dead_letter_now(
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
        self.final_broker_op(
            attempt,
            keeper,
            "dead-letter",
            lambda: self.broker.dead_letter(attempt.delivery, reason),
        )
        return Outcome.INVALID

    def give_back(self, attempt: Attempt, keeper: LeaseKeeper, why: str, delay: float) -> Outcome:
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

    def crashed(self, attempt: Attempt, keeper: LeaseKeeper) -> None:
        """The worker's own code failed on this job: hand it back (after a backoff) unless
        someone already ended the delivery, so it is never left held until the lease runs out."""
        if attempt.claim_final():
            self._release(attempt, keeper, self.settings.retry_backoff_seconds)

    def _release(self, attempt: Attempt, keeper: LeaseKeeper, delay: float) -> None:
        self.final_broker_op(
            attempt, keeper, "release", lambda: self.broker.release(attempt.delivery, delay)
        )

    def final_broker_op(self, attempt: Attempt, keeper: LeaseKeeper, what: str, op: Any) -> None:
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
