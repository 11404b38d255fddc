"""RabbitMQ broker plugin for lrtkit (``LRT_BROKER=rabbitmq``)."""

from lrtkit_rabbitmq.broker import RabbitMQBroker
from lrtkit_rabbitmq.settings import RabbitMQSettings

__all__ = ["RabbitMQBroker", "RabbitMQSettings"]

import logging as _logging

# pika logs every passive-declare miss and reconnect attempt; lrtkit logs what matters
# itself (logger "lrtkit.rabbitmq"). Configure the "pika" logger to see pika's own lines.
_pika_log = _logging.getLogger("pika")
if _pika_log.level == _logging.NOTSET:
    _pika_log.setLevel(_logging.CRITICAL)
