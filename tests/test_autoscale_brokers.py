"""The autoscaler reads its depth from the real broker LRT_BROKER names: local and RabbitMQ."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lrtkit.autoscale.autoscaler import Autoscaler
from lrtkit.broker import Broker, Message
from lrtkit.config import load_settings
from lrtkit.errors import ScalerConfigError
from lrtkit.plugins import BROKERS, installed, load_broker
from lrtkit.testing import service_unavailable, unique_name
from lrtkit.testing.fake_salad import FakeSaladAPI

GROUP = "workers"


@pytest.fixture
def api() -> Iterator[FakeSaladAPI]:
    with FakeSaladAPI() as fake:
        fake.add_group(GROUP, replicas=0, status="stopped")
        yield fake


def jobs(count: int) -> list[Message]:
    return [
        Message(f"job-{i}", json.dumps({"job_id": f"job-{i}", "steps": 3}).encode())
        for i in range(count)
    ]


def scale_once(env: dict[str, str]) -> dict[str, object]:
    with Autoscaler.from_settings(load_settings(environ=env)) as auto:
        return auto.run_once().to_dict()


def test_depth_from_the_local_broker(api: FakeSaladAPI, tmp_path: Path) -> None:
    env = {
        "LRT_BROKER": "local",
        "LRT_LOCAL_DB": str(tmp_path / "queue.sqlite3"),
        "LRT_QUEUE": unique_name(),
        "LRT_STORAGE": f"file://{tmp_path / 'store'}",
        "LRT_AUTOSCALE_COOLDOWN": "0",
        **api.environ(GROUP),
    }
    broker = load_broker(load_settings(environ=env))
    try:
        broker.publish(jobs(3))
        held = broker.receive(0)
        assert held is not None
        decision = scale_once(env)
        assert (decision["waiting"], decision["in_flight"]) == (2, 1)
        assert (decision["desired"], decision["action"]) == (3, "start")
        assert api.group(GROUP).replicas == 3
        # the work is done: the fleet goes back to zero (cool-down 0)
        broker.ack(held)
        while (d := broker.receive(0)) is not None:
            broker.ack(d)
        decision = scale_once(env)
        assert (decision["waiting"], decision["in_flight"], decision["action"]) == (0, 0, "stop")
        assert api.group(GROUP).status == "stopped"
    finally:
        broker.close()


@pytest.fixture
def rabbitmq_url() -> str:
    url = os.environ.get("LRT_TEST_RABBITMQ_URL")
    if not url:
        service_unavailable("RabbitMQ (set LRT_TEST_RABBITMQ_URL)")
    if "rabbitmq" not in installed(BROKERS):
        service_unavailable("the lrtkit-rabbitmq plugin")
    return url


@pytest.fixture(scope="session")
def rabbitmq_management_url() -> Iterator[str]:
    """The management API (the autoscaler reads in-flight jobs from it on RabbitMQ)."""
    given = os.environ.get("LRT_TEST_RABBITMQ_MANAGEMENT_URL")
    if given:
        yield given
        return
    url = os.environ.get("LRT_TEST_RABBITMQ_URL", "")
    parts = urlsplit(url)
    if "rabbitmq" not in installed(BROKERS) or parts.hostname not in {"127.0.0.1", "localhost"}:
        service_unavailable("the RabbitMQ management API (set LRT_TEST_RABBITMQ_MANAGEMENT_URL)")
    from lrtkit_rabbitmq.testing import management_plugin

    with management_plugin(parts.username or "guest", parts.password or "guest") as management:
        yield management


def _delete_rabbitmq_queue(url: str, queue: str) -> None:
    import pika
    from lrtkit_rabbitmq.settings import RabbitMQSettings

    names = RabbitMQSettings()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for name in (queue, names.dlq_name(queue)):
            channel.queue_delete(name)
        channel.exchange_delete(names.dlx_name(queue))
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def test_rabbitmq_without_management_api_is_refused_clearly(
    api: FakeSaladAPI, rabbitmq_url: str, tmp_path: Path
) -> None:
    # Over AMQP alone RabbitMQ counts consumers, idle pollers included: a fleet sized from
    # that could never scale in, so the autoscaler says what to set instead.
    env = {
        "LRT_BROKER": "rabbitmq",
        "LRT_RABBITMQ_URL": rabbitmq_url,
        "LRT_QUEUE": unique_name(),
        "LRT_STORAGE": f"file://{tmp_path / 'store'}",
        **api.environ(GROUP),
    }
    with pytest.raises(ScalerConfigError, match="LRT_RABBITMQ_MANAGEMENT_URL"):
        scale_once(env)
    assert api.calls_to("PATCH") == []  # nothing was changed
    assert api.calls_to("POST") == []


def test_depth_from_rabbitmq(
    api: FakeSaladAPI, rabbitmq_url: str, rabbitmq_management_url: str, tmp_path: Path
) -> None:
    queue = unique_name()
    env = {
        "LRT_BROKER": "rabbitmq",
        "LRT_RABBITMQ_URL": rabbitmq_url,
        "LRT_RABBITMQ_MANAGEMENT_URL": rabbitmq_management_url,
        "LRT_QUEUE": queue,
        "LRT_STORAGE": f"file://{tmp_path / 'store'}",
        **api.environ(GROUP),
    }
    broker: Broker | None = None
    try:
        broker = load_broker(load_settings(environ=env))
        broker.ensure()
        broker.publish(jobs(5))
        held = broker.receive(5)
        assert held is not None
        # The management API refreshes its counters every few seconds (5 s by default).
        deadline = time.monotonic() + 30
        while broker.depth()[:2] != (4, 1) and time.monotonic() < deadline:
            time.sleep(0.5)
        decision = scale_once(env)
        assert decision["waiting"] == 4
        assert decision["in_flight"] == 1
        assert (decision["desired"], decision["action"]) == (5, "start")
        assert (api.group(GROUP).status, api.group(GROUP).replicas) == ("running", 5)
        broker.release(held)
    finally:
        if broker is not None:
            broker.close()
        _delete_rabbitmq_queue(rabbitmq_url, queue)


def test_lambda_handler_on_sqs_with_the_guides_names(
    api: FakeSaladAPI,
    lrt_moto_url: str,
    lrt_aws_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SaladCloud SQS guide's Lambda environment, unchanged, on a real SQS API (moto)."""
    queue = unique_name()
    setup_env = {
        **lrt_aws_env,
        "LRT_BROKER": "sqs",
        "LRT_QUEUE": queue,
        "LRT_SQS_ENDPOINT_URL": lrt_moto_url,
        "LRT_SQS_REGION": "us-east-1",
        "LRT_SQS_ACCESS_KEY_ID": "testing",
        "LRT_SQS_SECRET_ACCESS_KEY": "testing",
    }
    broker = load_broker(load_settings(environ=setup_env))
    try:
        broker.ensure()
        broker.publish(jobs(3))
        queue_url = broker.queues.url  # type: ignore[attr-defined]
        for key in list(os.environ):
            if key.startswith(("LRT_", "SALAD_")):
                monkeypatch.delenv(key)
        for key, value in {
            **lrt_aws_env,
            "LRT_SQS_ENDPOINT_URL": lrt_moto_url,
            "LRT_SALAD_API_URL": api.url,
            "LRT_STORAGE": f"file://{tmp_path / 'store'}",
            # the guide's own names
            "queue_url": queue_url,
            "max_replicas": "250",
            "min_replicas": "0",
            "salad_org": api.organization,
            "salad_project": api.project,
            "salad_container_group_name": GROUP,
            "salad_api_key": api.api_key,
        }.items():
            monkeypatch.setenv(key, value)
        from lrtkit.autoscale.aws_lambda import handler

        result = handler({}, None)
        assert (result["waiting"], result["in_flight"]) == (3, 0)
        assert (result["desired"], result["action"]) == (3, "start")
        assert (api.group(GROUP).status, api.group(GROUP).replicas) == ("running", 3)
    finally:
        broker.close()
        _delete_sqs_queues(lrt_moto_url, queue)


def _delete_sqs_queues(endpoint: str, queue: str) -> None:
    import boto3

    client = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    try:
        for url in client.list_queues(QueueNamePrefix=queue).get("QueueUrls", []):
            client.delete_queue(QueueUrl=url)
    finally:
        client.close()
