"""Retrying broker and storage calls through connection trouble, with capped backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from lrtkit.backoff import backoff as shared_backoff
from lrtkit.errors import (
    BrokerError,
    ConfigError,
    CorruptCheckpoint,
    LeaseLost,
    LrtError,
    NotFound,
    PreconditionFailed,
    StorageError,
)
from lrtkit.worker.logs import event, log

T = TypeVar("T")

FIRST_PAUSE = 0.5
MAX_PAUSE = 30.0


def is_transient(exc: BaseException) -> bool:
    """True for errors that may go away by themselves (connection trouble, throttling)."""
    if isinstance(exc, ConfigError | LeaseLost | NotFound | PreconditionFailed | CorruptCheckpoint):
        return False
    return isinstance(exc, BrokerError | StorageError)


def backoff(attempt: int, first: float = FIRST_PAUSE, cap: float = MAX_PAUSE) -> float:
    """Pause before retry number ``attempt`` (1-based): doubling, capped, with 20% jitter."""
    return shared_backoff(attempt, first, cap, jitter=0.2)


def retrying(
    what: str,
    op: Callable[[], T],
    *,
    keep_trying: Callable[[], bool] = lambda: True,
    deadline: float | None = None,
    logger: logging.Logger = log,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Run ``op``; on a transient error log it, wait and try again.

    Gives up (re-raising the last error) once ``keep_trying()`` is false or the monotonic
    ``deadline`` has passed. Non-transient errors are raised at once.
    """
    tries = 0
    while True:
        try:
            return op()
        except LrtError as exc:
            if not is_transient(exc):
                raise
            tries += 1
            pause = backoff(tries)
            late = deadline is not None and time.monotonic() + pause > deadline
            if late or not keep_trying():
                raise
            event(
                logger,
                logging.WARNING,
                "retry",
                action=what,
                attempt=tries,
                pause=round(pause, 2),
                error=f"{type(exc).__name__}: {exc}",
            )
            sleep(pause)
