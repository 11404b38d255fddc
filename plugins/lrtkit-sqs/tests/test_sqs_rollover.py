"""Holding a job past SQS's 12-hour visibility cap, with the cap shortened to a few seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from lrtkit_sqs.broker import SqsBroker

from lrtkit.errors import ConnectionLost, LeaseLost
from lrtkit.testing.broker_contract import depth_becomes, job
from lrtkit.testing.target import BrokerTarget

CAP = 4
LEASE = 2.0


def capped(target: BrokerTarget, cap: float = CAP) -> BrokerTarget:
    """The same queue, seen by brokers whose visibility cap is ``cap`` seconds."""
    return BrokerTarget(env={**target.env, "LRT_SQS_MAX_LEASE_SECONDS": str(cap)})


def sqs(target: BrokerTarget, lease: float = LEASE) -> SqsBroker:
    broker = target.broker(lease_seconds=lease)
    assert isinstance(broker, SqsBroker)
    return broker


def hold_until_near_cap(broker: SqsBroker, delivery: Any, margin: float = 1.5) -> None:
    """Keep the lease fresh, as the worker's heartbeat does, until the cap is ``margin`` away."""
    while broker.cap_left(delivery) > margin:
        broker.extend(delivery, LEASE)
        time.sleep(0.4)


def test_cap_setting_is_what_the_worker_reads(lrt_broker_target: BrokerTarget) -> None:
    assert sqs(lrt_broker_target).max_lease_seconds == 43200
    assert sqs(capped(lrt_broker_target)).max_lease_seconds == CAP


def test_without_rollover_the_cap_ends_the_lease(lrt_broker_target: BrokerTarget) -> None:
    target = capped(lrt_broker_target, cap=3)
    holder, other = sqs(target), sqs(target)
    holder.publish([job("cap-1")])
    delivery = holder.receive(5)
    assert delivery is not None
    renewals = 0
    while holder.cap_left(delivery) >= 1:
        holder.extend(delivery, LEASE)  # near the cap: renewed only up to it
        assert delivery.lease_deadline <= time.monotonic() + holder.cap_left(delivery) + 0.01
        renewals += 1
        time.sleep(0.5)
    assert renewals >= 4
    with pytest.raises(LeaseLost, match="cap"):
        holder.extend(delivery, LEASE)
    again = other.receive(LEASE + 5)
    assert again is not None
    assert again.delivery_count == 2
    other.ack(again)


def test_job_held_across_several_rollovers_is_never_seen_by_others(
    lrt_broker_target: BrokerTarget,
) -> None:
    target = capped(lrt_broker_target)
    holder, competitor = sqs(target), sqs(target)
    holder.publish([job("roll-1", steps=3)])
    delivery = holder.receive(5)
    assert delivery is not None

    stop = threading.Event()
    stolen: list[str] = []

    def compete() -> None:
        # An idle worker polling the whole time: it must never be handed the job.
        while not stop.is_set():
            got = competitor.receive(0.5)
            if got is not None:
                stolen.append(got.body.decode())
                competitor.release(got)

    thread = threading.Thread(target=compete, daemon=True)
    thread.start()
    try:
        for _ in range(2):
            hold_until_near_cap(holder, delivery)
            before = holder.handle_of(delivery)
            holder.rollover(delivery)
            after = holder.handle_of(delivery)
            assert after.receipt != before.receipt
            assert after.message_id != before.message_id
            assert delivery.delivery_count == 1  # the same attempt goes on
            assert not delivery.lease_expired()
            assert holder.cap_left(delivery) > CAP - 1  # a fresh 12-hour (here 4 s) window
            assert json.loads(delivery.body) == {"job_id": "roll-1", "steps": 3}
        holder.extend(delivery, LEASE)
        holder.ack(delivery)
    finally:
        stop.set()
        thread.join(10)
    assert stolen == []
    depth_becomes(holder, (0, 0, 0))


def test_rollover_passes_over_other_jobs_and_puts_them_back(
    lrt_broker_target: BrokerTarget,
) -> None:
    target = capped(lrt_broker_target)
    holder = sqs(target)
    holder.publish([job("long-1")])
    delivery = holder.receive(5)
    assert delivery is not None
    holder.publish([job(f"waiting-{i}") for i in range(3)])
    holder.rollover(delivery)
    assert json.loads(delivery.body)["job_id"] == "long-1"
    depth_becomes(holder, (3, 1, 0))  # the others were made visible again at once
    others = []
    for _ in range(3):
        got = holder.receive(2)
        assert got is not None
        others.append(json.loads(got.body)["job_id"])
        holder.ack(got)
    assert sorted(others) == ["waiting-0", "waiting-1", "waiting-2"]
    holder.ack(delivery)
    depth_becomes(holder, (0, 0, 0))


# -- a holder process killed at each step of a rollover ------------------------------------------

