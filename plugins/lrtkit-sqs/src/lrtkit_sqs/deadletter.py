"""The dead-letter queue: sending with a reason, peeking, and redriving.

lrtkit's reasons travel in message attributes (``lrt-reason``, ``lrt-deliveries``,
``lrt-job-id``), never in the body, which stays the job exactly as submitted. A message that
SQS itself moved there (the redrive policy's ``maxReceiveCount`` was reached) has none of
them and is shown with the reason ``delivery_limit``.

SQS cannot list a queue. ``peek`` receives the dead letters with a short visibility timeout
and, in a ``finally``, makes every one visible again at once; if the process dies in between
they come back by themselves after :data:`PEEK_VISIBILITY` seconds. Each peek counts as a
receive of the dead letter (harmless: a dead-letter queue has no redrive policy of its own).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lrtkit.broker import DeadLetter
from lrtkit.jobs import job_id_of
from lrtkit_sqs.client import SqsApi
from lrtkit_sqs.codec import ENCODING, from_wire, to_wire

PEEK_VISIBILITY = 30
REASON = "lrt-reason"
DELIVERIES = "lrt-deliveries"
JOB_ID = "lrt-job-id"
#: lrtkit's own attributes, dropped when a message goes back to the main queue.
OWN_ATTRIBUTES = frozenset(
    {REASON, DELIVERIES, JOB_ID, "lrt-rollover", "lrt-rollover-until", "lrt-prior-receives"}
)
MAX_ATTRIBUTES = 10  # SQS allows at most 10 message attributes
MAX_REASON = 2048


def string_attr(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def user_attributes(raw: dict[str, Any] | None, room: int) -> dict[str, Any]:
    """A message's own attributes minus lrtkit's, at most ``room`` of them, ready to resend."""
    out: dict[str, Any] = {}
    for name, attr in (raw or {}).items():
        if name in OWN_ATTRIBUTES or name == ENCODING or len(out) >= room:
            continue
        clean = {k: v for k, v in attr.items() if k in {"DataType", "StringValue", "BinaryValue"}}
        out[name] = clean
    return out


def group_of(body: bytes, system: dict[str, Any]) -> str:
    """The message group to send a body to: its job id, else the group it had, else a new one."""
    return job_id_of(body) or str(system.get("MessageGroupId") or uuid.uuid4().hex)


class DeadLetters:
    """Dead-letter operations for one main queue and its dead-letter queue."""

    def __init__(
        self,
        api: SqsApi,
        *,
        main_url: str,
        dlq_url: str,
        dlq_name: str,
        delivery_limit: Callable[[], int | None],
    ) -> None:
        self.api = api
        self.main_url = main_url
        self.dlq_url = dlq_url
        self.dlq_name = dlq_name
        self.delivery_limit = delivery_limit

    def send(
        self,
        body: bytes,
        *,
        group: str,
        reason: str,
        deliveries: int,
        attributes: dict[str, Any] | None,
    ) -> None:
        """Put a copy of ``body`` on the dead-letter queue with the reason (durably)."""
        own: dict[str, Any] = {
            REASON: string_attr(reason[:MAX_REASON] or "unknown"),
            DELIVERIES: {"DataType": "Number", "StringValue": str(deliveries)},
        }
        job_id = job_id_of(body)
        if job_id:
            own[JOB_ID] = string_attr(job_id)
        text, encoding = to_wire(body)
        own.update(encoding)
        attrs = {**user_attributes(attributes, MAX_ATTRIBUTES - len(own)), **own}
        self.api.call(
            "send_message",
            f"dead-letter queue {self.dlq_name}",
            QueueUrl=self.dlq_url,
            MessageBody=text,
            MessageGroupId=group,
            # A fresh id: SQS would drop a second dead letter of the same job within 5 minutes.
            MessageDeduplicationId=uuid.uuid4().hex,
            MessageAttributes=attrs,
        )

    def peek(self, limit: int | None = None) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        receipts: list[str] = []
        try:
            for msg in self._drain(receipts):
                out.append(self._describe(msg))
                if limit is not None and len(out) >= limit:
                    break
        finally:
            self._show_again(receipts)
        return out

    def redrive(self, job_ids: Sequence[str] | None) -> int:
        wanted = set(job_ids) if job_ids is not None else None
        moved = 0
        kept: list[str] = []
        try:
            for msg in self._drain(kept):
                body = from_wire(msg["Body"], msg.get("MessageAttributes"))
                if wanted is not None and job_id_of(body) not in wanted:
                    continue
                text, encoding = to_wire(body)
                self.api.call(
                    "send_message",
                    "queue (redrive)",
                    QueueUrl=self.main_url,
                    MessageBody=text,
                    MessageGroupId=group_of(body, msg.get("Attributes", {})),
                    MessageDeduplicationId=uuid.uuid4().hex,
                    MessageAttributes={
                        **user_attributes(msg.get("MessageAttributes"), MAX_ATTRIBUTES - 1),
                        **encoding,
                    },
                )
                # Only once the main queue has it: delete the dead letter.
                self.api.call(
                    "delete_message",
                    f"dead-letter queue {self.dlq_name}",
                    QueueUrl=self.dlq_url,
                    ReceiptHandle=msg["ReceiptHandle"],
                )
                kept.remove(msg["ReceiptHandle"])
                moved += 1
        finally:
            self._show_again(kept)
        return moved

    # -- helpers -------------------------------------------------------------------------------

    def _drain(self, receipts: list[str]) -> Iterator[dict[str, Any]]:
        """Every message of the dead-letter queue, each hidden for a while; records receipts."""
        while True:
            resp = self.api.call(
                "receive_message",
                f"dead-letter queue {self.dlq_name}",
                QueueUrl=self.dlq_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=PEEK_VISIBILITY,
                WaitTimeSeconds=1,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            messages = resp.get("Messages") or []
            if not messages:
                return
            for msg in messages:
                receipts.append(msg["ReceiptHandle"])
            yield from messages

    def _describe(self, msg: dict[str, Any]) -> DeadLetter:
        attrs = msg.get("MessageAttributes") or {}
        body = from_wire(msg["Body"], attrs)
        reason = attrs.get(REASON, {}).get("StringValue")
        if reason is None:
            # Moved by SQS after maxReceiveCount receives: the count is the policy's limit.
            limit = self.delivery_limit()
            received = int(msg.get("Attributes", {}).get("ApproximateReceiveCount", "0"))
            return DeadLetter(job_id_of(body), "delivery_limit", limit or received, body)
        deliveries = int(attrs.get(DELIVERIES, {}).get("StringValue", "0") or 0)
        return DeadLetter(job_id_of(body), reason, deliveries, body)

    def _show_again(self, receipts: list[str]) -> None:
        for start in range(0, len(receipts), 10):
            chunk = receipts[start : start + 10]
            self.api.call(
                "change_message_visibility_batch",
                f"dead-letter queue {self.dlq_name}",
                QueueUrl=self.dlq_url,
                Entries=[
                    {"Id": f"e{i}", "ReceiptHandle": r, "VisibilityTimeout": 0}
                    for i, r in enumerate(chunk)
                ],
            )
