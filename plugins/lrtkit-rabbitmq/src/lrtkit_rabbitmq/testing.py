"""Test helpers for a real RabbitMQ: cleaning up a queue set and acting on the server.

Used by this plugin's tests and by anyone testing lrtkit on RabbitMQ. The ``rabbitmqctl``
helpers only work where the server is local; they act on named connections only, never on
everyone's, and callers restore any setting they change.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pytest

from lrtkit.testing import service_unavailable
from lrtkit.testing.services import wait_http


@dataclass(frozen=True)
class RabbitServer:
    """Where the test server is: its AMQP URL and, if enabled, its management API."""

    url: str
    management_url: str | None
    #: ``rabbitmqctl`` on this machine controls this server (False for a container).
    local_ctl: bool = False


def delete_queue_set(url: str, queue: str) -> None:
    """Delete the queue, its dead-letter queue and its dead-letter exchange."""
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(url))) as conn:
        for name in (queue, f"{queue}.dlq"):
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(name)
        with contextlib.suppress(Exception):
            conn.channel().exchange_delete(f"{queue}.dlx")


def consumer_count(url: str, queue: str) -> int:
    """The queue's consumers, from a passive declare (no management API needed)."""
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(url))) as conn:
        return int(conn.channel().queue_declare(queue, passive=True).method.consumer_count)


def need_rabbitmqctl(server: RabbitServer) -> None:
    """Skip unless ``rabbitmqctl`` here controls ``server``."""
    if not server.local_ctl or shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl on the machine that runs the RabbitMQ server under test")


def ctl(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


def connection_pids(name: str) -> list[str]:
    """Erlang pids of the connections whose client-provided name contains ``name``."""
    out = ctl("list_connections", "pid", "client_properties", "-q", "--no-table-headers")
    return [line.split("\t", 1)[0] for line in out.splitlines() if name in line]


def close_connections(name: str, reason: str = "closed by test") -> int:
    """Close only the connections named ``name`` (never anyone else's); how many closed."""
    pids = connection_pids(name)
    for pid in pids:
        ctl("close_connection", pid, reason)
    return len(pids)


def get_consumer_timeout() -> str:
    """The raw ``application:get_env`` answer: ``{ok,1800000}`` or ``undefined``."""
    return ctl("eval", "application:get_env(rabbit, consumer_timeout).").strip()


def set_consumer_timeout(ms: int) -> None:
    ctl("eval", f"application:set_env(rabbit, consumer_timeout, {int(ms)}).")


def restore_consumer_timeout(original: str) -> None:
    if original == "undefined":
        ctl("eval", "application:unset_env(rabbit, consumer_timeout).")
        return
    value = original.removeprefix("{ok,").removesuffix("}")
    ctl("eval", f"application:set_env(rabbit, consumer_timeout, {value}).")


@contextlib.contextmanager
def management_plugin(user: str, password: str) -> Iterator[str]:
    """The management API of the local server for a while; yields its URL with credentials.

    Enables the ``rabbitmq_management`` plugin if it is off, and disables it again afterwards,
    so the server is left as it was found.
    """
    listed = subprocess.run(
        ["rabbitmq-plugins", "list", "-e", "-m"], capture_output=True, text=True, check=False
    )
    was_enabled = "rabbitmq_management" in listed.stdout.split()
    url = f"http://{user}:{password}@127.0.0.1:15672"
    try:
        if not was_enabled:
            subprocess.run(
                ["rabbitmq-plugins", "enable", "rabbitmq_management"],
                capture_output=True,
                check=True,
            )
        try:
            wait_http("http://127.0.0.1:15672/api/overview", timeout=60)
        except TimeoutError:
            service_unavailable("the RabbitMQ management API on 127.0.0.1:15672")
        yield url
    finally:
        if not was_enabled:
            subprocess.run(
                ["rabbitmq-plugins", "disable", "rabbitmq_management"],
                capture_output=True,
                check=False,
            )
