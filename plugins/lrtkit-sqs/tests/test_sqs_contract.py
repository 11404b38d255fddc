"""The broker contract suite, run on SQS (moto over real HTTP)."""

from __future__ import annotations

from lrtkit.testing.broker_contract import BrokerContract


class TestSqsContract(BrokerContract):
    lease_seconds = 2.0
    release_delay = 2.0
    concurrent_jobs = 20
