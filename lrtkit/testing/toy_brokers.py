"""An in-memory broker for tests, sound or with one deliberate flaw.

:class:`MemoryBroker` keeps its queue in a :class:`MemoryQueue` shared by every broker object
built on it, in one process: useful to unit-test code that talks to a broker, and (with a
``flaw``) to prove that :class:`~lrtkit.testing.broker_contract.BrokerContract` catches broken
brokers. It has no entry point: :func:`memory_target` hands it to the contract suite directly.
Its tests that spawn processes cannot reach it; deselect them (``-k "not process"``).

Flaws:

* ``"double_delivery"``: ``receive`` ignores leases and hands out jobs another holder has.
* ``"forget_released"``: ``release`` drops the job instead of making it available again.
* ``"lose_dead_letters"``: ``dead_letter`` removes the job without keeping it.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from lrtkit.broker import Broker, DeadLetter, Delivery, Depth, Message, SetupReport
from lrtkit.errors import LeaseLost
from lrtkit.jobs import job_id_of
from lrtkit.testing.target import BrokerTarget

if TYPE_CHECKING:
    from lrtkit.config import Settings

Flaw = Literal["double_delivery", "forget_released", "lose_dead_letters"]
FLAWS: tuple[Flaw, ...] = ("double_delivery", "forget_released", "lose_dead_letters")


@dataclass
class _Row:
    job_id: str
    body: bytes
    visible_at: float = 0.0
    deliveries: int = 0
    token: str | None = None


@dataclass
class MemoryQueue:
    """The state several :class:`MemoryBroker` objects share (one queue, one process)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    rows: dict[int, _Row] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=itertools.count)


class MemoryBroker(Broker):
    """A timed-lease broker in memory. Time is ``time.monotonic()`` (one process only)."""

    name: ClassVar[str] = "memory"
    timed_lease: ClassVar[bool] = True

    def __init__(
        self,
        store: MemoryQueue | None = None,
        *,
        lease_seconds: float = 60.0,
        flaw: Flaw | None = None,
    ) -> None:
        if flaw is not None and flaw not in FLAWS:
            raise ValueError(f"unknown flaw {flaw!r}; known: {', '.join(FLAWS)}")
        self.store = store if store is not None else MemoryQueue()
        self.lease_seconds = lease_seconds
        self.flaw = flaw

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryBroker:
        return cls(lease_seconds=settings.lease_seconds)

    def ensure(self) -> SetupReport:
        return SetupReport(existing=["in-memory queue"])

    def publish(self, messages: Sequence[Message]) -> None:
        with self.store.lock:
            for message in messages:
                row = _Row(message.job_id, bytes(message.body), visible_at=time.monotonic())
                self.store.rows[next(self.store.ids)] = row

    def receive(self, wait: float) -> Delivery | None:
        deadline = time.monotonic() + wait
        while True:
            started = time.monotonic()
            with self.store.lock:
                for row_id in sorted(self.store.rows):
                    row = self.store.rows[row_id]
                    if row.visible_at <= started or self.flaw == "double_delivery":
                        row.token = secrets.token_hex(8)
                        row.deliveries += 1
                        row.visible_at = started + self.lease_seconds
                        return Delivery(
                            body=row.body,
                            delivery_count=row.deliveries,
                            handle=(row_id, row.token),
                            lease_deadline=started + self.lease_seconds,
                        )
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def _held(self, delivery: Delivery) -> tuple[int, _Row]:
        """The row this delivery still leases (call with the lock held)."""
        row_id, token = delivery.handle
        row = self.store.rows.get(row_id)
        if row is None or row.token != token:
            delivery.lost = True
            raise LeaseLost("the job was given to another holder")
        return row_id, row

    def _extend(self, delivery: Delivery, seconds: float) -> None:
        with self.store.lock:
            _, row = self._held(delivery)
            row.visible_at = time.monotonic() + seconds

    def _ack(self, delivery: Delivery) -> None:
        with self.store.lock:
            row_id, _ = self._held(delivery)
            del self.store.rows[row_id]

    def _release(self, delivery: Delivery, delay: float) -> None:
        with self.store.lock:
            row_id, row = self._held(delivery)
            if self.flaw == "forget_released":
                del self.store.rows[row_id]
                return
            row.token = None
            row.visible_at = time.monotonic() + delay

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self.store.lock:
            row_id, row = self._held(delivery)
            del self.store.rows[row_id]
            if self.flaw != "lose_dead_letters":
                self.store.dead.append(
                    DeadLetter(job_id_of(row.body), reason, row.deliveries, row.body)
                )

    def depth(self) -> Depth:
        now = time.monotonic()
        with self.store.lock:
            rows = list(self.store.rows.values())
            dead = len(self.store.dead)
        in_flight = sum(1 for r in rows if r.token is not None and r.visible_at > now)
        return Depth(len(rows) - in_flight, in_flight, dead)

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        with self.store.lock:
            return list(self.store.dead[:limit])

    def redrive(self, job_ids: Sequence[str] | None = None) -> int:
        with self.store.lock:
            chosen = [d for d in self.store.dead if job_ids is None or d.job_id in job_ids]
            self.store.dead = [d for d in self.store.dead if d not in chosen]
            now = time.monotonic()
            for letter in chosen:
                row = _Row(letter.job_id or "", letter.body, visible_at=now)
                self.store.rows[next(self.store.ids)] = row
        return len(chosen)


@dataclass
class MemoryTarget(BrokerTarget):
    """A :class:`BrokerTarget` whose brokers are :class:`MemoryBroker` objects on one queue."""

    store: MemoryQueue = field(default_factory=MemoryQueue)
    flaw: Flaw | None = None

    def broker(self, **overrides: Any) -> Broker:
        lease = float(overrides.get("lease_seconds", 60.0))
        broker = MemoryBroker(self.store, lease_seconds=lease, flaw=self.flaw)
        self.brokers.append(broker)
        return broker


def memory_target(flaw: Flaw | None = None) -> MemoryTarget:
    """A fresh in-memory queue for the contract suite, sound or with ``flaw``."""
    return MemoryTarget(env={"LRT_BROKER": "memory"}, flaw=flaw)
