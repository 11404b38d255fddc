"""The heartbeat of one held job: lease renewal, cancel marker, progress, lease rollover.

Every ``lease/3`` seconds the keeper

1. renews the lease (``broker.extend``); a :class:`~lrtkit.errors.LeaseLost` stops the job with
   reason ``lease_lost`` and fences its checkpoint; connection trouble is retried sooner, until
   the lease's own deadline has passed (then the lease counts as lost);
2. for a broker with ``max_lease_seconds`` (SQS: 12 h), shortly before that cap writes the job
   record's ``holder``/``held_until`` and calls ``broker.rollover`` (other workers that receive
   the job meanwhile hand it back), then keeps ``held_until`` fresh on every beat;
3. looks for the cancel marker (``lrtkit cancel``) and stops the job with reason ``cancelled``;
4. writes the newest ``ctx.progress`` report into the job record (at most once per beat).

Steps 1-2 run on one thread and 3-4 on another, so a slow storage call never delays a renewal.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from lrtkit.errors import LeaseLost, LrtError
from lrtkit.jobs import utcnow
from lrtkit.worker.context import CANCELLED

if TYPE_CHECKING:
    from lrtkit.broker import Broker
    from lrtkit.worker.attempt import Attempt

WARNING = logging.WARNING
RETRY_PAUSE = 1.0


class LeaseKeeper:
    """A daemon thread keeping one delivery's lease alive until :meth:`stop`."""

    def __init__(self, broker: Broker, attempt: Attempt, lease_seconds: float) -> None:
        self.broker = broker
        self.attempt = attempt
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / 3
        self._stop = threading.Event()
        # Two threads: a slow storage call (cancel marker, progress) never delays a renewal.
        self._threads = [
            threading.Thread(target=self._run, name=f"lease-{attempt.owner[-12:]}", daemon=True),
            threading.Thread(target=self._watch, name=f"watch-{attempt.owner[-12:]}", daemon=True),
        ]
        # The broker counts its cap from when it handed the message out, which may be before
        # receive() returned (a long poll): the delivery's conservative lease deadline says when.
        self._lease_started = self._receipt_time(attempt, lease_seconds)
        cap = broker.max_lease_seconds
        # Roll over a good margin before the cap: a full lease plus one beat of slack.
        self._rollover_after = (
            None if cap is None else max(cap / 2, cap - self.lease_seconds - self.interval)
        )

    @staticmethod
    def _receipt_time(attempt: Attempt, lease_seconds: float) -> float:
        deadline = attempt.delivery.lease_deadline
        if math.isfinite(deadline):
            return min(attempt.received_at, deadline - lease_seconds)
        return attempt.received_at

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads; waits for a renewal in flight, never for a storage call.

        A late storage duty is harmless: the job's final record write closes the record to
        heartbeat writes, and a stop request after the end changes nothing.
        """
        self._stop.set()
        renewer = self._threads[0]
        if renewer.is_alive() and renewer is not threading.current_thread():
            renewer.join(timeout=self.lease_seconds)

    def _run(self) -> None:
        self._loop(self.renew)

    def _watch(self) -> None:
        self._loop(self.watch)

    def _loop(self, step: Callable[[], float]) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            if self.attempt.lost.is_set():
                return
            try:
                wait = step()
            except Exception as exc:  # noqa: BLE001 - the heartbeat must outlive any bug
                self.attempt.log.event(
                    WARNING, "heartbeat.error", error=f"{type(exc).__name__}: {exc}"
                )
                wait = RETRY_PAUSE

    def beat(self) -> float:
        """One whole heartbeat (renewal, then storage duties); the wait before the next one."""
        wait = self.renew()
        if not self._stop.is_set() and not self.attempt.lost.is_set():
            self.watch()
        return wait

    def watch(self) -> float:
        """The heartbeat's storage duties: the cancel marker, progress and holder freshness."""
        self._check_cancel()
        self._write_record()
        return self.interval

    def renew(self) -> float:
        """Renew the lease (rolling it over near the broker's cap); the wait before the next."""
        attempt = self.attempt
        try:
            self.broker.extend(attempt.delivery, self.lease_seconds)
        except LeaseLost as exc:
            attempt.lose(str(exc))
            return self.interval
        except LrtError as exc:
            if attempt.delivery.lease_expired():
                attempt.lose(f"could not renew the lease before it ran out: {exc}")
                return self.interval
            attempt.log.event(WARNING, "lease.extend_retry", error=f"{type(exc).__name__}: {exc}")
            return min(RETRY_PAUSE, self.interval)
        if not self._stop.is_set():
            self._maybe_rollover()
        return self.interval

    # -- rollover ------------------------------------------------------------------------------

    def _maybe_rollover(self) -> None:
        attempt = self.attempt
        if self._rollover_after is None or attempt.job_id is None or attempt.lost.is_set():
            return
        if time.monotonic() - self._lease_started < self._rollover_after:
            return
        # First vouch for the job in its record, then let the broker renew the lease.
        if self._write_holder() is None:
            return
        attempt.holder_active = True
        try:
            self.broker.rollover(attempt.delivery)
        except LeaseLost as exc:
            attempt.lose(f"rollover past the broker's lease cap failed: {exc}")
            return
        except LrtError as exc:
            attempt.log.event(WARNING, "lease.rollover_retry", error=f"{type(exc).__name__}: {exc}")
            return
        attempt.received_at = time.monotonic()
        self._lease_started = self._receipt_time(attempt, self.lease_seconds)
        attempt.log.event(logging.INFO, "lease.rolled_over", holder=attempt.owner)

    def _write_holder(self) -> object | None:
        try:
            return self.attempt.update_record(
                holder=self.attempt.owner, held_until=self._held_until()
            )
        except LrtError as exc:
            self.attempt.log.event(WARNING, "record.write_failed", error=str(exc))
            return None

    def _held_until(self) -> object:
        return utcnow() + timedelta(seconds=self.lease_seconds)

    # -- cancel and progress --------------------------------------------------------------------

    def _check_cancel(self) -> None:
        attempt = self.attempt
        if attempt.store is None or attempt.job_id is None:
            return
        if attempt.stop_reason == CANCELLED:
            return
        try:
            requested = attempt.store.cancel_requested(attempt.job_id)
        except LrtError as exc:
            attempt.log.event(WARNING, "cancel.check_failed", error=str(exc))
            return
        if requested:
            attempt.log.event(logging.INFO, "job.cancel_requested")
            attempt.request_stop(CANCELLED)

    def _write_record(self) -> None:
        attempt = self.attempt
        ctx = attempt.ctx
        progress = ctx.take_progress() if ctx is not None else None
        fields: dict[str, Any] = {}
        if progress is not None:
            fields["progress"] = progress
        if attempt.holder_active:
            fields["holder"] = attempt.owner
            fields["held_until"] = self._held_until()
        if not fields:
            return
        try:
            attempt.update_record(**fields)
        except LrtError as exc:
            attempt.log.event(WARNING, "record.write_failed", error=str(exc))
