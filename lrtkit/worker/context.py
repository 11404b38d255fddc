"""``JobContext``: what a handler gets besides its payload."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrtkit.errors import Stop
from lrtkit.jobs import Progress

if TYPE_CHECKING:
    from lrtkit.checkpoint import Checkpoint
    from lrtkit.worker.logs import JobLogger

SHUTDOWN = "shutdown"
LEASE_LOST = "lease_lost"
CANCELLED = "cancelled"

# A later reason replaces an earlier one only if it is stronger: once the lease is lost nothing
# may be written, and a cancel is final while a shutdown only postpones the job.
_STRENGTH = {SHUTDOWN: 1, CANCELLED: 2, LEASE_LOST: 3}


class JobContext:
    """The running job as its handler sees it.

    * ``job_id``, ``attempt`` (1-based delivery number);
    * ``stopping`` (a :class:`threading.Event`) and ``stop_reason`` (``None``, ``"shutdown"``,
      ``"lease_lost"``, ``"cancelled"``); ``check()`` raises :class:`lrtkit.Stop` once set;
    * ``checkpoint``: ``load()``, ``save(obj)``, ``save_dir(path)``, ``restore_dir(path)``;
    * ``progress(done, total=None, **metrics)``: kept in memory, written to the job record by the
      heartbeat (at most once per heartbeat, never per call);
    * ``output_dir``: a local folder uploaded as the job's artifacts after success;
    * ``log``: a logger that adds the job id and attempt to every line.
    """

    def __init__(
        self,
        job_id: str,
        attempt: int,
        checkpoint: Checkpoint,
        output_dir: Path,
        log: JobLogger,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.checkpoint = checkpoint
        self.output_dir = output_dir
        self.log = log
        self.stopping = threading.Event()
        self._stop_reason: str | None = None
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._progress_dirty = False

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def check(self) -> None:
        """Raise :class:`lrtkit.Stop` if the job must stop; call it between units of work."""
        if self.stopping.is_set():
            raise Stop(self._stop_reason or SHUTDOWN)

    def progress(self, done: float, total: float | None = None, **metrics: Any) -> None:
        """Report progress; the heartbeat writes the newest report to the job record.

        Raises ``TypeError`` naming the metric when a value cannot be stored as JSON (here, in
        the handler, rather than later when the record is written).
        """
        for name, value in metrics.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"ctx.progress metric {name!r} is a {type(value).__name__}, which cannot be "
                    f"stored as JSON: {exc}"
                ) from None
        with self._lock:
            self._progress = Progress(done=done, total=total, metrics=metrics)
            self._progress_dirty = True

    # -- used by the worker --------------------------------------------------------------------

    def request_stop(self, reason: str) -> bool:
        """Ask the handler to stop for ``reason``; True if this changed the reason."""
        with self._lock:
            current = _STRENGTH.get(self._stop_reason or "", 0)
            if _STRENGTH.get(reason, 0) <= current:
                return False
            self._stop_reason = reason
        self.stopping.set()
        return True

    def take_progress(self) -> Progress | None:
        """The progress reported since the last call, or None if nothing new."""
        with self._lock:
            if not self._progress_dirty:
                return None
            self._progress_dirty = False
            return self._progress

    def __repr__(self) -> str:
        return (
            f"JobContext(job_id={self.job_id!r}, attempt={self.attempt}, "
            f"stop_reason={self._stop_reason!r})"
        )
