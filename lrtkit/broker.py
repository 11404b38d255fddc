"""The broker protocol every queue backend implements, and the types it speaks.

A broker moves opaque message bodies. It knows nothing of payload models, job records or
checkpoints: those live in the worker and the storage. What every broker must guarantee
is written in DESIGN.md section 2 and checked by :mod:`lrtkit.testing.broker_contract`.

Plugins subclass :class:`Broker`, implement the abstract methods and expose the class as an
entry point in the ``lrtkit.brokers`` namespace. The base class keeps the rules that are the
same on every broker, so a plugin cannot get them wrong:

* ``extend`` refuses to renew a lease whose local deadline has already passed and raises
  :class:`~lrtkit.errors.LeaseLost`: once the lease ran out the broker may have given the
  job to someone else, and no broker is trusted to reject a stale handle (moto does not).
* ``ack``, ``release`` and ``dead_letter`` on a delivery whose lease is known lost raise
  ``LeaseLost``.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from lrtkit.errors import LeaseLost

if TYPE_CHECKING:
    from lrtkit.config import Settings


class Message(NamedTuple):
    """One job to publish: its id (for deduplication and error reports) and its body."""

    job_id: str
    body: bytes


class Depth(NamedTuple):
    """How many jobs wait, how many are held by workers, how many are dead-lettered."""

    waiting: int
    in_flight: int
    dead: int


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message: its original body and why it was dead-lettered."""

    job_id: str | None
    reason: str
    deliveries: int
    body: bytes


