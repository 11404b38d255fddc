"""Fixtures for the RabbitMQ plugin's tests: a real RabbitMQ and a fresh queue per test.

The server is found from ``LRT_TEST_RABBITMQ_URL`` (and ``LRT_TEST_RABBITMQ_MANAGEMENT_URL``
for the management API), else started with testcontainers when a Docker engine answers,
else the tests are skipped (or fail under ``LRT_REQUIRE_BROKERS=1``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from lrtkit_rabbitmq.testing import RabbitServer, delete_queue_set, management_plugin

from lrtkit.testing import BrokerTarget, service_unavailable, unique_name
from lrtkit.testing.services import docker_available


@pytest.fixture(scope="session")
def rabbit_server() -> Iterator[RabbitServer]:
    url = os.environ.get("LRT_TEST_RABBITMQ_URL")
    if url:
        # rabbitmqctl acts on the local node: only for a server on this machine's AMQP port.
        parts = urlsplit(url)
        local = parts.hostname in {"localhost", "127.0.0.1", "::1"} and parts.port in {None, 5672}
        management = os.environ.get("LRT_TEST_RABBITMQ_MANAGEMENT_URL") or None
        local_ctl = local and shutil.which("rabbitmqctl") is not None
        if management or not (local_ctl and shutil.which("rabbitmq-plugins")):
            yield RabbitServer(url, management, local_ctl=local_ctl)
            return
        # A local server without a management URL: enable the management plugin for this
        # session (so its tests run rather than skip) and put the server back as it was.
        with management_plugin(parts.username or "guest", parts.password or "guest") as mgmt:
            yield RabbitServer(url, mgmt, local_ctl=local_ctl)
        return
    if not docker_available():
        service_unavailable("RabbitMQ (set LRT_TEST_RABBITMQ_URL or start Docker)")
    try:
        from testcontainers.community.rabbitmq import RabbitMqContainer  # type: ignore[import-not-found]
    except ImportError:
        from testcontainers.rabbitmq import RabbitMqContainer
    container = RabbitMqContainer("rabbitmq:3.13-management").with_exposed_ports(15672)
    with container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)
        management = f"http://guest:guest@{host}:{container.get_exposed_port(15672)}"
        yield RabbitServer(f"amqp://guest:guest@{host}:{port}/%2F", management)


@pytest.fixture
def rabbit_env(rabbit_server: RabbitServer) -> Iterator[dict[str, str]]:
    """Variables selecting a fresh RabbitMQ queue (deleted afterwards)."""
    queue = unique_name("lrt-rmq")
    env = {
        "LRT_BROKER": "rabbitmq",
        "LRT_QUEUE": queue,
        "LRT_RABBITMQ_URL": rabbit_server.url,
        "LRT_RABBITMQ_CONNECTION_NAME": queue,
    }
    if rabbit_server.management_url:
        env["LRT_RABBITMQ_MANAGEMENT_URL"] = rabbit_server.management_url
    yield env
    delete_queue_set(rabbit_server.url, queue)


@pytest.fixture
def lrt_broker_target(rabbit_env: dict[str, str]) -> Iterator[BrokerTarget]:
    """A fresh queue, set up like ``lrtkit setup`` does (as a deployed queue would be)."""
    target = BrokerTarget(env=dict(rabbit_env))
    setup = target.broker()
    report = setup.ensure()
    assert not report.mismatches, report.mismatches
    setup.close()
    yield target
    target.close()
