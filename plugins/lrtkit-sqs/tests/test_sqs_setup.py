"""``lrtkit setup`` on SQS: the guide's queue settings, idempotence, mismatch reports, aliases."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from lrtkit_sqs.broker import SqsBroker
from lrtkit_sqs.setup import dlq_name, fifo_name

from lrtkit.config import load_settings
from lrtkit.errors import BrokerConfigError
from lrtkit.plugins import load_broker
from lrtkit.testing.broker_contract import job
from lrtkit.testing.target import unique_name


def attrs(client: Any, name: str) -> dict[str, str]:
    url = client.get_queue_url(QueueName=name)["QueueUrl"]
    return dict(client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"])


def sqs_broker(env: dict[str, str]) -> SqsBroker:
    broker = load_broker(load_settings(environ=env))
    assert isinstance(broker, SqsBroker)
    return broker


def test_setup_creates_both_queues_with_the_guide_settings(
    sqs_env: dict[str, str], sqs_client: Any, queue_cleanup: Callable[[str], None]
) -> None:
    queue = sqs_env["LRT_QUEUE"]
    queue_cleanup(fifo_name(queue))
    queue_cleanup(dlq_name(queue))
    with sqs_broker(sqs_env) as broker:
        report = broker.ensure()
        assert report.created == [dlq_name(queue), fifo_name(queue)]
        assert report.mismatches == []

        main, dlq = attrs(sqs_client, fifo_name(queue)), attrs(sqs_client, dlq_name(queue))
        for a in (main, dlq):
            assert a["FifoQueue"] == "true"
            assert a["ContentBasedDeduplication"] == "false"
            assert a["VisibilityTimeout"] == "60"  # LRT_LEASE_SECONDS default
            assert a["MessageRetentionPeriod"] == str(14 * 24 * 3600)
            assert a["ReceiveMessageWaitTimeSeconds"] == "20"
            assert a["MaximumMessageSize"] == "262144"
        policy = json.loads(main["RedrivePolicy"])
        assert policy["deadLetterTargetArn"] == dlq["QueueArn"]
        assert int(policy["maxReceiveCount"]) == 10  # LRT_MAX_DELIVERIES default
        # (The dead-letter queue's RedriveAllowPolicy is set too; moto does not keep it.)

        again = broker.ensure()
        assert again.created == []
        assert sorted(again.existing) == sorted([fifo_name(queue), dlq_name(queue)])
        assert again.mismatches == []


def test_setup_reports_what_differs_and_changes_nothing(
    sqs_env: dict[str, str], sqs_client: Any, queue_cleanup: Callable[[str], None]
) -> None:
    queue = sqs_env["LRT_QUEUE"]
    queue_cleanup(fifo_name(queue))
    queue_cleanup(dlq_name(queue))
    # A queue made by hand as in the guide's first step: no dead-letter queue yet.
    sqs_client.create_queue(
        QueueName=fifo_name(queue),
        Attributes={"FifoQueue": "true", "VisibilityTimeout": "30"},
    )
    with sqs_broker({**sqs_env, "LRT_MAX_DELIVERIES": "3"}) as broker:
        report = broker.ensure()
    assert report.created == [dlq_name(queue)]
    assert fifo_name(queue) in report.existing
    text = "\n".join(report.mismatches)
    assert "VisibilityTimeout is 30, lrtkit recommends 60" in text
    assert "MessageRetentionPeriod" in text
    assert "no RedrivePolicy" in text
    assert 'maxReceiveCount": 3' in text
    # Existing queues are reported on, never silently rewritten.
    assert attrs(sqs_client, fifo_name(queue))["VisibilityTimeout"] == "30"
    assert "RedrivePolicy" not in attrs(sqs_client, fifo_name(queue))


def test_guide_variables_select_existing_queues(
    lrt_moto_url: str,
    lrt_aws_env: dict[str, str],
    sqs_client: Any,
    queue_cleanup: Callable[[str], None],
) -> None:
    """A user of the SaladCloud guide sets SQS_QUEUE_URL, SQS_DLQ_URL, SQS_AWS_* only."""
    base = unique_name("guide")
    main_name, dlq = f"{base}.fifo", f"{base}-dlq.fifo"
    queue_cleanup(main_name)
    queue_cleanup(dlq)
    dlq_url = sqs_client.create_queue(QueueName=dlq, Attributes={"FifoQueue": "true"})["QueueUrl"]
    main_url = sqs_client.create_queue(QueueName=main_name, Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    env = {
        **lrt_aws_env,
        "LRT_BROKER": "sqs",
        "LRT_SQS_ENDPOINT_URL": lrt_moto_url,
        "SQS_QUEUE_URL": main_url,
        "SQS_DLQ_URL": dlq_url,
        "SQS_AWS_REGION": "us-east-1",
        "SQS_AWS_ACCESS_KEY_ID": "testing",
        "SQS_AWS_SECRET_ACCESS_KEY": "guide-secret-value",
    }
    broker = sqs_broker(env)
    with broker:
        assert broker.sqs.secret_access_key is not None
        assert "guide-secret-value" not in repr(broker.sqs)  # secrets are never printed
        broker.publish([job("guide-1", steps=3)])
        delivery = broker.receive(5)
        assert delivery is not None
        assert json.loads(delivery.body) == {"job_id": "guide-1", "steps": 3}
        broker.dead_letter(delivery, "testing the guide's DLQ")
        got = sqs_client.receive_message(
            QueueUrl=dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=1
        )["Messages"]
        assert json.loads(got[0]["Body"])["job_id"] == "guide-1"
        assert got[0]["MessageAttributes"]["lrt-reason"]["StringValue"] == "testing the guide's DLQ"


def test_wrong_region_names_queue_and_region(
    sqs_env: dict[str, str], lrt_broker_target: Any
) -> None:
    env = {**lrt_broker_target.env, "LRT_SQS_REGION": "eu-west-3"}
    with sqs_broker(env) as broker, pytest.raises(BrokerConfigError) as err:
        broker.publish([job("x")])
    text = str(err.value)
    assert fifo_name(env["LRT_QUEUE"]) in text
    assert "eu-west-3" in text
    assert "lrtkit setup" in text


def test_credentials_half_set_is_a_config_error(sqs_env: dict[str, str]) -> None:
    env = {k: v for k, v in sqs_env.items() if k != "LRT_SQS_SECRET_ACCESS_KEY"}
    with sqs_broker(env) as broker, pytest.raises(BrokerConfigError, match="LRT_SQS_SECRET"):
        broker.depth()


def test_region_and_queue_url_disagree(sqs_env: dict[str, str]) -> None:
    env = {
        **sqs_env,
        "LRT_SQS_QUEUE_URL": "https://sqs.us-east-2.amazonaws.com/123456789012/jobs.fifo",
        "LRT_SQS_REGION": "us-west-1",
    }
    with sqs_broker(env) as broker, pytest.raises(BrokerConfigError, match="us-east-2"):
        broker.depth()


def test_bad_queue_name_names_the_variable(sqs_env: dict[str, str]) -> None:
    broker = sqs_broker({**sqs_env, "LRT_QUEUE": "no spaces allowed"})
    with broker, pytest.raises(BrokerConfigError, match="LRT_QUEUE"):
        broker.ensure()
