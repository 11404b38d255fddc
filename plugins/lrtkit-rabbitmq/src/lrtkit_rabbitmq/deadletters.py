"""Reading and redriving the dead-letter queue.

Listing must not consume: every message is taken with ``basic_get`` (no auto-ack), read,
and all of them are handed back with one ``basic_nack(multiple=True, requeue=True)`` at the
end (a channel close would do the same if we died half way). Because nothing is acked while
listing, each ``basic_get`` returns a message not seen yet, and the listing ends when the
queue answers empty.

Redrive publishes a copy to the job queue with a publisher confirm, and only then acks the
dead letter: a crash in between leaves a duplicate, never a loss.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from pika import exceptions as pex

from lrtkit.broker import DeadLetter
from lrtkit.errors import BrokerError
from lrtkit.jobs import job_id_of
from lrtkit_rabbitmq.admin import Admin
from lrtkit_rabbitmq.session import properties

REASON = "x-lrtkit-reason"
JOB_ID = "x-lrtkit-job-id"
DELIVERIES = "x-lrtkit-deliveries"
_DEATH_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
    REASON,
    JOB_ID,
    DELIVERIES,
)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def describe(headers: dict[str, Any] | None, max_deliveries: int) -> tuple[str, int]:
    """(reason, deliveries) of a dead letter, from lrtkit's headers or RabbitMQ's ``x-death``."""
    headers = headers or {}
    if REASON in headers:
        return _text(headers[REASON]), int(headers.get(DELIVERIES) or 0)
    deaths = headers.get("x-death") or []
    first = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    reason = _text(headers.get("x-first-death-reason") or first.get("reason") or "unknown")
    if reason == "delivery_limit":
        detail = (
            f"delivery_limit: delivered {max_deliveries + 1} times without being acknowledged "
            "(the worker died or lost its connection each time)"
        )
        return detail, max_deliveries + 1
    if reason == "rejected":
        return "rejected: a consumer rejected the message without requeue", 0
    return reason, 0


def list_dead(admin: Admin, dlq: str, limit: int | None, max_deliveries: int) -> list[DeadLetter]:
    ch = admin.fresh_channel()
    found: list[DeadLetter] = []
    taken = 0
    try:
        while limit is None or len(found) < limit:
            method, props, body = ch.basic_get(dlq, auto_ack=False)
            if method is None:
                break
            taken += 1
            reason, deliveries = describe(props.headers, max_deliveries)
            found.append(DeadLetter(job_id_of(body), reason, deliveries, bytes(body)))
    except pex.ChannelClosedByBroker as exc:
        admin.channel = None
        if exc.reply_code == 404:
            raise BrokerError(
                f"dead-letter queue {dlq!r} does not exist: run `lrtkit setup`"
            ) from None
        raise
    finally:
        if taken and ch.is_open:
            ch.basic_nack(delivery_tag=0, multiple=True, requeue=True)
    return found


def redrive(admin: Admin, dlq: str, queue: str, job_ids: Collection[str] | None) -> int:
    get_ch = admin.fresh_channel()
    pub_ch = admin.connection.channel()
    pub_ch.confirm_delivery()
    wanted = set(job_ids) if job_ids is not None else None
    moved = 0
    kept = 0
    try:
        while True:
            method, props, body = get_ch.basic_get(dlq, auto_ack=False)
            if method is None:
                break
            job_id = job_id_of(body)
            if wanted is not None and job_id not in wanted:
                kept += 1
                continue
            headers = {k: v for k, v in (props.headers or {}).items() if k not in _DEATH_HEADERS}
            try:
                pub_ch.basic_publish(
                    "",
                    queue,
                    body,
                    properties(job_id or props.message_id, headers, like=props),
                    mandatory=True,
                )
            except (pex.UnroutableError, pex.NackError) as exc:
                raise BrokerError(
                    f"redrive of {job_id or '(no job id)'} to queue {queue!r} was refused "
                    f"({type(exc).__name__}); does the queue exist? run `lrtkit setup`"
                ) from None
            get_ch.basic_ack(method.delivery_tag)
            moved += 1
    finally:
        if kept and get_ch.is_open:
            get_ch.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        if pub_ch.is_open:
            pub_ch.close()
    return moved