CHILD = r"""
import os, signal, sys
from lrtkit.config import load_settings
from lrtkit.plugins import load_broker

stage = sys.argv[1]
broker = load_broker(load_settings())
delivery = broker.receive(10)
print("HOLDING", delivery.delivery_count, flush=True)
real_call = broker.api.call

def call(action, what, **params):
    result = real_call(action, what, **params)
    if "(rollover)" in what and action == stage:
        os.kill(os.getpid(), signal.SIGKILL)   # dies right after this step reached SQS
    return result

broker.api.call = call
broker.rollover(delivery)
print("ROLLED", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("stage", ["send_message", "delete_message", "receive_message"])
def test_holder_killed_during_rollover_loses_nothing(
    lrt_broker_target: BrokerTarget, stage: str
) -> None:
    target = capped(lrt_broker_target)
    rescuer = sqs(target, lease=30)
    rescuer.publish([job("kill-1", steps=2)])
    env = target.subprocess_env({"LRT_LEASE_SECONDS": str(LEASE)})
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, stage],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    assert "HOLDING 1" in proc.stdout
    killed_at = time.monotonic()
    # The job comes back (the original, or its continuation copy) well within a minute.
    bodies = []
    first = rescuer.receive(LEASE + 15)
    assert first is not None, "the job was lost"
    assert time.monotonic() - killed_at < LEASE + 15
    bodies.append(first.body)
    rescuer.ack(first)
    # Killed between sending the copy and deleting the original: both exist, one after the
    # other in the job's group (the worker acks the second as already done).
    second = rescuer.receive(LEASE + 3)
    if second is not None:
        bodies.append(second.body)
        rescuer.ack(second)
    assert len(bodies) == (2 if stage == "send_message" else 1)
    assert all(json.loads(b) == {"job_id": "kill-1", "steps": 2} for b in bodies)
    depth_becomes(rescuer, (0, 0, 0))


def test_rollover_retried_after_a_failed_delete(lrt_broker_target: BrokerTarget) -> None:
    """The first copy heads the job's group: a retried rollover takes that one back."""
    target = capped(lrt_broker_target)
    holder = sqs(target)
    holder.publish([job("retry-1")])
    delivery = holder.receive(5)
    assert delivery is not None
    real_call = holder.api.call
    failed: list[str] = []

    def flaky(action: str, what: str, **params: Any) -> dict[str, Any]:
        if action == "delete_message" and "(rollover)" in what and not failed:
            failed.append(action)  # the network dropped this request: nothing was deleted
            raise ConnectionLost("injected: connection reset")
        return real_call(action, what, **params)

    holder.api.call = flaky  # type: ignore[method-assign]
    with pytest.raises(ConnectionLost):
        holder.rollover(delivery)
    assert not delivery.lost  # the original is still held
    holder.rollover(delivery)  # the worker's next heartbeat tries again
    assert len(holder.handle_of(delivery).rollover_tokens) == 0  # a fresh receipt
    holder.ack(delivery)
    # The second copy is a duplicate of a job now done (the worker acks it as such).
    duplicate = holder.receive(5)
    assert duplicate is not None
    assert json.loads(duplicate.body) == {"job_id": "retry-1"}
    holder.ack(duplicate)
    depth_becomes(holder, (0, 0, 0))


def test_rollover_behind_waiting_jobs_costs_them_at_most_one_receive(
    sqs_env: dict[str, str], queue_cleanup: Any
) -> None:
    # The copy heads its own group, not the queue: older jobs of other groups come first. They
    # must stay hidden while the holder searches, or each pass re-receives them until SQS
    # dead-letters them (maxReceiveCount = 3 here) without ever running them.
    from lrtkit_sqs.setup import dlq_name, fifo_name

    env = {**sqs_env, "LRT_MAX_DELIVERIES": "3", "LRT_SQS_MAX_LEASE_SECONDS": str(CAP)}
    queue_cleanup(fifo_name(env["LRT_QUEUE"]))
    queue_cleanup(dlq_name(env["LRT_QUEUE"]))
    target = BrokerTarget(env=env)
    try:
        holder = sqs(target, lease=8.0)
        holder.ensure()
        holder.publish([job("long-1")])
        delivery = holder.receive(5)
        assert delivery is not None
        holder.publish([job(f"wait-{i:02d}") for i in range(25)])
        holder.rollover(delivery)
        assert json.loads(delivery.body)["job_id"] == "long-1"
        holder.ack(delivery)
        assert holder.dead_letters() == []
        seen: dict[str, int] = {}
        while len(seen) < 25:
            waiting = holder.receive(5)
            assert waiting is not None, f"only {len(seen)} of 25 waiting jobs came back"
            seen[json.loads(waiting.body)["job_id"]] = waiting.delivery_count
            holder.ack(waiting)
        assert max(seen.values()) <= 2, seen
        assert holder.dead_letters() == []
    finally:
        target.close()
