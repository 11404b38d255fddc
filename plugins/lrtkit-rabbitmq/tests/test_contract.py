"""The broker contract suite, on a real RabbitMQ."""

from __future__ import annotations

from lrtkit.testing.broker_contract import BrokerContract


class TestRabbitContract(BrokerContract):
    lease_seconds = 2.0
    release_delay = 1.0
