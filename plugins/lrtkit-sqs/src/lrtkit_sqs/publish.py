"""Publishing: batches of 10 sent concurrently, every failed entry retried or reported.

Each message goes out the way the SaladCloud guide's submitter sends it: ``MessageGroupId =
MessageDeduplicationId = job_id`` and the job's JSON as the body. Every body is checked against
the queue's ``MaximumMessageSize`` before anything is sent, so a too-large job fails the whole
call up front (:class:`~lrtkit.errors.PayloadTooLarge` naming it) instead of half-way through.

A batch entry that SQS reports as failed with ``SenderFault = false`` (a server-side hiccup),
and a whole batch whose request failed after botocore's own retries, are retried with
exponential backoff. Retrying is safe: SQS drops a second copy with the same deduplication id
for five minutes. Whatever still failed is raised together in one
:class:`~lrtkit.errors.PublishError`, keyed by job id: nothing is dropped silently.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lrtkit.backoff import backoff
from lrtkit.broker import Message
from lrtkit.errors import (
    BrokerConfigError,
    BrokerError,
    InvalidJob,
    PayloadTooLarge,
    PublishError,
)
from lrtkit_sqs.client import SqsApi
from lrtkit_sqs.codec import to_wire, wire_size

BATCH_ENTRIES = 10  # AWS's limit per SendMessageBatch (moto accepts more; AWS does not)


@dataclass
class BatchOutcome:
    published: int = 0
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Wire:
    """One message as it goes out: SQS text, attributes, and the size SQS counts."""

    text: str
    attributes: dict[str, Any]
    size: int


def to_wire_checked(messages: Sequence[Message], max_size: int, queue: str) -> list[Wire]:
    """The messages as SQS text; raises before sending anything if one is too large."""
    out = []
    for msg in messages:
        if not msg.job_id:
            raise InvalidJob("a message has an empty job id (it is the MessageGroupId)")
        text, attrs = to_wire(msg.body)
        size = wire_size(text, attrs)
        if size > max_size:
            raise PayloadTooLarge(
                f"job {msg.job_id}: message is {size} bytes but queue {queue} accepts at most "
                f"{max_size} (MaximumMessageSize). Put large inputs in the bucket and send a "
                "reference to them in the job"
            )
        out.append(Wire(text, attrs, size))
    return out


def batches(wires: Sequence[Wire], max_bytes: int) -> list[list[int]]:
    """Indexes of ``wires`` grouped into batches of at most 10 entries and ``max_bytes``."""
    out: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, wire in enumerate(wires):
        n = wire.size
        if current and (len(current) == BATCH_ENTRIES or size + n > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(i)
        size += n
    if current:
        out.append(current)
    return out


class Publisher:
    """Sends messages to one FIFO queue."""

    def __init__(
        self,
        api: SqsApi,
        *,
        url: str,
        queue: str,
        max_size: int,
        threads: int,
        attempts: int,
        backoff: float = 0.2,
    ) -> None:
        self.api = api
        self.url = url
        self.queue = queue
        self.max_size = max_size
        self.threads = threads
        self.attempts = attempts
        self.backoff = backoff

    def publish(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        texts = to_wire_checked(messages, self.max_size, self.queue)
        groups = batches(texts, self.max_size)
        outcome = BatchOutcome()
        if len(groups) == 1 or self.threads == 1:
            results = [self._send(messages, texts, g) for g in groups]
        else:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="lrtkit-sqs-publish") as pool:
                results = list(pool.map(lambda g: self._send(messages, texts, g), groups))
        for r in results:
            outcome.published += r.published
            outcome.failed.update(r.failed)
        if outcome.failed:
            raise PublishError(outcome.failed, outcome.published)

    def _send(
        self, messages: Sequence[Message], texts: list[Wire], group: list[int]
    ) -> BatchOutcome:
        outcome = BatchOutcome()
        pending = list(group)
        reasons: dict[int, str] = {}
        for attempt in range(self.attempts):
            if attempt:
                self._sleep(attempt)
            entries = [self._entry(i, messages[i], texts[i]) for i in pending]
            try:
                resp = self.api.call(
                    "send_message_batch", f"queue {self.queue}", QueueUrl=self.url, Entries=entries
                )
            except BrokerConfigError:
                raise  # a missing queue or a denied permission does not get better by retrying
            except BrokerError as exc:
                reasons.update(dict.fromkeys(pending, str(exc)))
                continue
            ok = {int(e["Id"][1:]) for e in resp.get("Successful", [])}
            outcome.published += len(ok)
            retry = []
            for failure in resp.get("Failed", []):
                i = int(failure["Id"][1:])
                reasons[i] = f"{failure.get('Code', '?')}: {failure.get('Message', '')}".strip()
                if failure.get("SenderFault"):
                    outcome.failed[messages[i].job_id] = reasons[i]
                else:
                    retry.append(i)
            # An entry in neither list was not taken either: retry it rather than trust silence.
            answered = ok | {int(f["Id"][1:]) for f in resp.get("Failed", [])}
            retry += [i for i in pending if i not in answered]
            pending = retry
            if not pending:
                return outcome
        for i in pending:
            outcome.failed[messages[i].job_id] = (
                f"{reasons.get(i, 'not accepted')} (after {self.attempts} attempts)"
            )
        return outcome

    @staticmethod
    def _entry(i: int, msg: Message, wire: Wire) -> dict[str, Any]:
        # Entry ids only allow [A-Za-z0-9_-]{1,80}; job ids may have dots, so use the index.
        entry: dict[str, Any] = {
            "Id": f"m{i}",
            "MessageBody": wire.text,
            "MessageGroupId": msg.job_id,
            "MessageDeduplicationId": msg.job_id,
        }
        if wire.attributes:
            entry["MessageAttributes"] = wire.attributes
        return entry

    def _sleep(self, attempt: int) -> None:
        time.sleep(backoff(attempt, self.backoff, cap=10.0))
