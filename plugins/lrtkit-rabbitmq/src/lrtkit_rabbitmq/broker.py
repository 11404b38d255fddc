"""The RabbitMQ broker: a quorum queue whose lease is the channel.

* **Lease.** A delivery is held by the worker's consume channel until acked; RabbitMQ
  requeues it the instant that channel or its connection closes (worker killed, network
  cut, broker restart). There is no timer to renew, so ``timed_lease = False`` and
  ``extend`` only checks that the channel which received the job is still open. Once it has
  closed, every delivery it held is marked lost and ``extend``/``ack`` raise ``LeaseLost``.
* **Threads.** One I/O thread owns the connection (:mod:`lrtkit_rabbitmq.connection`);
  every other call goes through ``add_callback_threadsafe`` and waits for its result.
* **Prefetch.** Demand-driven (:mod:`lrtkit_rabbitmq.session`): one message per
  ``receive``, never a prefetched job stranded behind a busy worker.
* **Release.** A copy is republished with a publisher confirm, then the original is acked.
  On RabbitMQ 3.10 a ``basic_nack(requeue=True)`` counts toward ``x-delivery-limit`` like a
  crash does; a graceful release or a retry backoff must not, so it republishes instead
  (lrtkit's ``x-lrtkit-deliveries`` header carries the delivery count forward). A delayed
  release keeps the job unacked on the channel for the delay (safe: if this worker dies the
  broker requeues it), then republishes; ``close`` flushes delayed releases at once.
* **Dead letters.** The body is published to the dead-letter exchange with
  ``x-lrtkit-reason`` (confirmed), then the original is acked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pika import spec

from lrtkit.broker import Broker, Check, DeadLetter, Delivery, Depth, Message, SetupReport
from lrtkit.errors import (
    BrokerConfigError,
    BrokerError,
    ConnectionLost,
    LeaseLost,
    PayloadTooLarge,
    PublishError,
)
from lrtkit.jobs import job_id_of
from lrtkit_rabbitmq import deadletters
from lrtkit_rabbitmq.admin import Admin, admin
from lrtkit_rabbitmq.connection import Link
from lrtkit_rabbitmq.deadletters import DELIVERIES, JOB_ID, REASON
from lrtkit_rabbitmq.diagnose import diagnose
from lrtkit_rabbitmq.management import Management
from lrtkit_rabbitmq.session import Incoming, Outgoing, Session, config_error_for, properties
from lrtkit_rabbitmq.settings import (
    RabbitMQSettings,
    connection_parameters,
    masked_url,
    vhost_of,
)
from lrtkit_rabbitmq.topology import Topology, ensure

if TYPE_CHECKING:
    from lrtkit.config import Settings

log = logging.getLogger("lrtkit.rabbitmq")

T = TypeVar("T")

MAX_MESSAGE_BYTES = 128 * 1024 * 1024  # RabbitMQ's default max_message_size
PUBLISH_ATTEMPTS = 3
_BROKER_HEADERS = frozenset(
    {
        "x-delivery-count",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        REASON,
        JOB_ID,
        DELIVERIES,
    }
)


@dataclass(frozen=True)
class _Handle:
    epoch: int
    delivery_tag: int
    properties: spec.BasicProperties
    job_id: str | None


class RabbitMQBroker(Broker):
    """lrtkit's broker on a RabbitMQ quorum queue (see the module docstring)."""

    name: ClassVar[str] = "rabbitmq"
    timed_lease: ClassVar[bool] = False

    def __init__(self, settings: Settings, rabbit: RabbitMQSettings) -> None:
        self.settings = settings
        self.rabbit = rabbit
        self.queue = settings.queue
        self._url = rabbit.url.get_secret_value()
        self.where = masked_url(self._url)
        self.topology = Topology(
            queue=settings.queue,
            dlx=rabbit.dlx_name(settings.queue),
            dlq=rabbit.dlq_name(settings.queue),
            max_deliveries=settings.max_deliveries,
            consumer_timeout_ms=int(rabbit.consumer_timeout * 1000),
        )
        # Heartbeats bound how long a silently cut network goes unnoticed: half the lease.
        self._heartbeat = max(2, min(60, int(settings.lease_seconds / 2)))
        connection_parameters(rabbit, heartbeat=self._heartbeat, role="worker")  # validate now
        self.management: Management | None = None
        if rabbit.management_url is not None:
            self.management = Management(
                rabbit.management_url.get_secret_value(), self._url, vhost_of(self._url)
            )
        # Without the management API in-flight is the consumer count, idle pollers included.
        self.counts_in_flight = self.management is not None
        self.session = Session(settings.queue, self)
        self.link = Link(
            partial(connection_parameters, rabbit, heartbeat=self._heartbeat, role="worker"),
            self.where,
            self.session,
            connect_timeout=rabbit.connect_timeout,
            max_delay=rabbit.reconnect_max_delay,
            name=f"lrtkit-rabbitmq-io-{settings.queue}",
        )
        self._lock = threading.Lock()
        self._receive_lock = threading.Lock()
        self._held: dict[int, Delivery] = {}
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> RabbitMQBroker:
        return cls(settings, settings.plugin_settings(RabbitMQSettings))

    # -- helpers -------------------------------------------------------------------------------

    def _call(self, fn: Callable[[Future[T]], None], timeout: float = 60.0) -> T:
        if self._closed:
            raise BrokerError("this RabbitMQ broker client is closed")
        return self.link.call(fn, timeout)

    def _admin(self, doing: str) -> Any:
        params = connection_parameters(self.rabbit, heartbeat=0, role="admin")
        return admin(params, self.where, doing)

    # -- lifecycle -----------------------------------------------------------------------------

    def ensure(self) -> SetupReport:
        with self._admin(f"setting up queue {self.queue!r}") as adm:
            return ensure(adm, self.topology, self.management)

    def diagnose(self) -> list[Check]:
        return diagnose(self)

    def close(self) -> None:
        if self._closed:
            return
        if self.link.ready and self.session.pending_timers:
            try:
                self.link.call(self.session.flush_timers, timeout=15)
            except Exception as exc:  # noqa: BLE001 - the broker requeues them anyway
                log.warning("handing back delayed releases at close failed: %s", exc)
        self._closed = True
        self.link.close()
        with self._lock:
            for delivery in self._held.values():
                delivery.lost = True
            self._held.clear()

    # -- producing -----------------------------------------------------------------------------

    def publish(self, messages: Sequence[Message]) -> None:
        too_big = [m.job_id for m in messages if len(m.body) > MAX_MESSAGE_BYTES]
        if too_big:
            raise PayloadTooLarge(
                f"{len(too_big)} message(s) exceed RabbitMQ's default max_message_size of "
                f"{MAX_MESSAGE_BYTES} bytes: {', '.join(too_big[:5])}; keep large data in storage"
            )
        pending = [
            Outgoing(m.job_id, "", self.queue, m.body, properties(m.job_id)) for m in messages
        ]
        failures: dict[str, str] = {}
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            failures = self._publish(pending)
            if not failures:
                return
            # Unroutable messages (no queue) will not route on a retry either.
            retry = [
                o for o in pending if o.label in failures and "unroutable" not in failures[o.label]
            ]
            if not retry or attempt == PUBLISH_ATTEMPTS or self.link.connections == 0:
                break  # nothing worth retrying, or the broker was never reached
            log.warning("%d message(s) not confirmed, retrying: %s", len(retry), _sample(failures))
            pending = retry
            time.sleep(0.5 * attempt)
        raise PublishError(failures, published=len(messages) - len(failures))

    def _publish(self, items: list[Outgoing]) -> dict[str, str]:
        failures: dict[str, str] = {}
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            try:
                failures.update(
                    self._call(partial(self.session.publish, chunk), timeout=60 + len(chunk) / 50)
                )
            except BrokerConfigError:
                raise
            except BrokerError as exc:
                failures.update({o.label: str(exc) for o in chunk})
        return failures

    # -- consuming -----------------------------------------------------------------------------

    def receive(self, wait: float) -> Delivery | None:
        with self._receive_lock:
            item = self._take_buffered()
            if item is not None:
                return self._deliver(item)
            deadline = time.monotonic() + max(wait, 0.5)
            try:
                self._call(self.session.start_demand, timeout=30)
            except ConnectionLost:
                if self.link.connections == 0:
                    raise  # never connected: say so instead of polling in silence
                time.sleep(max(0.0, min(deadline - time.monotonic(), 1.0)))
                return None
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self.session.buffer.get(timeout=left)
                except Exception:  # noqa: BLE001 - queue.Empty
                    break
                if self.session.holds(item.epoch):
                    return self._deliver(item)
            try:
                self._call(self.session.stop_demand, timeout=30)
            except ConnectionLost:
                return None
            item = self._take_buffered()
            return self._deliver(item) if item is not None else None

    def _take_buffered(self) -> Incoming | None:
        while True:
            try:
                item = self.session.buffer.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty
                return None
            if self.session.holds(item.epoch):
                return item

    def _deliver(self, item: Incoming) -> Delivery:
        headers = item.properties.headers or {}
        prior = _int(headers.get(DELIVERIES))
        count = prior + _int(headers.get("x-delivery-count")) + 1
        shown = {
            str(k): (v.decode(errors="replace") if isinstance(v, bytes) else str(v))
            for k, v in headers.items()
            if k != "x-death"
        }
        delivery = Delivery(
            body=item.body,
            delivery_count=count,
            handle=_Handle(item.epoch, item.delivery_tag, item.properties, job_id_of(item.body)),
            headers=shown,
        )
        with self._lock:
            self._held[id(delivery)] = delivery
        return delivery

    def deliveries_lost(self, epoch: int, reason: str) -> None:
        """Session event (I/O thread): the channel of ``epoch`` closed; its jobs are gone."""
        with self._lock:
            gone = [d for d in self._held.values() if d.handle.epoch == epoch]
            for d in gone:
                d.lost = True
                self._held.pop(id(d), None)
        if gone and not self._closed:
            ids = ", ".join(str(d.handle.job_id) for d in gone[:5])
            log.warning("lease lost on %d job(s) (%s): %s", len(gone), ids, reason)

    def _forget(self, delivery: Delivery) -> None:
        with self._lock:
            self._held.pop(id(delivery), None)

    def _extend(self, delivery: Delivery, seconds: float) -> None:
        handle: _Handle = delivery.handle
        if delivery.lost or not self.session.holds(handle.epoch) or not self.link.ready:
            self._forget(delivery)
            raise LeaseLost(
                "the RabbitMQ channel holding this job closed; the broker requeued the job"
            )

    def _settle(self, delivery: Delivery, action: str) -> None:
        handle: _Handle = delivery.handle
        try:
            self._call(partial(self.session.settle, handle.epoch, handle.delivery_tag, action))
        except (LeaseLost, ConnectionLost) as exc:
            delivery.lost = True
            self._forget(delivery)
            raise LeaseLost(f"cannot {action} job {handle.job_id}: {exc}") from None
        self._forget(delivery)

    def _ack(self, delivery: Delivery) -> None:
        self._settle(delivery, "ack")

    def _copy(
        self, delivery: Delivery, exchange: str, routing_key: str, extra: dict[str, Any]
    ) -> Outgoing:
        handle: _Handle = delivery.handle
        props = handle.properties
        headers = {k: v for k, v in (props.headers or {}).items() if k not in _BROKER_HEADERS}
        headers.update(extra)
        label = handle.job_id or props.message_id or f"delivery-{handle.delivery_tag}"
        message_id = props.message_id or handle.job_id
        return Outgoing(
            label,
            exchange,
            routing_key,
            delivery.body,
            properties(message_id, headers, like=props),
        )

    def _release(self, delivery: Delivery, delay: float) -> None:
        handle: _Handle = delivery.handle
        copy = self._copy(delivery, "", self.queue, {DELIVERIES: delivery.delivery_count})
        if delay <= 0:
            self._republish_then_ack(delivery, copy)
            return
        session = self.session

        def later() -> Future[None] | None:
            # I/O thread, ``delay`` seconds on (or at close): republish, then ack.
            if not session.holds(handle.epoch):
                return None  # the channel closed meanwhile: the broker requeued the job
            settled: Future[None] = Future()

            def confirmed(fut: Future[dict[str, str]]) -> None:
                action = "requeue" if fut.result() else "ack"
                session.settle(handle.epoch, handle.delivery_tag, action, settled)

            published: Future[dict[str, str]] = Future()
            published.add_done_callback(confirmed)
            session.publish([copy], published)
            return settled

        self._call(partial(session.schedule, delay, later))
        self._forget(delivery)

    def _republish_then_ack(self, delivery: Delivery, copy: Outgoing) -> None:
        failures = self._publish([copy])
        action = "requeue" if failures else "ack"
        if failures:
            log.warning(
                "release of %s by republish failed (%s); requeueing instead",
                copy.label,
                _sample(failures),
            )
        try:
            self._settle(delivery, action)
        except LeaseLost:
            # The channel closed after the copy was confirmed: the broker requeued the
            # original too. The job is available (twice); nothing is lost.
            log.info("job %s released while its channel closed; it may run twice", copy.label)

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        handle: _Handle = delivery.handle
        extra = {
            REASON: reason[:4000],
            JOB_ID: handle.job_id or "",
            DELIVERIES: delivery.delivery_count,
        }
        copy = self._copy(delivery, self.topology.dlx, self.queue, extra)
        failures = self._publish([copy])
        if failures:
            error = config_error_for(failures)
            if error is not None:
                raise BrokerConfigError(
                    f"cannot dead-letter {copy.label} to exchange {self.topology.dlx!r}: {error}"
                )
            raise BrokerError(f"cannot dead-letter {copy.label}: {_sample(failures)}")
        self._settle(delivery, "ack")

    # -- inspection ----------------------------------------------------------------------------

    def depth(self) -> Depth:
        with self._admin(f"reading the depth of queue {self.queue!r}") as adm:
            main = adm.passive(self.queue)
            if main is None:
                raise BrokerConfigError(
                    f"queue {self.queue!r} does not exist on {self.where}: run `lrtkit setup`"
                )
            dead = adm.passive(self.topology.dlq)
        # Without the management API, AMQP only gives the consumer count. lrtkit holds each
        # job with its own (cancelled) consumer, which a quorum queue keeps counting until the
        # job is settled; a worker waiting for a job counts too (see docs/rabbitmq.md).
        in_flight = main[1]
        if self.management is not None:
            info = self.management.queue(self.queue)
            in_flight = info.unacked if info is not None else in_flight
        return Depth(waiting=main[0], in_flight=in_flight, dead=dead[0] if dead else 0)

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        with self._admin(f"listing dead letters of {self.topology.dlq!r}") as adm:
            return deadletters.list_dead(
                adm, self.topology.dlq, limit, self.settings.max_deliveries
            )

    def redrive(self, job_ids: Sequence[str] | None = None) -> int:
        with self._admin(f"redriving {self.topology.dlq!r} to {self.queue!r}") as adm:
            self._require_queue(adm)
            return deadletters.redrive(adm, self.topology.dlq, self.queue, job_ids)

    def _require_queue(self, adm: Admin) -> None:
        if adm.passive(self.queue) is None:
            raise BrokerConfigError(
                f"queue {self.queue!r} does not exist on {self.where}: run `lrtkit setup`"
            )


def _int(value: object) -> int:
    if isinstance(value, int | str | bytes | float):
        try:
            return int(value)
        except ValueError:
            return 0
    return 0


def _sample(failures: dict[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in list(failures.items())[:3])
