"""Short-lived blocking connections for administrative work on the calling thread.

``lrtkit setup``, ``status``, ``dlq list`` and ``dlq redrive`` are occasional and sequential;
each opens its own ``BlockingConnection`` in the thread that calls it (so pika's one-thread
rule holds) and closes it afterwards. The worker's long-lived connection
(:mod:`lrtkit_rabbitmq.connection`) is never touched from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
from pika import exceptions as pex

from lrtkit.errors import BrokerError
from lrtkit_rabbitmq.errors import wrap


class Admin:
    """A blocking connection with helpers that reopen the channel after a channel error."""

    def __init__(self, connection: Any, where: str) -> None:
        self.connection = connection
        self.where = where
        self.channel: Any = connection.channel()

    @property
    def server_version(self) -> str:
        props = getattr(self.connection, "_impl", None)
        version = getattr(props, "server_properties", {}).get("version", b"")
        return version.decode() if isinstance(version, bytes) else str(version)

    def fresh_channel(self) -> Any:
        """A new channel (the previous one may have been closed by a channel error)."""
        if self.channel is None or not self.channel.is_open:
            self.channel = self.connection.channel()
        return self.channel

    def passive(self, queue: str) -> tuple[int, int] | None:
        """``(ready messages, consumers)`` of ``queue``, or None if it does not exist."""
        ch = self.fresh_channel()
        try:
            ok = ch.queue_declare(queue, passive=True)
        except pex.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                self.channel = None
                return None
            raise
        return int(ok.method.message_count), int(ok.method.consumer_count)

    def exchange_exists(self, exchange: str) -> bool:
        ch = self.fresh_channel()
        try:
            ch.exchange_declare(exchange, passive=True)
        except pex.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                self.channel = None
                return False
            raise
        return True


def server_version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@contextmanager
def admin(params: pika.URLParameters, where: str, doing: str) -> Iterator[Admin]:
    """A blocking connection for ``doing``; pika errors come out as lrtkit errors."""
    try:
        connection = pika.BlockingConnection(params)
    except Exception as exc:  # noqa: BLE001 - wrapped into our tree
        raise wrap(exc, where, doing) from None
    try:
        yield Admin(connection, where)
    except BrokerError:
        raise
    except (pex.AMQPError, OSError) as exc:
        raise wrap(exc, where, doing) from None
    finally:
        if connection.is_open:
            with contextlib.suppress(Exception):  # closing anyway
                connection.close()
