"""The local SQLite broker: the broker contract, plus what only the local broker does."""

from __future__ import annotations

import math
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lrtkit.broker import Message
from lrtkit.brokers.local import DELIVERY_LIMIT, LocalBroker
from lrtkit.config import load_settings
from lrtkit.errors import BrokerConfigError, BrokerError, LeaseLost, PayloadTooLarge
from lrtkit.plugins import load_broker
from lrtkit.testing.broker_contract import BrokerContract, job, job_id_of
from lrtkit.testing.target import BrokerTarget


class TestLocalBrokerContract(BrokerContract):
    release_delay = 1.0


def local(tmp_path: Path, queue: str = "q", **kwargs: float) -> LocalBroker:
    return LocalBroker(tmp_path / "queue.sqlite3", queue, **kwargs)  # type: ignore[arg-type]


def test_loaded_by_entry_point_from_settings(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "LRT_LOCAL_DB": str(tmp_path / "db" / "q.sqlite3"),
            "LRT_QUEUE": "jobs-a",
            "LRT_LEASE_SECONDS": "7",
            "LRT_MAX_DELIVERIES": "4",
        }
    )
    broker = load_broker(settings)
    try:
        assert isinstance(broker, LocalBroker)
        assert broker.path == tmp_path / "db" / "q.sqlite3"
        assert (broker.queue, broker.lease_seconds, broker.max_deliveries) == ("jobs-a", 7.0, 4)
        report = broker.ensure()
        assert report.created
        assert not report.mismatches
        assert broker.path.is_file()  # parent folder created
        again = broker.ensure()
        assert not again.created
        assert again.existing
        with sqlite3.connect(broker.path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        broker.close()


def test_delivery_limit_dead_letters_instead_of_delivering(tmp_path: Path) -> None:
    broker = local(tmp_path, lease_seconds=30, max_deliveries=2)
    broker.publish([job("crashy"), job("fine")])
    for expected in (1, 2):
        delivery = broker.receive(0)
        assert delivery is not None
        assert job_id_of(delivery) == "crashy"
        assert delivery.delivery_count == expected
        broker.release(delivery)
    # A third delivery would pass LRT_MAX_DELIVERIES: dead-lettered, and the next job comes.
    delivery = broker.receive(0)
    assert delivery is not None
    assert job_id_of(delivery) == "fine"
    broker.ack(delivery)
    assert broker.receive(0) is None
    [letter] = broker.dead_letters()
    assert (letter.job_id, letter.reason, letter.deliveries) == ("crashy", DELIVERY_LIMIT, 2)
    assert letter.body == job("crashy").body
    assert tuple(broker.depth()) == (0, 0, 1)
    assert broker.redrive(["crashy"]) == 1
    again = broker.receive(0)
    assert again is not None
    assert again.delivery_count == 1
    broker.close()


def test_expired_lease_counts_towards_delivery_limit(tmp_path: Path) -> None:
    broker = local(tmp_path, lease_seconds=0.2, max_deliveries=1)
    broker.publish([job("dies")])
    assert broker.receive(0) is not None  # the holder "dies" and never comes back
    assert broker.receive(1.0) is None  # after the lease: over the limit, dead-lettered
    assert [d.reason for d in broker.dead_letters()] == [DELIVERY_LIMIT]
    broker.close()


def test_two_queues_in_one_database_are_isolated(tmp_path: Path) -> None:
    a, b = (
        local(tmp_path, "queue-a", lease_seconds=30),
        local(tmp_path, "queue-b", lease_seconds=30),
    )
    a.publish([job("a-1"), job("a-2")])
    b.publish([job("b-1")])
    assert (tuple(a.depth()), tuple(b.depth())) == ((2, 0, 0), (1, 0, 0))
    got = b.receive(0)
    assert got is not None
    assert job_id_of(got) == "b-1"
    b.dead_letter(got, "testing")
    assert b.receive(0) is None
    assert a.dead_letters() == []
    assert a.redrive() == 0
    assert tuple(b.depth()) == (0, 0, 1)
    got_a = [a.receive(0), a.receive(0)]
    assert sorted(job_id_of(d) for d in got_a if d) == ["a-1", "a-2"]
    assert a.receive(0) is None
    a.close()
    b.close()


def test_stale_token_is_refused_by_the_database(tmp_path: Path) -> None:
    """Fencing does not rest on the local clock alone: the row's lease token decides."""
    broker = local(tmp_path, lease_seconds=0.3)
    broker.publish([job("fenced")])
    stale = broker.receive(0)
    assert stale is not None
    current = broker.receive(2)
    assert current is not None
    assert current.delivery_count == 2
    stale.lease_deadline = math.inf  # pretend this holder's clock still vouched for it
    actions: list[Callable[[], None]] = [
        lambda: broker.extend(stale, 5),
        lambda: broker.ack(stale),
        lambda: broker.release(stale),
        lambda: broker.dead_letter(stale, "no"),
    ]
    for action in actions:
        stale.lost = False
        with pytest.raises(LeaseLost):
            action()
    broker.extend(current, 30)
    assert tuple(broker.depth()) == (0, 1, 0)
    broker.ack(current)
    with pytest.raises(LeaseLost):
        broker.ack(current)  # already gone
    assert tuple(broker.depth()) == (0, 0, 0)
    broker.close()


def test_delayed_release_counts_as_waiting(tmp_path: Path) -> None:
    broker = local(tmp_path, lease_seconds=30)
    broker.publish([job("later")])
    delivery = broker.receive(0)
    assert delivery is not None
    broker.release(delivery, delay=30)
    assert tuple(broker.depth()) == (1, 0, 0)
    assert broker.receive(0.2) is None
    broker.close()


def test_receive_waits_for_a_message_published_meanwhile(tmp_path: Path) -> None:
    consumer, producer = local(tmp_path), local(tmp_path)
    timer = threading.Timer(0.3, lambda: producer.publish([job("late")]))
    timer.start()
    started = time.monotonic()
    delivery = consumer.receive(10)
    timer.join()
    assert delivery is not None
    assert job_id_of(delivery) == "late"
    assert time.monotonic() - started < 5  # woke up on the message, not at the end of the wait
    consumer.close()
    producer.close()


def test_lease_deadline_is_conservative(tmp_path: Path) -> None:
    broker = local(tmp_path, lease_seconds=5)
    broker.publish([job("d")])
    before = time.monotonic()
    delivery = broker.receive(0)
    assert delivery is not None
    assert before <= delivery.lease_deadline - 5 <= time.monotonic()
    broker.close()


def test_payload_too_large_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    broker = local(tmp_path)
    big = Message("big", b"x" * (LocalBroker.max_body_bytes + 1))
    with pytest.raises(PayloadTooLarge, match="big"):
        broker.publish([job("small"), big])
    assert tuple(broker.depth()) == (0, 0, 0)
    broker.close()


def test_missing_folders_are_created(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "a" / "b" / "q.sqlite3")
    broker.publish([job("x")])
    assert (tmp_path / "a" / "b" / "q.sqlite3").is_file()
    broker.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder_gives_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        for path in (locked / "q.sqlite3", locked / "sub" / "q.sqlite3"):
            broker = LocalBroker(path)
            with pytest.raises(BrokerConfigError) as info:
                broker.publish([job("x")])
            assert str(path) in str(info.value)
            assert "LRT_LOCAL_DB" in str(info.value)
    finally:
        locked.chmod(stat.S_IRWXU)


def test_folder_that_is_a_file_gives_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database folder should be")
    path = blocker / "sub" / "q.sqlite3"
    with pytest.raises(BrokerConfigError) as info:
        LocalBroker(path).receive(0)
    assert str(path) in str(info.value)
    assert "LRT_LOCAL_DB" in str(info.value)
    assert blocker.read_text().startswith("a file")  # nothing was harmed


def test_not_a_database_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    path.write_bytes(b"this is a text file, not SQLite" * 100)
    with pytest.raises(BrokerError) as info:
        LocalBroker(path).depth()
    assert str(path) in str(info.value)


def test_diagnose_reports_path_and_depth(tmp_path: Path) -> None:
    broker = local(tmp_path, "diag")
    broker.publish([job("x")])
    checks = broker.diagnose()
    assert [c.status for c in checks] == ["ok", "ok"]
    assert str(broker.path) in checks[0].detail
    assert "waiting 1" in checks[1].detail
    broker.close()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    [failed] = LocalBroker(blocker / "q.sqlite3").diagnose()
    assert failed.status == "fail"
    assert "LRT_LOCAL_DB" in failed.fix
    assert str(blocker / "q.sqlite3") in failed.detail


def test_usable_again_after_close(tmp_path: Path) -> None:
    broker = local(tmp_path)
    broker.publish([job("x")])
    broker.close()
    broker.close()
    assert tuple(broker.depth()) == (1, 0, 0)
    broker.close()


def test_contract_fixture_is_the_local_broker(lrt_broker_target: BrokerTarget) -> None:
    assert isinstance(lrt_broker_target.broker(), LocalBroker)


def test_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    # The worker runs every job (and its lease keeper) on new threads: a connection left open
    # per ended thread would exhaust the process's file descriptors over a long run.
    broker = LocalBroker(tmp_path / "q.db", "q", lease_seconds=5)
    broker.ensure()
    broker.publish([Message(f"t{i}", b"{}") for i in range(50)])

    def one_job() -> None:
        delivery = broker.receive(1)
        assert delivery is not None
        broker.ack(delivery)

    for _ in range(50):
        thread = threading.Thread(target=one_job)
        thread.start()
        thread.join()
    open_connections = len(broker._connections)
    assert broker.depth() == (0, 0, 0)
    broker.close()
    assert open_connections <= 2, f"{open_connections} connections still open after 50 threads"
