"""``lrtkit setup`` on RabbitMQ: the quorum queue, its dead-letter exchange and queue.

Declaring an existing queue with different arguments makes RabbitMQ close the channel with
``406 PRECONDITION_FAILED - inequivalent arg ...``; that text names the first differing
argument, and is reported as a mismatch (the channel is reopened for the next step). With
the management API configured every argument is compared and all mismatches are listed,
including those RabbitMQ does not check on redeclare (``x-consumer-timeout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pika import exceptions as pex

from lrtkit.broker import SetupReport
from lrtkit_rabbitmq.admin import Admin, server_version_tuple
from lrtkit_rabbitmq.management import Management

AT_LEAST_ONCE_SINCE = (3, 10)
CONSUMER_TIMEOUT_ARG_SINCE = (3, 12)
# RabbitMQ does not compare these on redeclare; `lrtkit doctor` checks the consumer timeout.
UNCHECKED_ARGUMENTS = frozenset({"x-consumer-timeout"})


@dataclass(frozen=True)
class Topology:
    queue: str
    dlx: str
    dlq: str
    max_deliveries: int
    consumer_timeout_ms: int  # 0: not declared

    def queue_arguments(self, server_version: str) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.max_deliveries,
            "x-dead-letter-exchange": self.dlx,
            "x-dead-letter-routing-key": self.queue,
        }
        if server_version_tuple(server_version) >= AT_LEAST_ONCE_SINCE:
            # Dead-lettering that cannot lose a message needs reject-publish overflow.
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
        if self.consumer_timeout_ms > 0:
            # Honoured from RabbitMQ 3.12; accepted (and kept for an upgrade) before.
            args["x-consumer-timeout"] = self.consumer_timeout_ms
        return args

    def dlq_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"}


def ensure(admin: Admin, topo: Topology, management: Management | None) -> SetupReport:
    report = SetupReport()
    version = admin.server_version
    _exchange(admin, topo.dlx, report)
    what = f"dead-letter queue {topo.dlq!r}"
    if admin.passive(topo.dlq) is not None:
        # Any durable queue serves (the guide makes a classic one): keep it as it is.
        report.existing.append(what)
    else:
        admin.fresh_channel().queue_declare(topo.dlq, durable=True, arguments=topo.dlq_arguments())
        report.created.append(f"{what} ({_describe(topo.dlq_arguments())})")
    if not any(topo.dlx in m for m in report.mismatches):
        admin.fresh_channel().queue_bind(topo.dlq, topo.dlx, routing_key=topo.queue)
    _queue(
        admin,
        topo.queue,
        topo.queue_arguments(version),
        report,
        management=management,
        what=f"queue {topo.queue!r}",
    )
    return report


def _exchange(admin: Admin, name: str, report: SetupReport) -> None:
    what = f"dead-letter exchange {name!r} (direct)"
    existed = admin.exchange_exists(name)
    try:
        admin.fresh_channel().exchange_declare(name, "direct", durable=True)
    except pex.ChannelClosedByBroker as exc:
        admin.channel = None
        report.mismatches.append(f"{what} exists with different settings: {exc.reply_text}")
        return
    (report.existing if existed else report.created).append(what)


def _queue(
    admin: Admin,
    name: str,
    args: dict[str, Any],
    report: SetupReport,
    *,
    management: Management | None,
    what: str,
) -> None:
    existed = admin.passive(name) is not None
    if existed and management is not None:
        info = management.queue(name)
        if info is not None:
            found = [
                f"{what} has {key}={info.arguments.get(key)!r}, lrtkit wants {want!r}"
                for key, want in args.items()
                if info.arguments.get(key) != want and key not in UNCHECKED_ARGUMENTS
            ]
            if found:
                report.mismatches.extend(found)
                return
    try:
        admin.fresh_channel().queue_declare(name, durable=True, arguments=args)
    except pex.ChannelClosedByBroker as exc:
        admin.channel = None
        report.mismatches.append(
            f"{what} exists with different settings: {exc.reply_text}. Delete it (it must be "
            "empty, or move its messages first) and run `lrtkit setup` again, or change the "
            "lrtkit settings to match it"
        )
        return
    (report.existing if existed else report.created).append(f"{what} ({_describe(args)})")


def _describe(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in args.items())
