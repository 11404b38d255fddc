"""lrtkit's test kit: the broker, storage and worker contract suites, and service fixtures.

A broker plugin tests itself by providing one fixture, ``lrt_broker_target``, that yields a
:class:`~lrtkit.testing.target.BrokerTarget` for a fresh, uniquely named queue on a real
broker, and subclassing the suites::

    from lrtkit.testing.broker_contract import BrokerContract
    from lrtkit.testing.worker_contract import WorkerContract

    class TestMyBroker(BrokerContract): ...
    class TestMyBrokerWorker(WorkerContract): ...

A storage plugin provides ``lrt_storage_target`` and subclasses
:class:`~lrtkit.testing.storage_contract.StorageContract` the same way. The pytest plugin
(:mod:`lrtkit.testing.pytest_plugin`, loaded automatically when lrtkit is installed) adds the
shared fixtures: a moto server for SQS and S3, and the ``LRT_REQUIRE_BROKERS`` rule.
"""

from lrtkit.testing.services import service_unavailable
from lrtkit.testing.target import BrokerTarget, StorageTarget, unique_name

__all__ = ["BrokerTarget", "StorageTarget", "service_unavailable", "unique_name"]
