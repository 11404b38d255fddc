"""Publishing on SQS: batches of 10 sent concurrently, size checked first, failures reported.

moto accepts 11 entries per batch and never fails a single entry of a FIFO batch, so batch
sizes are observed on the client (botocore's event hooks) and entry failures are injected
there: the entry is taken out of the real request and reported back as failed, exactly what
SQS does for an entry it did not take.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from lrtkit_sqs.broker import SqsBroker

from lrtkit.broker import Message
from lrtkit.errors import PayloadTooLarge, PublishError
from lrtkit.testing.broker_contract import depth_becomes, job
from lrtkit.testing.target import BrokerTarget


def sqs(target: BrokerTarget, **overrides: Any) -> SqsBroker:
    broker = target.broker(**overrides)
    assert isinstance(broker, SqsBroker)
    return broker


def on_send_batch(broker: SqsBroker) -> list[list[dict[str, Any]]]:
    """Record the entries of every SendMessageBatch request the broker makes."""
    calls: list[list[dict[str, Any]]] = []
    lock = threading.Lock()

    def record(params: dict[str, Any], **_: Any) -> None:
        with lock:
            calls.append(list(params["Entries"]))

    broker.api.client.meta.events.register("provide-client-params.sqs.SendMessageBatch", record)
    return calls


def fail_entries(broker: SqsBroker, fail: Callable[[str, int], bool], sender_fault: bool) -> None:
    """Take the entries ``fail(job_id, attempt)`` picks out of the request; report them failed."""
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def drop(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        keep: list[dict[str, Any]] = []
        gone: list[dict[str, Any]] = []
        with lock:
            for entry in params["Entries"]:
                gid = entry["MessageGroupId"]
                attempts[gid] = attempts.get(gid, 0) + 1
                (gone if fail(gid, attempts[gid]) else keep).append(entry)
        params["Entries"] = keep
        context["lrt_dropped"] = [e["Id"] for e in gone]
        context["lrt_empty"] = not keep

    def skip_if_empty(params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
        # Every entry was taken out: answer for SQS (which refuses an empty batch).
        if context.get("lrt_empty"):
            return AWSResponse("", 200, HTTPHeaders(), None), {"Successful": [], "Failed": []}
        return None

    def report(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        for entry_id in context.get("lrt_dropped", []):
            parsed.setdefault("Failed", []).append(
                {
                    "Id": entry_id,
                    "SenderFault": sender_fault,
                    "Code": "InternalError" if not sender_fault else "InvalidParameterValue",
                    "Message": "injected entry failure",
                }
            )

    broker.api.client.meta.events.register("provide-client-params.sqs.SendMessageBatch", drop)
    broker.api.client.meta.events.register("before-call.sqs.SendMessageBatch", skip_if_empty)
    broker.api.client.meta.events.register("after-call.sqs.SendMessageBatch", report)


def drain_ids(broker: SqsBroker, n: int) -> list[str]:
    ids: list[str] = []
    for _ in range(n):
        delivery = broker.receive(5)
        assert delivery is not None, f"only {len(ids)} of {n} messages came back"
        ids.append(json.loads(delivery.body)["job_id"])
        broker.ack(delivery)
    assert broker.receive(0.2) is None
    return ids


def test_batches_of_at_most_ten_with_guide_ids(lrt_broker_target: BrokerTarget) -> None:
    broker = sqs(lrt_broker_target)
    calls = on_send_batch(broker)
    ids = [f"batch.{i}" for i in range(25)]
    broker.publish([job(i, steps=i) for i in ids])
    assert sorted(len(c) for c in calls) == [5, 10, 10]  # AWS allows 10; moto would take 11
    entries = [e for c in calls for e in c]
    for entry in entries:
        body = json.loads(entry["MessageBody"])
        assert entry["MessageGroupId"] == entry["MessageDeduplicationId"] == body["job_id"]
    assert sorted(drain_ids(broker, 25)) == sorted(ids)


def test_oversize_payload_rejected_before_anything_is_sent(
    lrt_broker_target: BrokerTarget,
) -> None:
    broker = sqs(lrt_broker_target)
    calls = on_send_batch(broker)
    small = job("fits", steps=1)
    huge = job("too-big", blob="x" * 262_144)
    with pytest.raises(PayloadTooLarge) as err:
        broker.publish([small, huge])
    assert "too-big" in str(err.value)
    assert "262144" in str(err.value)
    assert calls == []
    depth_becomes(broker, (0, 0, 0))


def test_binary_body_round_trips(lrt_broker_target: BrokerTarget) -> None:
    broker = sqs(lrt_broker_target)
    body = bytes(range(256)) + b"\x00\x01"
    broker.publish([Message("binary-1", body)])
    delivery = broker.receive(5)
    assert delivery is not None
    assert delivery.body == body
    broker.dead_letter(delivery, "not JSON")
    (letter,) = broker.dead_letters()
    assert letter.body == body
    assert letter.reason == "not JSON"


def test_transient_entry_failures_are_retried(lrt_broker_target: BrokerTarget) -> None:
    broker = sqs(lrt_broker_target)
    fail_entries(broker, lambda gid, n: gid in {"t-3", "t-7", "t-12"} and n < 3, False)
    ids = [f"t-{i}" for i in range(15)]
    broker.publish([job(i) for i in ids])
    assert sorted(drain_ids(broker, 15)) == sorted(ids)  # each exactly once


def test_failed_entries_are_reported_by_job_id(lrt_broker_target: BrokerTarget) -> None:
    broker = sqs(lrt_broker_target)
    # One entry SQS refuses for good (sender fault), one that keeps failing on its side.
    fail_entries(broker, lambda gid, n: gid in {"f-4", "f-9"}, sender_fault=False)
    broker.sqs.publish_attempts = 3
    ids = [f"f-{i}" for i in range(12)]
    with pytest.raises(PublishError) as err:
        broker.publish([job(i) for i in ids])
    assert set(err.value.failed) == {"f-4", "f-9"}
    assert err.value.published == 10
    assert "after 3 attempts" in err.value.failed["f-4"]
    assert sorted(drain_ids(broker, 10)) == sorted(set(ids) - {"f-4", "f-9"})


def test_sender_fault_is_not_retried(lrt_broker_target: BrokerTarget) -> None:
    broker = sqs(lrt_broker_target)
    seen: list[int] = []

    def fail(gid: str, n: int) -> bool:
        if gid == "s-2":
            seen.append(n)
            return True
        return False

    fail_entries(broker, fail, sender_fault=True)
    with pytest.raises(PublishError) as err:
        broker.publish([job(f"s-{i}") for i in range(4)])
    assert list(err.value.failed) == ["s-2"]
    assert "InvalidParameterValue" in err.value.failed["s-2"]
    assert seen == [1]
    assert len(drain_ids(broker, 3)) == 3
