"""How one delivery ended, and the signals a task raises to say so."""

from __future__ import annotations

import traceback
from enum import Enum
from pathlib import Path

MAX_REASON = 900


class Outcome(Enum):
    """What became of one delivery. ``counts`` says whether ``--max-jobs`` counts it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # released with backoff, will be retried
    DEAD = "dead"  # dead-lettered after LRT_MAX_FAILURES failures
    INVALID = "invalid"  # a bad body, payload or job id (or exit 65): dead-lettered at once
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # already succeeded or cancelled: acked without running
    INTERRUPTED = "interrupted"  # shutdown, lease lost, retry later: not a failure
    HANDED_BACK = "handed_back"  # another holder vouches for the job: released untouched

    @property
    def counts(self) -> bool:
        return self not in (Outcome.INTERRUPTED, Outcome.HANDED_BACK)


class BadJob(Exception):
    """The job can never succeed: dead-letter it at once (command exit code 65)."""


class RetryLater(Exception):
    """Interrupted, try again later; not a failure (command exit code 75)."""


class CommandFailed(Exception):
    """The command exited with a failure code; counts as a failure."""


def summarize(exc: BaseException) -> str:
    """``Type: message (at file.py:LINE in function)``: the traceback's last frame."""
    message = str(exc).strip().replace("\n", " ")
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return clip(text)


def clip(text: str, limit: int = MAX_REASON) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
