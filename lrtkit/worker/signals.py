"""SIGTERM/SIGINT: the first asks for a graceful shutdown, a second one exits at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def shutdown_signals(
    graceful: Callable[[int], None], immediate: Callable[[int], None]
) -> Iterator[None]:
    """Route SIGTERM/SIGINT to ``graceful`` the first time, ``immediate`` after that.

    Only the main thread can install signal handlers; elsewhere (a worker embedded in a thread)
    this does nothing and the embedder stops the worker itself. Previous handlers come back
    on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = {"count": 0}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        seen["count"] += 1
        if seen["count"] == 1:
            graceful(signum)
        else:
            immediate(signum)

    previous: dict[signal.Signals, Any] = {}
    for sig in SIGNALS:
        previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
