"""Dead letters on SQS: lrtkit's reasons, SQS's own delivery limit, listing without consuming."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from lrtkit_sqs.setup import dlq_name, fifo_name

from lrtkit.config import load_settings
from lrtkit.plugins import load_broker
from lrtkit.testing.broker_contract import depth_becomes, job
from lrtkit.testing.target import BrokerTarget


def test_jobs_moved_by_the_redrive_policy_show_delivery_limit(
    sqs_env: dict[str, str], queue_cleanup: Callable[[str], None]
) -> None:
    queue = sqs_env["LRT_QUEUE"]
    queue_cleanup(fifo_name(queue))
    queue_cleanup(dlq_name(queue))
    env = {**sqs_env, "LRT_MAX_DELIVERIES": "2"}
    with load_broker(load_settings(environ=env).with_overrides(lease_seconds=30)) as broker:
        broker.ensure()
        broker.publish([job("crashy-1", steps=5)])
        for expected in (1, 2):  # a job that kills its worker every time
            delivery = broker.receive(5)
            assert delivery is not None
            assert delivery.delivery_count == expected
            broker.release(delivery)
        assert broker.receive(1) is None  # SQS moved it on the third receive
        depth_becomes(broker, (0, 0, 1))
        (letter,) = broker.dead_letters()
        assert letter.reason == "delivery_limit"
        assert letter.job_id == "crashy-1"
        assert letter.deliveries == 2
        assert json.loads(letter.body) == {"job_id": "crashy-1", "steps": 5}
        assert broker.redrive(["crashy-1"]) == 1
        back = broker.receive(5)
        assert back is not None
        assert back.delivery_count == 1
        broker.ack(back)
        depth_becomes(broker, (0, 0, 0))


def test_listing_consumes_nothing_and_keeps_repeats(
    lrt_broker_target: BrokerTarget, sqs_client: Any
) -> None:
    broker = lrt_broker_target.broker(lease_seconds=30)
    broker.publish([job("twice-1"), job("once-1")])
    for _ in range(2):
        delivery = broker.receive(5)
        assert delivery is not None
        broker.dead_letter(delivery, f"first failure of {json.loads(delivery.body)['job_id']}")
    # The same job sent again by another producer (its own deduplication id) and failing
    # again: two dead letters in one message group, both listed.
    main_url = sqs_client.get_queue_url(QueueName=fifo_name(lrt_broker_target.env["LRT_QUEUE"]))
    sqs_client.send_message(
        QueueUrl=main_url["QueueUrl"],
        MessageBody=job("twice-1").body.decode(),
        MessageGroupId="twice-1",
        MessageDeduplicationId="twice-1-resent",
    )
    again = broker.receive(5)
    assert again is not None
    broker.dead_letter(again, "second failure")
    for _ in range(3):  # listing again and again shows the same: nothing consumed
        letters = broker.dead_letters()
        assert sorted((d.job_id, d.reason) for d in letters) == [
            ("once-1", "first failure of once-1"),
            ("twice-1", "first failure of twice-1"),
            ("twice-1", "second failure"),
        ]
    depth_becomes(broker, (0, 0, 3))
    # The dead-letter queue holds the body unchanged; the reason is an attribute.
    url = sqs_client.get_queue_url(QueueName=dlq_name(lrt_broker_target.env["LRT_QUEUE"]))
    got = sqs_client.receive_message(
        QueueUrl=url["QueueUrl"], MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    assert sorted(m["Body"] for m in got) == sorted(
        [job("twice-1").body.decode()] * 2 + [job("once-1").body.decode()]
    )
    assert all("lrt-reason" in m["MessageAttributes"] for m in got)