@dataclass(frozen=True)
class Check:
    """One finding of ``lrtkit doctor``: ``status`` is ``ok``, ``warn`` or ``fail``."""

    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class SetupReport:
    """What ``ensure()`` did: resources created, found as wanted, or found different."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Delivery:
    """A received message and its lease.

    ``delivery_count`` is 1 on the first delivery. ``handle`` is the broker's own lease handle
    (receipt handle, delivery tag, stream entry id, lease token), opaque to everyone else.
    ``lease_deadline`` is a ``time.monotonic()`` instant computed conservatively (from the
    moment before the receive or extend request was sent); ``math.inf`` for brokers whose lease
    is a connection rather than a timer.
    """

    body: bytes
    delivery_count: int
    handle: Any
    lease_deadline: float = math.inf
    headers: dict[str, str] = field(default_factory=dict)
    lost: bool = False

    def lease_expired(self, now: float | None = None) -> bool:
        return self.lost or (now if now is not None else time.monotonic()) >= self.lease_deadline

    def remaining(self) -> float:
        return self.lease_deadline - time.monotonic()


class Broker(ABC):
    """A queue backend. Safe to call from several threads at once.

    Class attributes describe what the broker can do, for the worker and the contract suite:

    * ``timed_lease``: the lease runs out by time while the holder is alive (SQS, Redis,
      local). False where the lease is the connection (RabbitMQ).
    * ``max_lease_seconds``: the longest single lease the broker grants (SQS: 12 h from
      receipt), or ``None``. An instance may lower it from its settings.
    * ``counts_in_flight``: ``depth().in_flight`` counts exactly the jobs held by workers.
      False where the broker cannot tell a busy worker from an idle one (RabbitMQ without its
      management API counts consumers); the autoscaler refuses to size a fleet from that.
    """

    name: ClassVar[str] = "broker"
    timed_lease: ClassVar[bool] = True
    max_lease_seconds: float | None = None
    counts_in_flight: bool = True

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Broker:
        """Build the broker from lrtkit's settings (plugins read their own variables too)."""

    # -- lifecycle -----------------------------------------------------------------------------

    @abstractmethod
    def ensure(self) -> SetupReport:
        """Create the queue and its dead-letter queue, or check existing ones. Idempotent."""

    def diagnose(self) -> list[Check]:
        """Checks for ``lrtkit doctor``. The default proves the queue answers ``depth()``."""
        try:
            d = self.depth()
        except Exception as exc:  # noqa: BLE001 - doctor reports, never raises
            return [Check(f"{self.name} queue", "fail", f"{type(exc).__name__}: {exc}")]
        return [
            Check(
                f"{self.name} queue",
                "ok",
                f"waiting {d.waiting}, in flight {d.in_flight}, dead {d.dead}",
            )
        ]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producing -----------------------------------------------------------------------------

    @abstractmethod
    def publish(self, messages: Sequence[Message]) -> None:
        """Hand the messages to the broker durably.

        Returns only once the broker has every one (confirms or batch results checked).
        Raises :class:`~lrtkit.errors.PublishError` naming every job id that was not taken
        after retries, and :class:`~lrtkit.errors.PayloadTooLarge` before sending anything
        too big.
        """

    # -- consuming -----------------------------------------------------------------------------

    @abstractmethod
    def receive(self, wait: float) -> Delivery | None:
        """Take one message with a lease of the configured length, waiting up to ``wait`` s."""

    def extend(self, delivery: Delivery, seconds: float) -> None:
        """Renew the lease for ``seconds`` from now; ``LeaseLost`` if it is gone."""
        if delivery.lease_expired():
            delivery.lost = True
            raise LeaseLost("the lease ran out before it was renewed")
        started = time.monotonic()
        try:
            self._extend(delivery, seconds)
        except LeaseLost:
            delivery.lost = True
            raise
        if self.timed_lease:
            delivery.lease_deadline = started + seconds

    @abstractmethod
    def _extend(self, delivery: Delivery, seconds: float) -> None:
        """Broker-specific lease renewal; raise ``LeaseLost`` when the broker says so."""

    def ack(self, delivery: Delivery) -> None:
        """The job is done: remove it for good. ``LeaseLost`` if the lease is gone."""
        self._check_held(delivery)
        self._ack(delivery)

    @abstractmethod
    def _ack(self, delivery: Delivery) -> None:
        """Broker-specific acknowledgement."""

    def release(self, delivery: Delivery, delay: float = 0) -> None:
        """Make the job available again now, or after ``delay`` seconds."""
        self._check_held(delivery)
        self._release(delivery, delay)

    @abstractmethod
    def _release(self, delivery: Delivery, delay: float) -> None:
        """Broker-specific release."""

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the job to the dead-letter queue with its original body and ``reason``."""
        self._check_held(delivery)
        self._dead_letter(delivery, reason)

    @abstractmethod
    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Broker-specific dead-lettering. Never loses the message: copy first, then remove."""

    def rollover(self, delivery: Delivery) -> None:
        """Keep holding a job whose lease is about to reach ``max_lease_seconds``.

        Called by the worker's lease keeper shortly before the cap, after it has written the
        job record's ``holder``/``held_until`` (which it then keeps fresh every heartbeat), so
        that any other worker that receives the job meanwhile hands it straight back instead of
        running it. A broker with a cap must keep the job safe throughout (never deleted before
        a copy is durable) and leave ``delivery`` holding a fresh lease; brokers without a cap
        never get this call. Raises ``LeaseLost`` if the job could not be kept.
        """
        raise LeaseLost(f"{self.name} cannot hold a job past its {self.max_lease_seconds}s lease")

    # -- inspection ----------------------------------------------------------------------------

    @abstractmethod
    def depth(self) -> Depth:
        """Waiting, in-flight and dead-lettered counts (approximate where the broker is)."""

    @abstractmethod
    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """The dead-lettered messages with their reasons, without consuming them."""

    @abstractmethod
    def redrive(self, job_ids: Sequence[str] | None = None) -> int:
        """Send dead letters back to the queue (all when ``job_ids`` is None); return count."""

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _check_held(delivery: Delivery) -> None:
        if delivery.lease_expired():
            delivery.lost = True
            raise LeaseLost("the lease on this delivery is gone")
