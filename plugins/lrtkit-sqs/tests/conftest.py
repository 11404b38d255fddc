"""Fixtures for the SQS plugin's tests: fresh FIFO queues on a moto server over real HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from lrtkit_sqs.setup import dlq_name, fifo_name

from lrtkit.testing.target import BrokerTarget, unique_name

REGION = "us-east-1"


@pytest.fixture
def sqs_env(lrt_moto_url: str, lrt_aws_env: dict[str, str]) -> dict[str, str]:
    """Variables that select the SQS broker on a fresh queue name of the moto server."""
    return {
        **lrt_aws_env,
        "LRT_BROKER": "sqs",
        "LRT_QUEUE": unique_name(),
        "LRT_SQS_ENDPOINT_URL": lrt_moto_url,
        "LRT_SQS_REGION": REGION,
        "LRT_SQS_ACCESS_KEY_ID": "testing",
        "LRT_SQS_SECRET_ACCESS_KEY": "testing",
    }


@pytest.fixture
def sqs_client(lrt_moto_url: str) -> Any:
    """A plain boto3 client on the moto server (what the guide's scripts use)."""
    client = boto3.client(
        "sqs",
        endpoint_url=lrt_moto_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    yield client
    client.close()


def delete_queues(client: Any, *names: str) -> None:
    for name in names:
        with contextlib.suppress(Exception):  # already gone, or never made
            url = client.get_queue_url(QueueName=name)["QueueUrl"]
            client.delete_queue(QueueUrl=url)


@pytest.fixture
def queue_cleanup(sqs_client: Any) -> Iterator[Callable[[str], None]]:
    """Register extra queue names a test creates; they are deleted after it, even on failure."""
    names: list[str] = []
    yield names.append
    delete_queues(sqs_client, *names)


@pytest.fixture
def lrt_broker_target(sqs_env: dict[str, str], sqs_client: Any) -> Iterator[BrokerTarget]:
    """A fresh FIFO queue and dead-letter queue, set up by ``ensure()``, deleted after."""
    queue = sqs_env["LRT_QUEUE"]
    target = BrokerTarget(
        env=dict(sqs_env),
        cleanup=lambda: delete_queues(sqs_client, fifo_name(queue), dlq_name(queue)),
    )
    try:
        target.broker().ensure()
        yield target
    finally:
        target.close()
