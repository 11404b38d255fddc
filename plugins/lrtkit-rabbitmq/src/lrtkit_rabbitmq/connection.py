"""The one thread that owns the AMQP connection.

pika is not thread-safe. A :class:`Link` runs a ``SelectConnection`` I/O loop in its own
daemon thread; every other thread reaches the connection only through :meth:`Link.call`,
which schedules a function on the loop with ``add_callback_threadsafe`` and waits for the
:class:`~concurrent.futures.Future` that function completes. The loop never runs user work,
so heartbeats keep flowing while a job runs for hours.

When the connection drops (broker restart, ``rabbitmqctl close_connection``, network cut)
the link tells its :class:`LinkHooks` (which mark every held delivery lost) and reconnects
with exponential backoff. A refused login or a missing virtual host is not retried: it is
kept as one :class:`~lrtkit.errors.BrokerConfigError` that every call raises.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Protocol, TypeVar

import pika
from pika.adapters.select_connection import SelectConnection

from lrtkit.backoff import backoff
from lrtkit.errors import BrokerConfigError, BrokerError, ConnectionLost
from lrtkit_rabbitmq.errors import close_reason, detail, fatal_connection_error

log = logging.getLogger("lrtkit.rabbitmq")

T = TypeVar("T")


class LinkHooks(Protocol):
    """What the link tells the channel layer (called on the I/O thread)."""

    def on_connection_open(self, connection: SelectConnection, ready: Callable[[], None]) -> None:
        """Open channels; call ``ready()`` once operations may run."""

    def on_connection_lost(self, reason: BaseException) -> None:
        """Everything held on the connection is gone: fail pending work, mark leases lost."""


class Link:
    """Owns the connection and its I/O thread; see the module docstring."""

    def __init__(
        self,
        params: Callable[[], pika.URLParameters],
        where: str,
        hooks: LinkHooks,
        *,
        connect_timeout: float,
        max_delay: float,
        name: str,
    ) -> None:
        self._params = params
        self._where = where
        self._hooks = hooks
        self._connect_timeout = connect_timeout
        self._max_delay = max_delay
        self._name = name
        self._cond = threading.Condition()
        self._conn: SelectConnection | None = None
        self._ready = False
        self._fatal: BrokerConfigError | None = None
        self._stopping = False
        self._last_error = "not connected yet"
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.connections = 0  # how many times a connection was opened (1 = no reconnect yet)

    # -- public, any thread ----------------------------------------------------------------

    @property
    def where(self) -> str:
        return self._where

    @property
    def ready(self) -> bool:
        return self._ready

    def start(self) -> None:
        with self._cond:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def call(self, fn: Callable[[Future[T]], None], timeout: float = 60.0) -> T:
        """Run ``fn(future)`` on the I/O thread and wait for the future's result.

        ``fn`` must complete the future (now or from a later callback) and must not block.
        Raises the future's exception, :class:`ConnectionLost` when no connection comes up
        within the connect timeout, or the kept :class:`BrokerConfigError`.
        """
        self.start()
        conn = self._wait_ready()
        fut: Future[T] = Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fn(fut)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                if not fut.done():
                    fut.set_exception(exc)

        try:
            conn.ioloop.add_callback_threadsafe(run)
        except Exception as exc:
            raise ConnectionLost(f"the connection to RabbitMQ at {self._where} closed") from exc
        try:
            return fut.result(timeout)
        except FutureTimeout:
            raise BrokerError(
                f"RabbitMQ at {self._where} did not answer within {timeout:.0f}s"
            ) from None

    def close(self, timeout: float = 10.0) -> None:
        """Close the connection (flushing what was sent) and stop the thread. Idempotent."""
        with self._cond:
            self._stopping = True
            conn = self._conn
            thread = self._thread
            self._cond.notify_all()
        self._wake.set()
        if conn is not None:
            with contextlib.suppress(Exception):  # already closed
                conn.ioloop.add_callback_threadsafe(lambda: self._close_on_loop(conn))
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- internals -------------------------------------------------------------------------

    def _wait_ready(self) -> SelectConnection:
        deadline = time.monotonic() + self._connect_timeout
        with self._cond:
            while True:
                if self._fatal is not None:
                    raise self._fatal
                if self._stopping:
                    raise ConnectionLost("the RabbitMQ broker client is closed")
                if self._ready and self._conn is not None:
                    return self._conn
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectionLost(
                        f"no connection to RabbitMQ at {self._where} after "
                        f"{self._connect_timeout:.0f}s: {self._last_error}"
                    )
                self._cond.wait(left)

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                if self._stopping or self._fatal is not None:
                    break
            opened_before = self.connections
            try:
                conn = SelectConnection(
                    self._params(),
                    on_open_callback=self._opened,
                    on_open_error_callback=self._open_failed,
                    on_close_callback=self._closed,
                )
            except BaseException as exc:  # noqa: BLE001 - bad parameters
                self._set_fatal(BrokerConfigError(f"cannot connect to {self._where}: {exc}"))
                break
            with self._cond:
                self._conn = conn
            try:
                conn.ioloop.start()
            except BaseException as exc:
                log.exception("RabbitMQ I/O loop crashed: %s", exc)
                self._lost(exc)
            with self._cond:
                self._conn = None
                self._ready = False
                if self._stopping or self._fatal is not None:
                    break
            if self.connections > opened_before:
                failures = 0  # it was up: start the backoff over
            failures += 1
            pause = backoff(failures, 0.5, self._max_delay)
            log.warning(
                "RabbitMQ at %s: %s; reconnecting in %.1fs", self._where, self._last_error, pause
            )
            self._wake.wait(pause)
        self._wake.set()

    def _opened(self, conn: SelectConnection) -> None:
        self.connections += 1
        if self._stopping:
            conn.close(reply_text="lrtkit closing")
            return
        if self.connections > 1:
            log.warning("RabbitMQ at %s: reconnected", self._where)

        def ready() -> None:
            with self._cond:
                self._ready = True
                self._last_error = ""
                self._cond.notify_all()

        try:
            self._hooks.on_connection_open(conn, ready)
        except Exception as exc:
            log.exception("setting up channels failed")
            self._last_error = f"setting up channels failed: {exc}"
            conn.close()

    def _open_failed(self, conn: SelectConnection, exc: BaseException | str) -> None:
        error = exc if isinstance(exc, BaseException) else ConnectionLost(str(exc))
        fatal = fatal_connection_error(error, self._where)
        if fatal is not None:
            self._set_fatal(fatal)
        else:
            self._last_error = f"connection failed: {detail(error)}"
        conn.ioloop.stop()

    def _closed(self, conn: SelectConnection, exc: BaseException) -> None:
        with self._cond:
            self._ready = False
            stopping = self._stopping
        fatal = fatal_connection_error(exc, self._where)
        if fatal is not None and not stopping:
            self._set_fatal(fatal)
        code, text = close_reason(exc)
        self._last_error = f"connection closed ({code} {text})" if code else text
        self._lost(exc)
        conn.ioloop.stop()

    def _lost(self, exc: BaseException) -> None:
        try:
            self._hooks.on_connection_lost(exc)
        except Exception:
            log.exception("marking deliveries lost failed")

    def _set_fatal(self, error: BrokerConfigError) -> None:
        with self._cond:
            if self._fatal is None:
                self._fatal = error  # raised by every call; the caller reports it once
                log.debug("giving up on RabbitMQ: %s", error)
            self._cond.notify_all()

    def _close_on_loop(self, conn: SelectConnection) -> None:
        if conn.is_open:
            conn.close(reply_text="lrtkit closing")
        elif conn.is_closed:
            conn.ioloop.stop()
