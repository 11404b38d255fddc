"""``lrtkit doctor`` checks for RabbitMQ: connection, queues, management API, consumer_timeout.

RabbitMQ's ``consumer_timeout`` (30 minutes by default) closes the channel of any consumer
that holds a message longer, which requeues a long job in the middle of its run. Before
3.12 only the server-wide setting applies (per-queue ``x-consumer-timeout`` is accepted but
ignored); it cannot be read over AMQP or the management API, so the check says how to
check it. From 3.12 the queue argument that ``lrtkit setup`` declares is read and compared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lrtkit.broker import Check
from lrtkit.errors import LrtError
from lrtkit_rabbitmq.admin import server_version_tuple
from lrtkit_rabbitmq.topology import CONSUMER_TIMEOUT_ARG_SINCE

if TYPE_CHECKING:
    from lrtkit_rabbitmq.broker import RabbitMQBroker

DEFAULT_SERVER_TIMEOUT_MS = 30 * 60 * 1000
CHECK_CMD = "rabbitmqctl eval 'application:get_env(rabbit, consumer_timeout).'"


def _human(ms: float) -> str:
    seconds = ms / 1000
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def diagnose(broker: RabbitMQBroker) -> list[Check]:
    checks: list[Check] = []
    topo = broker.topology
    try:
        with broker._admin("doctor") as adm:
            version = adm.server_version
            checks.append(Check("rabbitmq connection", "ok", f"{broker.where}, RabbitMQ {version}"))
            main = adm.passive(topo.queue)
            dlq = adm.passive(topo.dlq)
            dlx = adm.exchange_exists(topo.dlx)
    except LrtError as exc:
        return [Check("rabbitmq connection", "fail", str(exc), "check LRT_RABBITMQ_URL")]
    if main is None:
        checks.append(Check(f"queue {topo.queue}", "fail", "does not exist", "run `lrtkit setup`"))
    else:
        checks.append(Check(f"queue {topo.queue}", "ok", f"{main[0]} ready, {main[1]} consumers"))
    if dlq is None or not dlx:
        missing = [
            n
            for n, ok in ((f"queue {topo.dlq}", dlq is not None), (f"exchange {topo.dlx}", dlx))
            if not ok
        ]
        checks.append(
            Check(
                "dead letters",
                "fail",
                f"missing {', '.join(missing)}",
                "run `lrtkit setup` (or set LRT_RABBITMQ_DLX / LRT_RABBITMQ_DLQ)",
            )
        )
    else:
        checks.append(Check("dead letters", "ok", f"{topo.dlx} -> {topo.dlq}: {dlq[0]} dead"))

    queue_timeout: object = None
    if broker.management is None:
        checks.append(
            Check(
                "rabbitmq management API",
                "warn",
                "LRT_RABBITMQ_MANAGEMENT_URL is not set: unacknowledged jobs cannot be counted, "
                "so in-flight is the queue's consumer count, which includes workers waiting for "
                "a job (the autoscaler then keeps idle workers)",
                "enable the rabbitmq_management plugin and set LRT_RABBITMQ_MANAGEMENT_URL="
                "https://user:pass@host:15672",
            )
        )
    else:
        try:
            info = broker.management.queue(topo.queue)
        except LrtError as exc:
            checks.append(
                Check(
                    "rabbitmq management API", "fail", str(exc), "check LRT_RABBITMQ_MANAGEMENT_URL"
                )
            )
        else:
            if info is None:
                checks.append(
                    Check(
                        "rabbitmq management API", "warn", f"answers, but has no queue {topo.queue}"
                    )
                )
            else:
                checks.append(
                    Check(
                        "rabbitmq management API",
                        "ok",
                        f"{info.ready} ready, {info.unacked} unacked",
                    )
                )
                wanted = topo.queue_arguments(version)
                diff = [
                    f"{k}={info.arguments.get(k)!r} (want {v!r})"
                    for k, v in wanted.items()
                    if info.arguments.get(k) != v
                ]
                if diff:
                    checks.append(
                        Check(
                            f"queue {topo.queue} arguments",
                            "warn",
                            "; ".join(diff),
                            "re-create the queue with `lrtkit setup`",
                        )
                    )
                queue_timeout = info.policy.get(
                    "consumer-timeout", info.arguments.get("x-consumer-timeout")
                )
    checks.append(_consumer_timeout_check(broker, version, queue_timeout))
    return checks


def _consumer_timeout_check(broker: RabbitMQBroker, version: str, queue_timeout: object) -> Check:
    expected_ms = broker.topology.consumer_timeout_ms
    name = "rabbitmq consumer_timeout"
    fix = (
        f"set `consumer_timeout = {max(expected_ms, 3_600_000)}` (ms) in rabbitmq.conf and "
        f"restart, or run `rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, "
        f"{max(expected_ms, 3_600_000)}).'`; check the value with `{CHECK_CMD}`"
    )
    if broker.session.consumer_timeouts:
        return Check(
            name,
            "fail",
            f"this process saw {broker.session.consumer_timeouts} job(s) requeued by "
            "the server's consumer_timeout",
            fix,
        )
    if expected_ms <= 0:
        return Check(name, "ok", "LRT_RABBITMQ_CONSUMER_TIMEOUT=0: no limit declared")
    if server_version_tuple(version) >= CONSUMER_TIMEOUT_ARG_SINCE and isinstance(
        queue_timeout, int
    ):
        if queue_timeout < expected_ms:
            return Check(
                name,
                "warn",
                f"the queue's consumer timeout is {_human(queue_timeout)}, shorter than "
                f"LRT_RABBITMQ_CONSUMER_TIMEOUT ({_human(expected_ms)})",
                "re-create the queue with `lrtkit setup` or raise the policy's consumer-timeout",
            )
        return Check(name, "ok", f"queue consumer timeout {_human(queue_timeout)}")
    return Check(
        name,
        "warn",
        f"RabbitMQ {version} applies the server-wide consumer_timeout (default "
        f"{_human(DEFAULT_SERVER_TIMEOUT_MS)}) to every job, and it cannot be read remotely; "
        f"lrtkit expects jobs of up to {_human(expected_ms)} (LRT_RABBITMQ_CONSUMER_TIMEOUT). "
        "A job held longer than the server's limit is requeued mid-run",
        fix,
    )
