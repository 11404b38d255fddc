"""Holding a job past SQS's 12-hour visibility cap: trade the message for a fresh copy.

SQS lets one receipt stay invisible for at most 12 hours; after that the message becomes
visible and goes to another worker, whatever ``ChangeMessageVisibility`` says. A job that runs
longer must be received again, and the only way to receive a message again without letting
anyone else see it first is to replace it:

1. **Publish a continuation copy**: same body, same ``MessageGroupId`` (the job id), a *new*
   ``MessageDeduplicationId`` (SQS keeps a deleted message's id for 5 minutes and would drop
   the copy), and two attributes: ``lrt-rollover`` (a token only this holder knows) and
   ``lrt-prior-receives`` (so delivery numbers keep counting across copies). FIFO order keeps
   the copy behind the original in its group: nobody can receive it yet.
2. **Delete the original**, only once the copy is durable. The job is never out of the queue.
3. **Receive until the copy comes back** (its token matches). The copy heads its group now, so
   the copy heads its own group, not the queue, so messages of other jobs may come first:
   they are kept hidden until the search ends and then made visible again together
   (``ChangeMessageVisibilityBatch`` to 0), so each costs at most one extra receive.
   ``delivery`` is updated in place: new receipt, new 12-hour window, fresh lease deadline.

Between steps 2 and 3 another worker may receive the copy. The worker wrote the job record's
``holder``/``held_until`` before calling ``rollover`` and keeps it fresh, so that worker hands
the copy straight back without running it, and this loop gets it on a later receive.

If this process dies at any point, nothing is lost: before step 2 the original comes back
when its lease runs out (the copy follows it in the group and is acked as already done, or
runs if the original was not finished); after step 2 the copy is in the queue and another
worker resumes the job from its checkpoint once the record's hold expires.

Costs per rollover (every ~12 hours of one job): one SendMessage, one DeleteMessage, one or
more ReceiveMessage calls, and for a deep queue one receive (+1 ``ApproximateReceiveCount``)
of each message of another job passed over before the copy, with their release. If the copy
is not back within the search budget the rollover gives up with ``LeaseLost``: the worker
stops the job, which then resumes from its checkpoint elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from lrtkit.errors import BrokerError, LeaseLost
from lrtkit_sqs.client import visibility
from lrtkit_sqs.deadletter import MAX_ATTRIBUTES, string_attr, user_attributes

if TYPE_CHECKING:
    from lrtkit.broker import Delivery
    from lrtkit_sqs.broker import SqsBroker

log = logging.getLogger("lrtkit.sqs")

TOKEN = "lrt-rollover"  # noqa: S105 - an attribute name, not a secret
UNTIL = "lrt-rollover-until"
PRIOR = "lrt-prior-receives"


def search_budget(broker: SqsBroker) -> float:
    """How long step 3 may take: most of a lease.

    The worker's record hold covers one lease from just before the rollover, and other lrtkit
    consumers hand the copy back unseen for this long (``lrt-rollover-until``).
    """
    return max(2.0, broker.settings.lease_seconds * 0.75)


def rolling_over_until(msg: dict[str, Any]) -> float | None:
    """For a continuation copy whose holder may still be looking for it: until when (epoch)."""
    attrs = msg.get("MessageAttributes") or {}
    until = attrs.get(UNTIL, {}).get("StringValue")
    if TOKEN not in attrs or until is None:
        return None
    try:
        value = float(until)
    except ValueError:
        return None
    return value if value > time.time() else None


def roll_over(broker: SqsBroker, delivery: Delivery) -> None:
    q = broker.queues
    h = broker.handle_of(delivery)
    token = uuid.uuid4().hex
    # Remember every copy this holder sent: if a rollover is retried after the delete failed,
    # the first copy heads the group and the later one can only come after it.
    h.rollover_tokens.append(token)
    own = {
        TOKEN: string_attr(token),
        PRIOR: {"DataType": "Number", "StringValue": str(max(0, delivery.delivery_count - 1))},
        # Other lrtkit consumers hand a copy back unseen until then (wall clock, epoch seconds).
        UNTIL: {
            "DataType": "Number",
            "StringValue": f"{time.time() + search_budget(broker) + 1:.3f}",
        },
    }
    attrs = {**user_attributes(h.attributes, MAX_ATTRIBUTES - len(own)), **own}
    broker.api.call(
        "send_message",
        f"queue {q.name} (rollover)",
        QueueUrl=q.url,
        MessageBody=delivery.body.decode("utf-8"),
        MessageGroupId=h.group_id,
        MessageDeduplicationId=token,
        MessageAttributes=attrs,
    )
    try:
        broker.api.call(
            "delete_message", f"queue {q.name} (rollover)", QueueUrl=q.url, ReceiptHandle=h.receipt
        )
    except LeaseLost:
        delivery.lost = True
        raise
    _take_back(broker, delivery, set(h.rollover_tokens))


def _take_back(broker: SqsBroker, delivery: Delivery, tokens: set[str]) -> None:
    deadline = time.monotonic() + search_budget(broker)
    # Messages of other jobs stay hidden until the search ends: released after each pass, the
    # oldest waiting jobs would come back on every receive, each pass adding one to their
    # ApproximateReceiveCount until SQS dead-lettered them unrun.
    passed_over: list[str] = []
    try:
        _search(broker, delivery, tokens, deadline, passed_over)
    finally:
        show_again(broker, passed_over)


def _search(
    broker: SqsBroker,
    delivery: Delivery,
    tokens: set[str],
    deadline: float,
    passed_over: list[str],
) -> None:
    q = broker.queues
    h = broker.handle_of(delivery)
    receives = 0
    while time.monotonic() < deadline:
        receives += 1
        started = time.monotonic()
        resp = broker.api.call(
            "receive_message",
            f"queue {q.name} (rollover)",
            QueueUrl=q.url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=visibility(broker._lease()),
            WaitTimeSeconds=1,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        mine: dict[str, Any] | None = None
        others: list[str] = []
        for msg in resp.get("Messages") or []:
            attr = (msg.get("MessageAttributes") or {}).get(TOKEN, {})
            if mine is None and attr.get("StringValue") in tokens:
                mine = msg
            else:
                others.append(msg["ReceiptHandle"])
        passed_over.extend(others)
        if mine is not None:
            fresh = broker.delivery_of(mine, started)
            delivery.handle = fresh.handle
            delivery.lease_deadline = fresh.lease_deadline
            delivery.headers = fresh.headers
            delivery.lost = False
            log.info(
                "sqs rollover: copy of %s back after %d receive(s), %d other(s) passed over",
                h.group_id,
                receives,
                len(passed_over),
            )
            return
    delivery.lost = True
    log.warning("sqs rollover: copy of %s not back after %d receive(s)", h.group_id, receives)
    raise LeaseLost(
        f"rollover: the continuation copy was not received back within "
        f"{search_budget(broker):g}s ({len(passed_over)} messages of other jobs passed over); "
        "it is in the queue and the job resumes from its checkpoint once this holder's hold "
        "expires"
    )


def show_again(broker: SqsBroker, receipts: list[str], hide: int = 0) -> None:
    """Make received messages visible again (after ``hide`` s; errors ignored: the lease ends)."""
    if not receipts:
        return
    q = broker.queues
    # AWS takes at most 10 entries a batch. If a call fails, those messages come back by
    # themselves when their short lease runs out.
    for start in range(0, len(receipts), 10):
        with contextlib.suppress(BrokerError):
            broker.api.call(
                "change_message_visibility_batch",
                f"queue {q.name} (rollover)",
                QueueUrl=q.url,
                Entries=[
                    {"Id": f"r{i}", "ReceiptHandle": r, "VisibilityTimeout": hide}
                    for i, r in enumerate(receipts[start : start + 10])
                ],
            )
