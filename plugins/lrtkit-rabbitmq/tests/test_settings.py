"""Settings and connection parameters: aliases, TLS, vhosts, and credentials never shown."""

from __future__ import annotations

import pytest
from lrtkit_rabbitmq.broker import RabbitMQBroker
from lrtkit_rabbitmq.settings import (
    RabbitMQSettings,
    connection_parameters,
    masked_url,
    vhost_of,
)
from lrtkit_rabbitmq.topology import Topology

from lrtkit.config import load_settings
from lrtkit.errors import ConfigError
from lrtkit.plugins import load_broker

SECRET = "s3cr3t-pw"


def rabbit(**env: str) -> RabbitMQSettings:
    return load_settings(environ=env).plugin_settings(RabbitMQSettings)


def test_guide_variable_names_are_accepted() -> None:
    settings = load_settings(
        environ={"AMQP_URL": f"amqps://alice:{SECRET}@mq.example.com/prod", "JOB_QUEUE": "jobs"}
    )
    assert settings.queue == "jobs"
    plugin = settings.plugin_settings(RabbitMQSettings)
    assert plugin.url.get_secret_value().startswith("amqps://alice:")
    assert plugin.dlx_name(settings.queue) == "jobs.dlx"
    assert plugin.dlq_name(settings.queue) == "jobs.dlq"


def test_lrt_name_wins_and_secrets_stay_hidden() -> None:
    plugin = rabbit(
        LRT_RABBITMQ_URL=f"amqp://bob:{SECRET}@h:5673/v",
        AMQP_URL="amqp://other@x/",
        LRT_RABBITMQ_MANAGEMENT_URL=f"https://bob:{SECRET}@h:15671",
    )
    assert plugin.url.get_secret_value().startswith("amqp://bob:")
    assert SECRET not in repr(plugin)
    assert SECRET not in str(plugin.model_dump())


def test_masked_url_never_shows_the_password() -> None:
    assert masked_url(f"amqps://alice:{SECRET}@mq.example.com:5671/prod%2Fa") == (
        "amqps://alice:***@mq.example.com:5671/prod%2Fa"
    )
    assert masked_url("amqp://localhost/") == "amqp://localhost/"
    assert SECRET not in masked_url(f"amqp://:{SECRET}@h/")


def test_vhosts() -> None:
    assert vhost_of("amqp://h/") == "/"
    assert vhost_of("amqp://h") == "/"
    assert vhost_of("amqp://h/%2F") == "/"
    assert vhost_of("amqps://u:p@h/team%2Fa") == "team/a"
    params = connection_parameters(
        rabbit(LRT_RABBITMQ_URL="amqp://u:p@h/team"), heartbeat=10, role="worker"
    )
    assert params.virtual_host == "team"


def test_amqps_gets_tls_with_the_server_name() -> None:
    params = connection_parameters(
        rabbit(LRT_RABBITMQ_URL=f"amqps://alice:{SECRET}@mq.example.com/prod"),
        heartbeat=30,
        role="worker",
    )
    assert params.ssl_options is not None
    assert params.ssl_options.server_hostname == "mq.example.com"
    assert params.port == 5671
    assert params.heartbeat == 30


def test_heartbeat_from_url_or_setting_is_kept() -> None:
    from_url = connection_parameters(
        rabbit(LRT_RABBITMQ_URL="amqp://h/?heartbeat=45"), heartbeat=5, role="w"
    )
    assert from_url.heartbeat == 45
    from_setting = connection_parameters(
        rabbit(LRT_RABBITMQ_URL="amqp://h/", LRT_RABBITMQ_HEARTBEAT="7"), heartbeat=5, role="w"
    )
    assert from_setting.heartbeat == 7


def test_connection_name_is_findable() -> None:
    params = connection_parameters(
        rabbit(LRT_RABBITMQ_CONNECTION_NAME="node-17"), heartbeat=5, role="worker"
    )
    assert params.client_properties["connection_name"] == "node-17 (worker)"


@pytest.mark.parametrize("url", ["http://h/", "redis://h", "localhost:5672"])
def test_bad_url_is_a_config_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError, match="LRT_RABBITMQ_URL"):
        connection_parameters(rabbit(LRT_RABBITMQ_URL=url), heartbeat=5, role="w")
    with pytest.raises(ConfigError) as err:
        connection_parameters(
            rabbit(LRT_RABBITMQ_URL=f"http://u:{SECRET}@h/"), heartbeat=5, role="w"
        )
    assert SECRET not in str(err.value)


def test_broker_is_found_by_its_entry_point() -> None:
    settings = load_settings(environ={"LRT_BROKER": "rabbitmq", "LRT_QUEUE": "q1"})
    broker = load_broker(settings)
    try:
        assert isinstance(broker, RabbitMQBroker)
        assert broker.timed_lease is False
        assert broker.max_lease_seconds is None
    finally:
        broker.close()


def test_queue_arguments_follow_the_server_version() -> None:
    topo = Topology("q", "q.dlx", "q.dlq", max_deliveries=4, consumer_timeout_ms=7_200_000)
    new = topo.queue_arguments("3.10.8")
    assert new["x-queue-type"] == "quorum"
    assert new["x-delivery-limit"] == 4
    assert new["x-dead-letter-exchange"] == "q.dlx"
    assert new["x-dead-letter-strategy"] == "at-least-once"
    assert new["x-overflow"] == "reject-publish"
    assert new["x-consumer-timeout"] == 7_200_000
    old = topo.queue_arguments("3.9.29")
    assert "x-dead-letter-strategy" not in old
    assert "x-overflow" not in old
    none = Topology("q", "d", "dq", 3, 0).queue_arguments("3.13.0")
    assert "x-consumer-timeout" not in none
