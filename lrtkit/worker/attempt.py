"""One delivery as this worker holds it: lease state, stop requests, guarded record writes.

The job thread, the lease keeper and the shutdown path all touch the same delivery. This object
is where they agree:

* ``lost`` is set once the lease is gone; from then on nothing is written for the job.
* Record writes go through :meth:`update_record`, under one lock, so the heartbeat's progress
  write can never overwrite the final state the job thread wrote (read-modify-write races).
* The final action on the delivery (ack, release, dead-letter) happens once, under
  ``final_lock``: whoever takes it first (the job thread, or the shutdown path after the grace
  period) does it; the other does nothing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from lrtkit.errors import LrtError
from lrtkit.worker.context import LEASE_LOST, JobContext

if TYPE_CHECKING:
    import subprocess

    from lrtkit.broker import Delivery
    from lrtkit.checkpoint import Checkpoint
    from lrtkit.jobs import JobRecord
    from lrtkit.records import JobStore
    from lrtkit.worker.logs import JobLogger


def new_owner_token() -> str:
    """A token unique to one delivery attempt on one machine (host, pid, random)."""
    host = socket.gethostname().split(".")[0][:24] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class Attempt:
    """Everything the worker knows about one delivery while it holds it."""

    def __init__(self, delivery: Delivery, log: JobLogger) -> None:
        self.delivery = delivery
        self.owner = new_owner_token()
        self.received_at = time.monotonic()
        self.log = log
        self.job_id: str | None = None
        self.store: JobStore | None = None
        self.ctx: JobContext | None = None
        self.checkpoint: Checkpoint | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.lost = threading.Event()
        self.holder_active = False
        self._record_lock = threading.Lock()
        self._writes_closed = False
        self.final_lock = threading.Lock()
        self.finalized = False
        self._pending_stop: str | None = None
        # request_stop (signal handler, main thread) against attach (job thread): without it a
        # stop landing mid-attach could be remembered after attach looked and never delivered.
        # Re-entrant, so a signal arriving on a thread that holds it cannot deadlock.
        self._stop_lock = threading.RLock()

    @property
    def attempt_number(self) -> int:
        return self.delivery.delivery_count

    # -- stopping ------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Ask the job to stop (remembered if the handler has not started yet)."""
        with self._stop_lock:
            if self.ctx is not None:
                self.ctx.request_stop(reason)
            else:
                self._pending_stop = reason

    def attach(self, ctx: JobContext, checkpoint: Checkpoint) -> None:
        with self._stop_lock:
            self.ctx = ctx
            self.checkpoint = checkpoint
            pending = self._pending_stop
        if pending is not None:
            ctx.request_stop(pending)
        if self.lost.is_set():
            ctx.request_stop(LEASE_LOST)
            self._revoke()

    @property
    def stop_reason(self) -> str | None:
        if self.lost.is_set():
            return LEASE_LOST
        if self.ctx is not None:
            return self.ctx.stop_reason
        return self._pending_stop

    def lose(self, why: str) -> None:
        """The lease is gone: stop the job and fence its checkpoint; write nothing more."""
        if self.lost.is_set():
            return
        self.lost.set()
        self.log.event(30, "lease.lost", reason=why)
        if self.ctx is not None:
            self.ctx.request_stop(LEASE_LOST)
        self._revoke()

    def _revoke(self) -> None:
        if self.checkpoint is not None:
            try:
                self.checkpoint.revoke("the lease on this job was lost")
            except LrtError as exc:  # revoke is local; a failure must not kill the heartbeat
                self.log.event(30, "checkpoint.revoke_failed", error=str(exc))

    def claim_final(self) -> bool:
        """Take the right to end this delivery (ack, release, dead-letter); True once only."""
        with self.final_lock:
            if self.finalized:
                return False
            self.finalized = True
            return True

    # -- record writes -------------------------------------------------------------------------

    def update_record(self, *, final: bool = False, **fields: Any) -> JobRecord | None:
        """Write ``fields`` into the job record unless the lease is lost.

        ``final`` writes close the record to heartbeat writes (which pass ``final=False``).
        Returns the new record, or None if nothing was written.
        """
        if self.store is None or self.job_id is None:
            return None
        with self._record_lock:
            if self.lost.is_set() or (self._writes_closed and not final):
                return None
            if final:
                self._writes_closed = True
            return self.store.update(self.job_id, **fields)

    def close_writes(self) -> None:
        """No heartbeat writes from now on (the job thread is about to write its outcome)."""
        with self._record_lock:
            self._writes_closed = True
