"""The channels on the link's connection; every method here runs on the I/O thread.

Two channels:

* the *consume* channel (``basic_qos(prefetch_count=1)``) holds the deliveries. It is the
  lease: when it closes, the broker requeues what it held. Consumers are demand-driven: a
  ``receive`` starts one consumer, the consumer is cancelled as soon as its one message
  arrives (or the ``receive`` times out), so the broker never pushes a job this worker has
  no free slot for, and nothing sits prefetched while the worker is busy.
* the *publish* channel is in confirm mode; publishes are pipelined (all sent, then every
  ack/nack/return collected) and published ``mandatory`` so an unroutable message is
  reported rather than dropped.

Each opening of the consume channel has an *epoch*; a delivery remembers its epoch, so an
ack for a delivery of a closed channel is refused (``LeaseLost``) instead of acking the wrong
message on the new channel (delivery tags restart at 1).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import pika
from pika import spec
from pika.adapters.select_connection import SelectConnection

from lrtkit.errors import BrokerConfigError, ConnectionLost, LeaseLost
from lrtkit_rabbitmq.errors import (
    ACCESS_REFUSED,
    CONSUMER_TIMEOUT_ADVICE,
    NOT_FOUND,
    close_reason,
    is_consumer_timeout,
)

log = logging.getLogger("lrtkit.rabbitmq")


@dataclass(frozen=True)
class Incoming:
    """A message the consume channel received, not yet handed to the worker."""

    epoch: int
    delivery_tag: int
    body: bytes
    properties: spec.BasicProperties


@dataclass(frozen=True)
class Outgoing:
    """A message to publish with confirms; ``label`` names it in error reports (job id)."""

    label: str
    exchange: str
    routing_key: str
    body: bytes
    properties: spec.BasicProperties


@dataclass
class _Batch:
    future: Future[dict[str, str]]
    remaining: set[int] = field(default_factory=set)
    failures: dict[str, str] = field(default_factory=dict)

    def settle(self, tag: int) -> None:
        self.remaining.discard(tag)
        if not self.remaining and not self.future.done():
            self.future.set_result(self.failures)


class SessionEvents(Protocol):
    def deliveries_lost(self, epoch: int, reason: str) -> None:
        """Every delivery of consume-channel ``epoch`` is gone (requeued by the broker)."""


class Session:
    """The link's hooks: channel setup, consuming, acking and confirmed publishing."""

    def __init__(self, queue_name: str, events: SessionEvents) -> None:
        self.queue_name = queue_name
        self.buffer: queue.Queue[Incoming] = queue.Queue()
        self.consume_epoch = 0
        self.consume_open = False
        self.consumer_timeouts = 0
        self._events = events
        self._conn: SelectConnection | None = None
        self._consume_ch: Any = None
        self._publish_ch: Any = None
        self._publish_open = False
        self._demand_tag: str | None = None
        self._next_tag = 1
        self._inflight: dict[int, tuple[_Batch, str, str | None]] = {}
        self._returned: dict[int, str] = {}
        self._waiters: set[Future[Any]] = set()
        self._timers: dict[int, tuple[object, Callable[[], Future[None] | None]]] = {}
        self._timer_ids = 0
        self._ready_cb: Callable[[], None] | None = None

    # -- link hooks --------------------------------------------------------------------------

    def on_connection_open(self, connection: SelectConnection, ready: Callable[[], None]) -> None:
        self._conn = connection
        self._ready_cb = ready
        self._open_consume()
        self._open_publish()

    def on_connection_lost(self, reason: BaseException) -> None:
        code, text = close_reason(reason)
        why = f"connection lost ({code} {text})" if code else f"connection lost ({text})"
        self._consume_gone(why)
        self._publish_gone(why)
        self._timers.clear()
        self._conn = None

    # -- channel setup ---------------------------------------------------------------------------

    def _maybe_ready(self) -> None:
        if self.consume_open and self._publish_open and self._ready_cb is not None:
            self._ready_cb()

    def _open_consume(self) -> None:
        assert self._conn is not None
        self._conn.channel(on_open_callback=self._consume_opened)

    def _consume_opened(self, ch: Any) -> None:
        ch.add_on_close_callback(self._consume_closed)
        ch.add_on_cancel_callback(self._server_cancelled)

        def qos_ok(_frame: object) -> None:
            self._consume_ch = ch
            self.consume_epoch += 1
            self.consume_open = True
            self._maybe_ready()

        ch.basic_qos(prefetch_count=1, callback=qos_ok)

    def _open_publish(self) -> None:
        assert self._conn is not None
        self._conn.channel(on_open_callback=self._publish_opened)

    def _publish_opened(self, ch: Any) -> None:
        ch.add_on_close_callback(self._publish_closed)
        ch.add_on_return_callback(self._on_return)

        def select_ok(_frame: object) -> None:
            self._publish_ch = ch
            self._next_tag = 1
            self._publish_open = True
            self._maybe_ready()

        ch.confirm_delivery(ack_nack_callback=self._on_confirm, callback=select_ok)

    def _consume_closed(self, ch: Any, reason: BaseException) -> None:
        if ch is not self._consume_ch and self._consume_ch is not None:
            return
        code, text = close_reason(reason)
        if is_consumer_timeout(code, text):
            self.consumer_timeouts += 1
            log.error("%s (server said: %s)", CONSUMER_TIMEOUT_ADVICE, text)
            why = f"consumer_timeout: {text}"
        else:
            why = f"channel closed ({code} {text})" if code else f"channel closed ({text})"
        error: Exception = ConnectionLost(why)
        if code == NOT_FOUND:
            error = BrokerConfigError(
                f"cannot consume from queue {self.queue_name!r}: {text}; run `lrtkit setup`"
            )
        elif code == ACCESS_REFUSED:
            error = BrokerConfigError(
                f"cannot consume from queue {self.queue_name!r}: {text}; the user needs read "
                "and write permissions on the vhost"
            )
        self._consume_gone(why, error)
        if self._conn is not None and self._conn.is_open:
            self._open_consume()

    def _publish_closed(self, ch: Any, reason: BaseException) -> None:
        if ch is not self._publish_ch and self._publish_ch is not None:
            return
        code, text = close_reason(reason)
        self._publish_gone(f"publish channel closed ({code} {text})", not_found=code == NOT_FOUND)
        if self._conn is not None and self._conn.is_open:
            self._open_publish()

    def _consume_gone(self, why: str, error: Exception | None = None) -> None:
        was_open = self.consume_open
        self.consume_open = False
        self._demand_tag = None
        self._consume_ch = None
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_exception(error or ConnectionLost(why))
        self._waiters.clear()
        # Buffered messages of the closed channel were requeued by the broker.
        kept = []
        while True:
            try:
                item = self.buffer.get_nowait()
            except queue.Empty:
                break
            if item.epoch != self.consume_epoch:
                kept.append(item)
        for item in kept:
            self.buffer.put(item)
        if was_open:
            self._events.deliveries_lost(self.consume_epoch, why)

    def _publish_gone(self, why: str, *, not_found: bool = False) -> None:
        self._publish_open = False
        self._publish_ch = None
        inflight, self._inflight = self._inflight, {}
        self._returned.clear()
        for tag, (batch, label, _mid) in sorted(inflight.items()):
            batch.failures[label] = why
            if not_found:
                batch.failures[label] = f"{why}: run `lrtkit setup` or check LRT_RABBITMQ_DLX"
            batch.settle(tag)

    def _server_cancelled(self, frame: Any) -> None:
        # The queue was deleted (or the node went down): our consumer is gone.
        if frame.method.consumer_tag == self._demand_tag:
            self._demand_tag = None
        log.warning("RabbitMQ cancelled the consumer on queue %r", self.queue_name)

    # -- consuming -------------------------------------------------------------------------

    def start_demand(self, fut: Future[None]) -> None:
        """Make sure one consumer waits for one message for a ``receive`` in progress."""
        if not self.consume_open:
            fut.set_exception(ConnectionLost("the consume channel is reopening"))
            return
        if self._demand_tag is not None:
            fut.set_result(None)
            return
        self._waiters.add(fut)

        def ok(_frame: object) -> None:
            self._waiters.discard(fut)
            if not fut.done():
                fut.set_result(None)

        self._demand_tag = self._consume_ch.basic_consume(
            self.queue_name, self._on_message, auto_ack=False, callback=ok
        )

    def stop_demand(self, fut: Future[None]) -> None:
        """Cancel the waiting consumer; resolves once the broker confirmed the cancel."""
        tag, self._demand_tag = self._demand_tag, None
        if tag is None or not self.consume_open:
            fut.set_result(None)
            return
        self._waiters.add(fut)

        def ok(_frame: object) -> None:
            self._waiters.discard(fut)
            if not fut.done():
                fut.set_result(None)

        self._consume_ch.basic_cancel(tag, callback=ok)

    def _on_message(
        self, ch: Any, method: spec.Basic.Deliver, props: spec.BasicProperties, body: bytes
    ) -> None:
        if method.consumer_tag == self._demand_tag:
            self._demand_tag = None
            ch.basic_cancel(method.consumer_tag)
        self.buffer.put(Incoming(self.consume_epoch, method.delivery_tag, body, props))

    def settle(self, epoch: int, delivery_tag: int, action: str, fut: Future[None]) -> None:
        """``ack``, ``requeue`` (nack requeue) or ``reject`` a held delivery."""
        if epoch != self.consume_epoch or not self.consume_open:
            fut.set_exception(
                LeaseLost("the channel holding this job closed; RabbitMQ requeued it")
            )
            return
        if action == "ack":
            self._consume_ch.basic_ack(delivery_tag)
        else:
            self._consume_ch.basic_nack(delivery_tag, requeue=action == "requeue")
        fut.set_result(None)

    def holds(self, epoch: int) -> bool:
        return epoch == self.consume_epoch and self.consume_open

    # -- publishing --------------------------------------------------------------------------

    def publish(self, items: list[Outgoing], fut: Future[dict[str, str]]) -> None:
        """Publish all ``items``; ``fut`` gets ``{label: reason}`` for each one not taken."""
        if not items:
            fut.set_result({})
            return
        if not self._publish_open:
            fut.set_result({item.label: "the publish channel is reopening" for item in items})
            return
        batch = _Batch(fut)
        for item in items:
            tag = self._next_tag
            self._next_tag += 1
            batch.remaining.add(tag)
            self._inflight[tag] = (batch, item.label, item.properties.message_id)
            self._publish_ch.basic_publish(
                item.exchange, item.routing_key, item.body, item.properties, mandatory=True
            )

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nacked = isinstance(method, spec.Basic.Nack)
        last = method.delivery_tag
        tags = [t for t in self._inflight if t <= last] if method.multiple else [last]
        for tag in sorted(tags):
            entry = self._inflight.pop(tag, None)
            if entry is None:
                continue
            batch, label, _mid = entry
            returned = self._returned.pop(tag, None)
            if returned is not None:
                batch.failures[label] = returned
            elif nacked:
                batch.failures[label] = "RabbitMQ nacked the message (queue full or node failure)"
            batch.settle(tag)

    def _on_return(
        self, _ch: Any, method: spec.Basic.Return, props: spec.BasicProperties, _body: bytes
    ) -> None:
        reason = (
            f"unroutable ({method.reply_code} {method.reply_text}): no queue bound for "
            f"exchange {method.exchange or '(default)'!r}, routing key {method.routing_key!r}"
            " (run `lrtkit setup`)"
        )
        for tag, (_batch, _label, mid) in sorted(self._inflight.items()):
            if mid == props.message_id and tag not in self._returned:
                self._returned[tag] = reason
                return

    # -- timers ----------------------------------------------------------------------------

    def schedule(
        self, delay: float, fn: Callable[[], Future[None] | None], fut: Future[int]
    ) -> None:
        """Run ``fn`` on the I/O loop after ``delay`` s (or at :meth:`flush_timers`).

        ``fn`` may return a future for work it started (a confirm to wait for), which
        :meth:`flush_timers` waits on.
        """
        assert self._conn is not None
        self._timer_ids += 1
        key = self._timer_ids

        def fire() -> None:
            if self._timers.pop(key, None) is not None:
                fn()

        handle = self._conn.ioloop.call_later(delay, fire)
        self._timers[key] = (handle, fn)
        fut.set_result(key)

    def flush_timers(self, fut: Future[int]) -> None:
        """Run every pending timer now; resolves once all the work they started is done."""
        timers, self._timers = self._timers, {}
        started: list[Future[None]] = []
        for handle, fn in timers.values():
            if self._conn is not None:
                self._conn.ioloop.remove_timeout(handle)
            work = fn()
            if work is not None:
                started.append(work)
        remaining = len(started)
        if not remaining:
            fut.set_result(len(timers))
            return

        def one_done(_f: Future[None]) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0 and not fut.done():
                fut.set_result(len(timers))

        for work in started:
            work.add_done_callback(one_done)

    @property
    def pending_timers(self) -> int:
        return len(self._timers)


def properties(
    message_id: str | None, headers: dict[str, Any] | None = None, *, like: Any = None
) -> spec.BasicProperties:
    """Persistent JSON message properties; ``like`` copies another message's properties."""
    base: dict[str, Any] = {}
    if like is not None:
        for name in (
            "content_type",
            "content_encoding",
            "priority",
            "correlation_id",
            "reply_to",
            "type",
            "app_id",
            "timestamp",
        ):
            value = getattr(like, name, None)
            if value is not None:
                base[name] = value
    base.setdefault("content_type", "application/json")
    return pika.BasicProperties(
        delivery_mode=2, message_id=message_id, headers=headers or None, **base
    )


def config_error_for(failures: dict[str, str]) -> BrokerConfigError | None:
    """A config error when every failure says the target is missing."""
    if failures and all("lrtkit setup" in why for why in failures.values()):
        return BrokerConfigError(next(iter(failures.values())))
    return None
