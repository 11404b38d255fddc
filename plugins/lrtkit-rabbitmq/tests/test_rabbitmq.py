"""What only RabbitMQ needs proven: the guide's publisher, kills, forced closes, timeouts, auth."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest
from lrtkit_rabbitmq.broker import RabbitMQBroker
from lrtkit_rabbitmq.testing import (
    RabbitServer,
    close_connections,
    consumer_count,
    ctl,
    delete_queue_set,
    get_consumer_timeout,
    need_rabbitmqctl,
    restore_consumer_timeout,
    set_consumer_timeout,
)

from lrtkit.errors import BrokerConfigError, LeaseLost, PublishError
from lrtkit.jobs import JobState
from lrtkit.testing import BrokerTarget, unique_name
from lrtkit.testing.broker_contract import job
from lrtkit.testing.worker_contract import WorkerHarness, expected_sum, redone


def _rabbit(broker: object) -> RabbitMQBroker:
    assert isinstance(broker, RabbitMQBroker)
    return broker


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port or 5672}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{vhost}", parts.query, parts.fragment))


# -- the guide's way in ------------------------------------------------------------------------


def test_jobs_published_the_guides_way_are_served_by_lrtkit_run(
    rabbit_server: RabbitServer, rabbit_env: dict[str, str], tmp_path: Path
) -> None:
    """Plain pika ``basic_publish`` of JSON (no properties), guide variable names only."""
    queue = rabbit_env["LRT_QUEUE"]
    guide = BrokerTarget(
        env={"LRT_BROKER": "rabbitmq", "AMQP_URL": rabbit_server.url, "JOB_QUEUE": queue}
    )
    try:
        assert not guide.broker().ensure().mismatches
        connection = pika.BlockingConnection(pika.URLParameters(rabbit_server.url))
        channel = connection.channel()
        for i in range(3):
            body = json.dumps({"job_id": f"job-{i}", "steps": 3 + i, "tick": 0.05})
            channel.basic_publish(exchange="", routing_key=queue, body=body)
        connection.close()

        workers = WorkerHarness(guide, tmp_path, 3.0)
        proc = workers.start_handler("sum_job", "--exit-when-idle", "2")
        assert workers.wait_exit(proc, 60) == 0, workers.logs()
        for i in range(3):
            record = workers.record(f"job-{i}")
            assert record.state == JobState.SUCCEEDED, workers.logs()
            assert workers.store.get_result(f"job-{i}") == {"sum": expected_sum(3 + i)}
        workers.depth_becomes((0, 0, 0))
    finally:
        guide.close()


# -- a worker that dies or loses its connection ------------------------------------------------


def test_sigkilled_worker_job_goes_to_another_worker_long_before_the_lease(
    lrt_broker_target: BrokerTarget, tmp_path: Path
) -> None:
    lease = 60.0
    workers = WorkerHarness(lrt_broker_target, tmp_path, lease)
    job_id = workers.submit(workers.new_id(), steps=30, tick=0.1)
    first = workers.start_handler("sum_job")
    workers.steps_done(job_id, 2, 30, pid=first.pid)
    second = workers.start_handler("sum_job")
    # The second worker is up when its waiting consumer shows next to the held job.
    url, queue = lrt_broker_target.env["LRT_RABBITMQ_URL"], lrt_broker_target.env["LRT_QUEUE"]
    workers.eventually(lambda: consumer_count(url, queue) >= 2, 30, "second worker up")
    killed_at = time.time()
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    workers.steps_done(job_id, 1, 30, pid=second.pid)
    took_over = min(r.at for r in workers.trace(job_id) if r.pid == second.pid) - killed_at
    print(f"\nRabbitMQ: SIGKILL -> first step on another worker in {took_over:.3f}s")
    assert took_over < lease / 2, f"took {took_over:.1f}s, the lease is {lease}s"
    record = workers.state_becomes(job_id, JobState.SUCCEEDED, 60)
    assert workers.store.get_result(job_id) == {"sum": expected_sum(30)}
    assert record.failures == 0
    assert redone(workers.trace(job_id)) <= 1
    second.send_signal(signal.SIGTERM)
    assert workers.wait_exit(second, 30) == 0


def test_connection_closed_during_a_job_ends_with_it_done_once(
    rabbit_server: RabbitServer, lrt_broker_target: BrokerTarget, tmp_path: Path
) -> None:
    need_rabbitmqctl(rabbit_server)
    workers = WorkerHarness(lrt_broker_target, tmp_path, 3.0)
    name = unique_name("lrt-conn")
    # Long enough to outlast rabbitmqctl's own start-up (about 2 s).
    job_id = workers.submit(workers.new_id(), steps=80, tick=0.1)
    proc = workers.start_handler(
        "sum_job", "--exit-when-idle", "3", LRT_RABBITMQ_CONNECTION_NAME=name
    )
    workers.steps_done(job_id, 3, 30, pid=proc.pid)
    assert close_connections(f"{name} (worker)") == 1
    record = workers.state_becomes(job_id, JobState.SUCCEEDED, 60)
    assert workers.wait_exit(proc, 30) == 0, workers.logs()  # not stuck: it went idle and left
    assert workers.store.get_result(job_id) == {"sum": expected_sum(80)}
    rows = workers.trace(job_id)
    assert {r.attempt for r in rows} == {1, 2}, rows  # lost with the channel, redelivered
    assert redone(rows) <= 3
    assert record.failures == 0
    workers.depth_becomes((0, 0, 0))
    assert workers.dead_letters() == []


def test_broker_reconnects_and_marks_held_jobs_lost(
    rabbit_server: RabbitServer, lrt_broker_target: BrokerTarget
) -> None:
    need_rabbitmqctl(rabbit_server)
    name = lrt_broker_target.env["LRT_RABBITMQ_CONNECTION_NAME"]
    broker = _rabbit(lrt_broker_target.broker())
    broker.publish([job("reconnect-1")])
    held = broker.receive(5)
    assert held is not None
    broker.extend(held, 3)
    assert close_connections(f"{name} (worker)") == 1
    deadline = time.monotonic() + 10
    while not held.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held.lost
    with pytest.raises(LeaseLost):
        broker.extend(held, 3)
    with pytest.raises(LeaseLost):
        broker.ack(held)
    again = broker.receive(10)  # the same client, on its new connection
    assert again is not None
    assert again.body == held.body
    assert again.delivery_count == 2
    broker.ack(again)
    assert broker.link.connections == 2


def test_consumer_timeout_is_detected_as_a_lost_lease(
    rabbit_server: RabbitServer, lrt_broker_target: BrokerTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """Shorten the server's consumer_timeout for one channel, restore it at once.

    RabbitMQ reads ``consumer_timeout`` when a channel opens and checks it on the channel's
    tick (every ``channel_tick_interval``, 60 s): both are shortened while the test's channel
    opens, the timeout is restored straight after, the tick once the timeout fired.
    """
    need_rabbitmqctl(rabbit_server)
    publisher = lrt_broker_target.broker()
    publisher.publish([job("timeout-1")])
    original_timeout = get_consumer_timeout()
    original_tick = ctl("eval", "application:get_env(rabbit, channel_tick_interval).").strip()
    caplog.set_level(logging.ERROR, logger="lrtkit.rabbitmq")
    try:
        set_consumer_timeout(2000)
        ctl("eval", "application:set_env(rabbit, channel_tick_interval, 1000).")
        holder = _rabbit(lrt_broker_target.broker())
        held = holder.receive(5)
        restore_consumer_timeout(original_timeout)
        assert held is not None
        deadline = time.monotonic() + 90
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        restore_consumer_timeout(original_timeout)
        tick = original_tick.removeprefix("{ok,").removesuffix("}")
        if original_tick == "undefined":
            ctl("eval", "application:unset_env(rabbit, channel_tick_interval).")
        else:
            ctl("eval", f"application:set_env(rabbit, channel_tick_interval, {tick}).")
    assert get_consumer_timeout() == original_timeout
    assert held.lost, "the consumer timeout never closed the channel"
    with pytest.raises(LeaseLost):
        holder.extend(held, 3)
    assert holder.session.consumer_timeouts == 1
    assert "consumer_timeout" in caplog.text
    assert "rabbitmq.conf" in caplog.text
    checks = {c.name: c for c in holder.diagnose()}
    assert checks["rabbitmq consumer_timeout"].status == "fail"
    again = publisher.receive(10)  # requeued by the broker
    assert again is not None
    assert again.delivery_count == 2
    publisher.ack(again)


# -- errors that must be one clear message -----------------------------------------------------


def test_wrong_password_is_one_clear_config_error(
    rabbit_server: RabbitServer, rabbit_env: dict[str, str], tmp_path: Path
) -> None:
    secret = "not-the-password-4711"
    env = {**rabbit_env, "LRT_RABBITMQ_URL": _with_password(rabbit_server.url, secret)}
    target = BrokerTarget(env=env)
    try:
        broker = _rabbit(target.broker())
        started = time.monotonic()
        with pytest.raises(BrokerConfigError) as first:
            broker.receive(1)
        assert time.monotonic() - started < 15  # not the connect timeout, not a retry loop
        assert "password" in str(first.value)
        assert secret not in str(first.value)
        with pytest.raises(BrokerConfigError):
            broker.publish([job("auth-1")])
        assert broker.link.connections == 0
        with pytest.raises(BrokerConfigError) as setup:
            target.broker().ensure()
        assert secret not in str(setup.value)

        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "lrtkit",
                "run",
                "lrtkit.testing.handlers:sum_job",
                "--exit-when-idle",
                "5",
            ],
            env=target.subprocess_env(
                {"LRT_STORAGE": f"file://{tmp_path / 'store'}", "LRT_SALAD_IMDS_URL": "off"}
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert "refused the login" in output
        assert secret not in output
        assert output.count("reconnecting") == 0
    finally:
        target.close()


def test_missing_vhost_is_a_config_error(
    rabbit_server: RabbitServer, rabbit_env: dict[str, str]
) -> None:
    env = {**rabbit_env, "LRT_RABBITMQ_URL": _with_vhost(rabbit_server.url, "no-such-vhost")}
    target = BrokerTarget(env=env)
    try:
        with pytest.raises(BrokerConfigError, match=r"vhost|virtual host"):
            target.broker().receive(1)
        with pytest.raises(BrokerConfigError, match=r"vhost|virtual host"):
            target.broker().depth()
    finally:
        target.close()


def test_setup_reports_an_existing_queue_that_differs(
    rabbit_server: RabbitServer, rabbit_env: dict[str, str]
) -> None:
    """A queue made by hand as the guide does (delivery limit 3, DLX 'deadletter')."""
    queue = rabbit_env["LRT_QUEUE"]
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(rabbit_server.url))) as c:
        c.channel().queue_declare(
            queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": 3,
                "x-dead-letter-exchange": "deadletter",
            },
        )
    target = BrokerTarget(env=dict(rabbit_env))
    try:
        report = target.broker().ensure()
        text = "\n".join(report.mismatches)
        if "LRT_RABBITMQ_MANAGEMENT_URL" in rabbit_env:
            # The management API shows every argument: all differences are listed.
            assert len(report.mismatches) == 5, text
            assert "x-delivery-limit=3, lrtkit wants 10" in text
            assert "x-dead-letter-exchange='deadletter'" in text
        else:
            # AMQP only: RabbitMQ's refusal names the first differing argument.
            assert len(report.mismatches) == 1, text
            assert "x-delivery-limit" in text or "x-dead-letter-exchange" in text
            assert "inequivalent" in text
        assert all(queue in problem for problem in report.mismatches)
        # The dead-letter side was still set up, and setup can be run again.
        assert any(".dlq" in name for name in report.created)
        again = target.broker().ensure()
        assert again.mismatches == report.mismatches
        done = subprocess.run(
            [sys.executable, "-m", "lrtkit", "setup"],
            env=target.subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "mismatch" in done.stdout + done.stderr
    finally:
        target.close()


def test_publish_to_a_missing_queue_names_every_job(rabbit_env: dict[str, str]) -> None:
    target = BrokerTarget(env={**rabbit_env, "LRT_QUEUE": unique_name("lrt-missing")})
    try:
        with pytest.raises(PublishError) as err:
            target.broker().publish([job("miss-1"), job("miss-2")])
        assert set(err.value.failed) == {"miss-1", "miss-2"}
        assert err.value.published == 0
        assert all("lrtkit setup" in why for why in err.value.failed.values())
    finally:
        target.close()


# -- delivery limit and releases ---------------------------------------------------------------


def test_delivery_limit_dead_letters_with_reason_and_releases_do_not_count(
    rabbit_server: RabbitServer, rabbit_env: dict[str, str]
) -> None:
    queue = unique_name("lrt-limit")
    env = {**rabbit_env, "LRT_QUEUE": queue, "LRT_MAX_DELIVERIES": "1"}
    target = BrokerTarget(env=env)
    try:
        setup = target.broker()
        setup.ensure()
        setup.publish([job("released-1"), job("crashing-1")])
        # Releases republish: many of them never reach x-delivery-limit=1.
        worker = target.broker()
        seen: dict[str, int] = {}
        for _ in range(4):
            d = worker.receive(5)
            assert d is not None
            seen[json.loads(d.body)["job_id"]] = d.delivery_count
            if b"released-1" in d.body:
                worker.release(d)
            else:
                worker.close()  # the holder "dies": the broker requeues and counts it
                worker = target.broker()
        assert seen.get("released-1", 0) >= 2
        letters = []
        deadline = time.monotonic() + 10
        while not letters and time.monotonic() < deadline:
            letters = setup.dead_letters()
            time.sleep(0.1)
        assert [d.job_id for d in letters] == ["crashing-1"]
        assert letters[0].reason.startswith("delivery_limit")
        left = target.broker().receive(5)
        assert left is not None
        assert json.loads(left.body)["job_id"] == "released-1"
    finally:
        target.close()
        delete_queue_set(rabbit_server.url, queue)


def test_diagnose_without_management_api_says_what_to_do(lrt_broker_target: BrokerTarget) -> None:
    broker = lrt_broker_target.broker()
    checks = {c.name: c for c in broker.diagnose()}
    assert checks["rabbitmq connection"].status == "ok"
    assert checks[f"queue {lrt_broker_target.env['LRT_QUEUE']}"].status == "ok"
    assert checks["dead letters"].status == "ok"
    timeout = checks["rabbitmq consumer_timeout"]
    if "LRT_RABBITMQ_MANAGEMENT_URL" not in lrt_broker_target.env:
        assert checks["rabbitmq management API"].status == "warn"
        assert timeout.status == "warn"
        assert "application:get_env(rabbit, consumer_timeout)" in timeout.fix


def test_management_api_counts_unacked_and_compares_arguments(
    rabbit_server: RabbitServer, lrt_broker_target: BrokerTarget
) -> None:
    if not rabbit_server.management_url:
        pytest.skip("set LRT_TEST_RABBITMQ_MANAGEMENT_URL to test the management API")
    broker = _rabbit(lrt_broker_target.broker())
    assert broker.management is not None
    broker.publish([job("mgmt-1"), job("mgmt-2")])
    held = broker.receive(5)
    assert held is not None
    info = None
    deadline = time.monotonic() + 15  # management statistics lag a few seconds
    while time.monotonic() < deadline:
        info = broker.management.queue(broker.queue)
        if info is not None and info.unacked == 1 and info.ready == 1:
            break
        time.sleep(0.5)
    assert broker.depth().in_flight == 1
    assert info is not None
    assert info.arguments.get("x-delivery-limit") == broker.topology.max_deliveries
    broker.ack(held)


def test_close_hands_back_delayed_releases_at_once_and_only_once(
    lrt_broker_target: BrokerTarget,
) -> None:
    holder = lrt_broker_target.broker()
    other = lrt_broker_target.broker()
    holder.publish([job("delayed-1")])
    held = holder.receive(5)
    assert held is not None
    holder.release(held, delay=60)
    assert other.receive(0.5) is None  # held back for the delay
    closed_at = time.monotonic()
    holder.close()
    again = other.receive(10)
    assert again is not None
    assert time.monotonic() - closed_at < 10  # not after the 60 s delay
    assert again.delivery_count == 2
    other.ack(again)
    # The copy was confirmed and the original acked before the connection closed: one job.
    assert other.receive(1) is None


def test_guide_made_dead_letter_queue_is_kept_and_used(
    rabbit_server: RabbitServer, rabbit_env: dict[str, str]
) -> None:
    """The guide makes exchange and queue 'deadletter' by hand (a classic queue)."""
    queue = rabbit_env["LRT_QUEUE"]
    dlx, dlq = f"{queue}-deadletter", f"{queue}-deadletter-q"
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(rabbit_server.url))) as c:
        c.channel().exchange_declare(dlx, "direct", durable=True)
        c.channel().queue_declare(dlq, durable=True)  # classic
    target = BrokerTarget(env={**rabbit_env, "LRT_RABBITMQ_DLX": dlx, "LRT_RABBITMQ_DLQ": dlq})
    try:
        broker = target.broker()
        report = broker.ensure()
        assert not report.mismatches, report
        assert any(dlq in name for name in report.existing)
        assert any(dlx in name for name in report.existing)
        broker.publish([job("guide-dl-1")])
        held = broker.receive(5)
        assert held is not None
        broker.dead_letter(held, "invalid job: testing")
        letters = broker.dead_letters()
        assert [(d.job_id, d.reason) for d in letters] == [("guide-dl-1", "invalid job: testing")]
    finally:
        target.close()
        with contextlib.closing(
            pika.BlockingConnection(pika.URLParameters(rabbit_server.url))
        ) as c:
            c.channel().queue_delete(dlq)
            c.channel().exchange_delete(dlx)


def test_heartbeats_flow_while_the_job_thread_is_busy(rabbit_env: dict[str, str]) -> None:
    """A 2 s heartbeat and a job that holds the CPU for 4 heartbeat intervals."""
    target = BrokerTarget(env={**rabbit_env, "LRT_RABBITMQ_HEARTBEAT": "2"})
    try:
        broker = _rabbit(target.broker())
        broker.ensure()
        broker.publish([job("busy-1")])
        held = broker.receive(5)
        assert held is not None
        until = time.monotonic() + 8
        spins = 0
        while time.monotonic() < until:  # pure Python work, holding the GIL in turns
            spins += sum(range(1000))
        assert not held.lost
        broker.extend(held, 3)
        broker.ack(held)
        assert broker.link.connections == 1  # never dropped for missed heartbeats
        assert broker.receive(0.5) is None
    finally:
        target.close()


def test_worker_on_a_missing_queue_says_run_setup(
    rabbit_env: dict[str, str], tmp_path: Path
) -> None:
    target = BrokerTarget(env={**rabbit_env, "LRT_QUEUE": unique_name("lrt-missing")})
    try:
        with pytest.raises(BrokerConfigError, match="lrtkit setup"):
            target.broker().receive(1)
        done = subprocess.run(
            [sys.executable, "-m", "lrtkit", "run", "lrtkit.testing.handlers:sum_job"],
            env=target.subprocess_env(
                {"LRT_STORAGE": f"file://{tmp_path / 'store'}", "LRT_SALAD_IMDS_URL": "off"}
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "lrtkit setup" in done.stdout + done.stderr
    finally:
        target.close()
