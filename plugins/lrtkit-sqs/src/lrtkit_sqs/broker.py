"""``LRT_BROKER=sqs``: an Amazon SQS FIFO queue and its FIFO dead-letter queue.

* The lease is the visibility timeout: ``receive`` asks for ``LRT_LEASE_SECONDS`` of it,
  ``extend`` is ``ChangeMessageVisibility``, ``release`` sets it to 0 (or to the delay).
* ``MessageGroupId = MessageDeduplicationId = job_id`` on publish, as the SaladCloud guide's
  submitter sends; ``ApproximateReceiveCount`` is the delivery number.
* Lease deadlines are computed from the instant *before* each request was sent, so the local
  deadline is never later than the one SQS keeps. Receipt handles are never trusted for
  fencing (the base class refuses to renew a lease whose local deadline has passed).
* SQS caps one receipt's visibility at 12 hours: ``extend`` never asks past the cap, and
  ``rollover`` (see :mod:`lrtkit_sqs.rollover`) trades the message for a fresh copy before it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from lrtkit.broker import Broker, Check, DeadLetter, Delivery, Depth, Message, SetupReport
from lrtkit.errors import BrokerConfigError, LeaseLost, LrtError
from lrtkit.jobs import job_id_of
from lrtkit_sqs.client import SqsApi, visibility
from lrtkit_sqs.codec import from_wire
from lrtkit_sqs.deadletter import DeadLetters
from lrtkit_sqs.publish import Publisher
from lrtkit_sqs.rollover import roll_over, rolling_over_until, show_again
from lrtkit_sqs.settings import SQS_MAX_VISIBILITY, SqsSettings
from lrtkit_sqs.setup import Queues, QueueSetup, name_of_url

if TYPE_CHECKING:
    from lrtkit.config import Settings

#: Message attribute carrying the receives of earlier copies of a rolled-over job.
PRIOR_RECEIVES = "lrt-prior-receives"
#: Pause after handing back another holder's continuation copy, so that holder gets it first.
BOUNCE_PAUSE = 0.3
#: Pause between short polls when the lease is too short for long polling.
SHORT_POLL_PAUSE = 0.2


@dataclass
class SqsHandle:
    """What lrtkit keeps of one receipt (``Delivery.handle``)."""

    receipt: str
    message_id: str
    group_id: str
    received_at: float  # time.monotonic() before the receive request: the cap counts from here
    attributes: dict[str, Any] = field(default_factory=dict)  # the message's own attributes
    rollover_tokens: list[str] = field(default_factory=list)  # copies sent by rollover


class SqsBroker(Broker):
    """An SQS FIFO queue. Thread-safe: one boto3 client, shared."""

    name: ClassVar[str] = "sqs"
    timed_lease: ClassVar[bool] = True
    max_lease_seconds: float | None = float(SQS_MAX_VISIBILITY)

    def __init__(self, settings: Settings, sqs: SqsSettings) -> None:
        self.settings = settings
        self.sqs = sqs
        self.api = SqsApi(sqs, sqs.poll_seconds)
        self.setup = QueueSetup(self.api, settings, sqs)
        self._lock = threading.Lock()
        self._queues: Queues | None = None
        self._handed_back: dict[str, float] = {}  # message id -> end of its holder's search
        if sqs.max_lease_seconds != SQS_MAX_VISIBILITY:
            # Per-instance cap (LRT_SQS_MAX_LEASE_SECONDS, for tests and cautious setups): the
            # worker reads ``broker.max_lease_seconds`` and rolls over before it.
            self.max_lease_seconds = float(sqs.max_lease_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> SqsBroker:
        return cls(settings, settings.plugin_settings(SqsSettings))

    @property
    def cap(self) -> float:
        return self.max_lease_seconds or float(SQS_MAX_VISIBILITY)

    @property
    def queues(self) -> Queues:
        """The resolved queues (looked up once, on first use)."""
        with self._lock:
            if self._queues is None:
                self._queues = self.setup.resolve()
            return self._queues

    def _dead_letters(self) -> DeadLetters:
        q = self.queues
        if q.dlq_url is None:
            raise BrokerConfigError(
                f"SQS queue {q.name} has no dead-letter queue: run `lrtkit setup`, or set "
                "LRT_SQS_DLQ_URL (or SQS_DLQ_URL)"
            )
        return DeadLetters(
            self.api,
            main_url=q.url,
            dlq_url=q.dlq_url,
            dlq_name=name_of_url(q.dlq_url),
            delivery_limit=lambda: q.max_receive_count,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def ensure(self) -> SetupReport:
        report = self.setup.ensure()
        with self._lock:
            self._queues = None
        return report

    def diagnose(self) -> list[Check]:
        try:
            return self.setup.diagnose()
        except LrtError as exc:
            return [Check("sqs", "fail", str(exc))]

    def close(self) -> None:
        self.api.close()

    # -- producing -----------------------------------------------------------------------------

    def publish(self, messages: Sequence[Message]) -> None:
        q = self.queues
        Publisher(
            self.api,
            url=q.url,
            queue=q.name,
            max_size=q.max_message_size,
            threads=self.sqs.publish_threads,
            attempts=self.sqs.publish_attempts,
        ).publish(messages)

    # -- consuming -----------------------------------------------------------------------------

    def _lease(self) -> float:
        return min(self.settings.lease_seconds, self.cap)

    def _max_poll(self) -> int:
        """Longest long-poll wait per request: at most half a lease.

        SQS starts the visibility timeout when it hands the message out, somewhere inside the
        long poll; the lease deadline counts from before the request (the safe side), so a
        message that arrives late in a long poll must still leave most of a lease to work with.
        """
        return min(self.sqs.poll_seconds, int(self._lease() // 2))

    def receive(self, wait: float) -> Delivery | None:
        q = self.queues
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            remaining = deadline - time.monotonic()
            poll = min(self._max_poll(), max(0, math.ceil(remaining)))
            started = time.monotonic()
            resp = self.api.call(
                "receive_message",
                f"queue {q.name}",
                QueueUrl=q.url,
                MaxNumberOfMessages=1,
                VisibilityTimeout=visibility(self._lease()),
                WaitTimeSeconds=poll,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            messages = resp.get("Messages") or []
            until = rolling_over_until(messages[0]) if messages else None
            if until is not None:
                self._hand_back(messages[0], until)
                time.sleep(max(0.0, min(BOUNCE_PAUSE, deadline - time.monotonic())))
            elif messages:
                return self.delivery_of(messages[0], started)
            if time.monotonic() >= deadline:
                return None
            if not messages and poll == 0:
                time.sleep(min(SHORT_POLL_PAUSE, max(0.0, deadline - time.monotonic())))

    def _hand_back(self, msg: dict[str, Any], until: float) -> None:
        """Give another holder's continuation copy back without seeing it.

        The first time at once, so that its holder (polling for it right now) gets it. Seen
        again, its holder is probably gone: hide it until the holder's search window ends, so
        that idle consumers do not bounce it up to the queue's maxReceiveCount.
        """
        now = time.time()
        with self._lock:
            self._handed_back = {k: v for k, v in self._handed_back.items() if v > now}
            again = msg["MessageId"] in self._handed_back
            self._handed_back[msg["MessageId"]] = until
        hide = min(math.ceil(until - now), SQS_MAX_VISIBILITY) if again else 0
        show_again(self, [msg["ReceiptHandle"]], hide)

    def delivery_of(self, msg: dict[str, Any], started: float) -> Delivery:
        """A :class:`Delivery` for a received message (``started``: before the request)."""
        system = msg.get("Attributes", {})
        attrs: dict[str, Any] = msg.get("MessageAttributes") or {}
        body = from_wire(msg["Body"], attrs)
        prior = int(attrs.get(PRIOR_RECEIVES, {}).get("StringValue", "0") or 0)
        count = prior + int(system.get("ApproximateReceiveCount", "1"))
        handle = SqsHandle(
            receipt=msg["ReceiptHandle"],
            message_id=msg["MessageId"],
            group_id=str(system.get("MessageGroupId") or job_id_of(body) or msg["MessageId"]),
            received_at=started,
            attributes=attrs,
        )
        headers = {k: str(v.get("StringValue", "")) for k, v in attrs.items() if "StringValue" in v}
        return Delivery(
            body=body,
            delivery_count=count,
            handle=handle,
            lease_deadline=started + self._lease(),
            headers=headers,
        )

    @staticmethod
    def handle_of(delivery: Delivery) -> SqsHandle:
        handle = delivery.handle
        if not isinstance(handle, SqsHandle):
            raise TypeError("this delivery did not come from an SQS broker")
        return handle

    def cap_left(self, delivery: Delivery) -> float:
        """Seconds until this receipt reaches the visibility cap (12 h from receipt)."""
        return self.cap - (time.monotonic() - self.handle_of(delivery).received_at)

    def extend(self, delivery: Delivery, seconds: float) -> None:
        """Renew the lease, but never past the visibility cap of this receipt.

        Near the cap the lease is renewed only up to it: the worker calls ``rollover`` before
        then. At the cap itself, ``LeaseLost``.
        """
        left = math.floor(self.cap_left(delivery))
        if seconds > left:
            if left < 1:
                delivery.lost = True
                raise LeaseLost(
                    f"the receipt reached SQS's {self.cap:g}s visibility cap (no rollover)"
                )
            seconds = float(left)
        super().extend(delivery, seconds)

    def _extend(self, delivery: Delivery, seconds: float) -> None:
        h = self.handle_of(delivery)
        q = self.queues
        self.api.call(
            "change_message_visibility",
            f"queue {q.name}",
            QueueUrl=q.url,
            ReceiptHandle=h.receipt,
            VisibilityTimeout=visibility(seconds),
        )

    def _ack(self, delivery: Delivery) -> None:
        h = self.handle_of(delivery)
        q = self.queues
        self.api.call("delete_message", f"queue {q.name}", QueueUrl=q.url, ReceiptHandle=h.receipt)

    def _release(self, delivery: Delivery, delay: float) -> None:
        h = self.handle_of(delivery)
        q = self.queues
        hide = min(visibility(delay), max(0, math.floor(self.cap_left(delivery))))
        self.api.call(
            "change_message_visibility",
            f"queue {q.name}",
            QueueUrl=q.url,
            ReceiptHandle=h.receipt,
            VisibilityTimeout=hide,
        )
        delivery.lost = True  # released: this holder no longer owns it

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        h = self.handle_of(delivery)
        self._dead_letters().send(
            delivery.body,
            group=h.group_id,
            reason=reason,
            deliveries=delivery.delivery_count,
            attributes=h.attributes,
        )
        # Only once the dead-letter queue has the copy: remove the original.
        self._ack(delivery)

    def rollover(self, delivery: Delivery) -> None:
        self._check_held(delivery)
        roll_over(self, delivery)

    # -- inspection ----------------------------------------------------------------------------

    def depth(self) -> Depth:
        q = self.queues
        attrs = self.api.call(
            "get_queue_attributes",
            f"queue {q.name}",
            QueueUrl=q.url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesDelayed",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        ).get("Attributes", {})
        dead = 0
        if q.dlq_url:
            dattrs = self.api.call(
                "get_queue_attributes",
                "dead-letter queue",
                QueueUrl=q.dlq_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            ).get("Attributes", {})
            dead = int(dattrs.get("ApproximateNumberOfMessages", 0)) + int(
                dattrs.get("ApproximateNumberOfMessagesNotVisible", 0)
            )
        return Depth(
            waiting=int(attrs.get("ApproximateNumberOfMessages", 0))
            + int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
            in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
            dead=dead,
        )

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        return self._dead_letters().peek(limit)

    def redrive(self, job_ids: Sequence[str] | None = None) -> int:
        return self._dead_letters().redrive(job_ids)
