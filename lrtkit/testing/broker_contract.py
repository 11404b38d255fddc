"""The broker contract: what every lrtkit broker must do, as a pytest suite plugins subclass.

A broker plugin provides one fixture, ``lrt_broker_target``, yielding a
:class:`~lrtkit.testing.target.BrokerTarget` for a fresh, uniquely named queue on a real broker
(and cleaning it up afterwards), then subclasses this class::

    from lrtkit.testing.broker_contract import BrokerContract

    class TestMyBrokerContract(BrokerContract):
        lease_seconds = 2.0

Every test builds its brokers with ``target.broker(lease_seconds=...)``. Tests about a lease
running out while its holder is alive run only where ``Broker.timed_lease`` is true; for brokers
whose lease is the connection (RabbitMQ) they are skipped, while "holder process killed -> job
redelivered" runs on every broker. Message counts stay small (tens) so that emulators that slow
down with queue depth (moto) stay quick.

Run as a module, this file is the helper process the suite kills and races
(``python -m lrtkit.testing.broker_contract hold|drain``); it builds its broker from the
environment, exactly as a worker does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import IO, ClassVar, TypeVar

import pytest

from lrtkit.broker import Broker, DeadLetter, Delivery, Depth, Message, SetupReport
from lrtkit.errors import BrokerError, LeaseLost, LrtError, PayloadTooLarge, PublishError
from lrtkit.testing.target import BrokerTarget

# -- helpers ------------------------------------------------------------------------------------

_T = TypeVar("_T")


def job(job_id: str, **fields: object) -> Message:
    """A job message with the wire body ``{"job_id": ..., **fields}``."""
    body = json.dumps({"job_id": job_id, **fields}, separators=(",", ":")).encode()
    return Message(job_id, body)


def job_id_of(delivery: Delivery) -> str:
    data = json.loads(delivery.body)
    assert isinstance(data, dict), delivery.body
    return str(data["job_id"])


def eventually(
    check: Callable[[], _T | None],
    timeout: float = 10.0,
    interval: float = 0.1,
    *,
    what: str = "condition not met",
    details: Callable[[], str] | None = None,
) -> _T:
    """Call ``check`` until it returns something truthy; fail after ``timeout``.

    The failure names ``what`` and the last value, then ``details()`` (e.g. workers' logs).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{details()}" if details is not None else ""
            pytest.fail(f"{what}: not within {timeout}s (last value: {value!r}){extra}")
        time.sleep(interval)


def depth_becomes(broker: Broker, expected: tuple[int, int, int], timeout: float = 10.0) -> None:
    """Wait until ``broker.depth()`` equals ``expected`` (some brokers count with a lag)."""
    last: list[Depth] = []

    def check() -> bool:
        last[:] = [broker.depth()]
        return tuple(last[0]) == expected

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            pytest.fail(f"depth() is {last[0]}, expected {Depth(*expected)} within {timeout}s")
        time.sleep(0.1)


class ChildProcess:
    """A helper process from this module, its output lines read by a thread."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lrtkit.testing.broker_contract", *args],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True).start()

    def _pump(self, stream: IO[str], is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self.lines.put(line.rstrip("\n"))
            else:
                self.stderr.append(line)
        if is_stdout:
            self.lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with ``prefix``; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.01, remaining))
            except queue.Empty:
                pytest.fail(f"helper process printed no {prefix!r} within {timeout}s{self._err()}")
            if line is None:
                self.proc.wait(5)
                pytest.fail(
                    f"helper process exited ({self.proc.returncode}) before printing "
                    f"{prefix!r}{self._err()}"
                )
            if line.startswith(prefix):
                return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def _err(self) -> str:
        text = "".join(self.stderr[-30:]).strip()
        return f"; its stderr:\n{text}" if text else ""


@contextlib.contextmanager
def children(*procs: ChildProcess) -> Iterator[None]:
    """Kill the helper processes on the way out, whatever happened."""
    try:
        yield
    finally:
        for proc in procs:
            proc.close_stdin()
            with contextlib.suppress(Exception):
                proc.kill()


# -- the suite ----------------------------------------------------------------------------------


class BrokerContract:
    """The contract tests. Subclass it next to an ``lrt_broker_target`` fixture."""

    #: Lease used where a test waits for a lease to run out (keep it short).
    lease_seconds: ClassVar[float] = 2.0
    #: Lease used where a test must never see one run out.
    long_lease_seconds: ClassVar[float] = 60.0
    #: Delay used by the release-with-delay test (whole seconds suit SQS).
    release_delay: ClassVar[float] = 2.0
    #: How long a helper process may take to start and receive.
    startup_timeout: ClassVar[float] = 60.0
    #: Jobs raced by the concurrency tests.
    concurrent_jobs: ClassVar[int] = 40
    #: How long counts may lag behind (depth(), dead_letters()).
    settle_seconds: ClassVar[float] = 10.0
    #: How long a receive may take to return a job that is available.
    receive_wait: ClassVar[float] = 10.0
    #: Lease of the helper process that is killed while holding a job.
    kill_lease_seconds: ClassVar[float | None] = None  # None: twice lease_seconds

    # -- helpers -------------------------------------------------------------------------------

    def make_broker(self, target: BrokerTarget, lease: float | None = None) -> Broker:
        return target.broker(lease_seconds=lease if lease is not None else self.lease_seconds)

    def fresh(self, target: BrokerTarget, lease: float | None = None) -> Broker:
        """A broker on the target's queue, with the queue set up."""
        broker = self.make_broker(target, lease)
        broker.ensure()
        return broker

    def take(self, broker: Broker, wait: float | None = None) -> Delivery:
        wait = self.receive_wait if wait is None else wait
        delivery = broker.receive(wait)
        assert delivery is not None, f"no message received within {wait}s"
        return delivery

    def assert_empty(self, broker: Broker, wait: float = 0.5) -> None:
        delivery = broker.receive(wait)
        assert delivery is None, f"expected no message, got {delivery.body!r}"

    def child_env(self, target: BrokerTarget, lease: float) -> dict[str, str]:
        return target.subprocess_env({"LRT_LEASE_SECONDS": str(lease), "PYTHONUNBUFFERED": "1"})

    @staticmethod
    def _need_timed_lease(broker: Broker) -> None:
        if not broker.timed_lease:
            pytest.skip(f"{type(broker).__name__} leases are connections, not timers")

    # -- publish, receive, ack -----------------------------------------------------------------

    def test_ensure_is_idempotent(self, lrt_broker_target: BrokerTarget) -> None:
        broker = self.make_broker(lrt_broker_target)
        first = broker.ensure()
        second = broker.ensure()
        assert isinstance(first, SetupReport)
        assert isinstance(second, SetupReport)
        assert second.created == [], f"a second ensure() created {second.created}"
        depth_becomes(broker, (0, 0, 0), self.settle_seconds)

    def test_publish_receive_ack(self, lrt_broker_target: BrokerTarget) -> None:
        broker = self.fresh(lrt_broker_target, self.long_lease_seconds)
        messages = [job(f"pra-{i}", n=i) for i in range(3)]
        broker.publish(messages)
        broker.publish([])  # nothing to do, and no error
        got = [self.take(broker) for _ in messages]
        assert sorted(d.body for d in got) == sorted(m.body for m in messages)
        assert all(d.delivery_count == 1 for d in got)
        for delivery in got:
            broker.ack(delivery)
        self.assert_empty(broker)
        depth_becomes(broker, (0, 0, 0), self.settle_seconds)

    def test_body_round_trips_bytes_exactly(self, lrt_broker_target: BrokerTarget) -> None:
        broker = self.fresh(lrt_broker_target, self.long_lease_seconds)
        bodies = [
            '{"job_id":"rt-1","text":"h\u00e9llo \u2603 \U0001f389","q":"\\"\\n\\t"}'.encode(),
            b'{ "steps" : 600 ,\n  "job_id":"rt-2" }   ',  # spacing and key order kept
            b'{"job_id":"rt-3","big":"' + b"x" * 50_000 + b'"}',
        ]
        broker.publish([Message(f"rt-{i + 1}", b) for i, b in enumerate(bodies)])
        got = [self.take(broker) for _ in bodies]
        assert Counter(d.body for d in got) == Counter(bodies)
        assert all(isinstance(d.body, bytes) for d in got)
        for delivery in got:
            broker.ack(delivery)

    def test_bad_bodies_are_carried_unchanged(self, lrt_broker_target: BrokerTarget) -> None:
        """The broker never parses bodies: the worker dead-letters bad ones with a reason."""
        broker = self.fresh(lrt_broker_target, self.long_lease_seconds)
        bodies = {
            "bad-text": b"this is not JSON {",
            "bad-binary": bytes(range(256)),
            "bad-array": b'[1, 2, "three"]',
            "bad-noid": b'{"steps": 3}',
        }
        broker.publish([Message(k, v) for k, v in bodies.items()])
        got = [self.take(broker) for _ in bodies]
        assert Counter(d.body for d in got) == Counter(bodies.values())
        for delivery in got:
            broker.ack(delivery)
        self.assert_empty(broker)

    def test_errors_are_lrt_errors(self) -> None:
        assert issubclass(PublishError, BrokerError)
        assert issubclass(PublishError, LrtError)
        assert issubclass(PayloadTooLarge, LrtError)
        assert issubclass(LeaseLost, BrokerError)
        err = PublishError({"a": "throttled"}, published=2)
        assert "a: throttled" in str(err)
        assert err.failed == {"a": "throttled"}

    # -- leases ----------------------------------------------------------------------------------

    def test_lease_expires_and_job_is_redelivered(self, lrt_broker_target: BrokerTarget) -> None:
        holder = self.fresh(lrt_broker_target)
        self._need_timed_lease(holder)
        # The receiver's own lease is long: a long poll may start well before the job
        # arrives, and its conservative deadline counts from the start of the request.
        other = self.make_broker(lrt_broker_target, self.long_lease_seconds)
        holder.publish([job("lease-1")])
        first = self.take(holder)
        held_at = time.monotonic()
        assert first.delivery_count == 1
        assert first.lease_deadline <= held_at + self.lease_seconds
        self.assert_empty(other, wait=min(0.5, self.lease_seconds / 4))
        second = self.take(other, wait=self.lease_seconds + self.receive_wait)
        waited = time.monotonic() - held_at
        assert second.body == first.body
        assert second.delivery_count == 2
        assert waited >= self.lease_seconds * 0.75, f"redelivered after {waited:.2f}s"
        other.ack(second)
        depth_becomes(other, (0, 0, 0), self.settle_seconds)

    def test_killed_holder_process_job_is_redelivered(
        self, lrt_broker_target: BrokerTarget
    ) -> None:
        kill_lease = self.kill_lease_seconds or self.lease_seconds * 2
        broker = self.fresh(lrt_broker_target, self.long_lease_seconds)
        broker.publish([job("killed-1", steps=5)])
        holder = ChildProcess(
            ["hold", "--wait", str(self.startup_timeout)],
            self.child_env(lrt_broker_target, kill_lease),
        )
        with children(holder):
            line = holder.expect("HOLDING", self.startup_timeout)
            assert line.split()[1:] == ["killed-1", "1"], line
            self.assert_empty(broker, wait=0.2)
            holder.kill()
            killed_at = time.monotonic()
            bound = (kill_lease if broker.timed_lease else 0) + self.receive_wait + 5
            again = self.take(broker, wait=bound)
        assert job_id_of(again) == "killed-1"
        assert again.delivery_count == 2
        assert time.monotonic() - killed_at < bound
        broker.ack(again)

    def test_extend_keeps_job_invisible(self, lrt_broker_target: BrokerTarget) -> None:
        lease = self.lease_seconds
        holder = self.fresh(lrt_broker_target)
        other = self.make_broker(lrt_broker_target)
        holder.publish([job("extend-1")])
        delivery = self.take(holder)
        held_at = time.monotonic()
        time.sleep(lease * 0.4)
        holder.extend(delivery, lease * 2)
        if holder.timed_lease:
            assert delivery.lease_deadline > held_at + lease
        # Past the original lease, the job must still be held.
        time.sleep(max(0.0, held_at + lease * 1.3 - time.monotonic()))
        self.assert_empty(other, wait=0.1)
        holder.extend(delivery, lease * 2)
        holder.ack(delivery)
        self.assert_empty(other, wait=0.2)
        depth_becomes(other, (0, 0, 0), self.settle_seconds)

    def test_lease_lost_after_job_was_given_away(self, lrt_broker_target: BrokerTarget) -> None:
        holder = self.fresh(lrt_broker_target)
        self._need_timed_lease(holder)
        other = self.make_broker(lrt_broker_target, self.long_lease_seconds)
        holder.publish([job("lost-1")])
        stale = self.take(holder)
        current = self.take(other, wait=self.lease_seconds + self.receive_wait)
        assert current.delivery_count == 2
        with pytest.raises(LeaseLost):
            holder.extend(stale, self.lease_seconds)
        with pytest.raises(LeaseLost):
            holder.ack(stale)
        with pytest.raises(LeaseLost):
            holder.release(stale)
        with pytest.raises(LeaseLost):
            holder.dead_letter(stale, "must not happen")
        # The stale holder changed nothing: the current one still holds and acks the job.
        other.extend(current, self.long_lease_seconds)
        other.ack(current)
        self.assert_empty(other)
        depth_becomes(other, (0, 0, 0), self.settle_seconds)

    def test_lease_lost_after_holder_connection_closed(
        self, lrt_broker_target: BrokerTarget
    ) -> None:
        holder = self.fresh(lrt_broker_target)
        if holder.timed_lease:
            pytest.skip(f"{type(holder).__name__} leases are timers, covered by lease expiry")
        other = self.make_broker(lrt_broker_target)
        holder.publish([job("closed-1")])
        stale = self.take(holder)
        holder.close()
        current = self.take(other, wait=self.receive_wait + 5)
        assert current.delivery_count == 2
        with pytest.raises(LeaseLost):
            holder.extend(stale, self.lease_seconds)
        with pytest.raises(LeaseLost):
            holder.ack(stale)
        other.ack(current)

    # -- release, delivery counts ------------------------------------------------------------------

    def test_release_makes_job_available_at_once(self, lrt_broker_target: BrokerTarget) -> None:
        lease = self.long_lease_seconds
        holder = self.fresh(lrt_broker_target, lease)
        other = self.make_broker(lrt_broker_target, lease)
        holder.publish([job("release-1")])
        delivery = self.take(holder)
        released_at = time.monotonic()
        holder.release(delivery)
        again = self.take(other, wait=min(lease / 4, self.receive_wait))
        assert time.monotonic() - released_at < lease / 2  # long before the lease would end
        assert again.body == delivery.body
        assert again.delivery_count == 2
        other.ack(again)

    def test_release_with_delay(self, lrt_broker_target: BrokerTarget) -> None:
        lease, delay = self.long_lease_seconds, self.release_delay
        holder = self.fresh(lrt_broker_target, lease)
        other = self.make_broker(lrt_broker_target, lease)
        holder.publish([job("delay-1")])
        delivery = self.take(holder)
        released_at = time.monotonic()
        holder.release(delivery, delay=delay)
        self.assert_empty(other, wait=delay / 2)
        again = self.take(other, wait=delay + self.receive_wait)
        waited = time.monotonic() - released_at
        assert waited >= delay * 0.75, f"available {waited:.2f}s after a {delay}s delay"
        assert waited < lease / 2
        assert again.delivery_count == 2
        other.ack(again)

    def test_delivery_counts(self, lrt_broker_target: BrokerTarget) -> None:
        broker = self.fresh(lrt_broker_target, self.long_lease_seconds)
        broker.publish([job("count-1")])
        for expected in (1, 2, 3):
            delivery = self.take(broker)
            assert delivery.delivery_count == expected
            if expected < 3:
                broker.release(delivery)
        broker.ack(delivery)
        self.assert_empty(broker)

    # -- dead letters ------------------------------------------------------------------------------

    def test_dead_letter_keeps_body_and_reason(self, lrt_broker_target: BrokerTarget) -> None:
        broker = self.fresh(lrt_broker_target, self.long_lease_seconds)
        good = job("dl-1", steps=7)
        bad = Message("dl-2", b"not json at all")
        broker.publish([good, bad])
        reasons = {good.body: "failed 3 times: ValueError: boom", bad.body: "invalid body"}
        for _ in range(2):
            delivery = self.take(broker)
            broker.dead_letter(delivery, reasons[delivery.body])
        self.assert_empty(broker)
        letters: list[DeadLetter] = []

        def listed() -> bool:
            letters[:] = broker.dead_letters()
            return len(letters) == 2

        eventually(listed, self.settle_seconds)
        by_body = {d.body: d for d in letters}
        assert set(by_body) == {good.body, bad.body}
        assert by_body[good.body].job_id == "dl-1"
        assert by_body[good.body].reason == reasons[good.body]
        assert by_body[good.body].deliveries >= 1
        assert by_body[bad.body].job_id is None  # the body has none: listed as null
        assert by_body[bad.body].reason == reasons[bad.body]
        assert len(broker.dead_letters(limit=1)) == 1
        depth_becomes(broker, (0, 0, 2), self.settle_seconds)

    def test_redrive_by_id_and_all(self, lrt_broker_target: BrokerTarget) -> None:
        broker = self.fresh(lrt_broker_target, self.long_lease_seconds)
        ids = ["rd-a", "rd-b", "rd-c"]
        broker.publish([job(i) for i in ids])
        for _ in ids:
            broker.dead_letter(self.take(broker), "testing redrive")
        eventually(lambda: len(broker.dead_letters()) == 3, self.settle_seconds)

        assert broker.redrive(["rd-b", "rd-unknown"]) == 1
        again = self.take(broker)
        assert job_id_of(again) == "rd-b"
        assert again.delivery_count == 1  # a redriven job starts counting afresh
        broker.ack(again)
        eventually(
            lambda: sorted(str(d.job_id) for d in broker.dead_letters()) == ["rd-a", "rd-c"],
            self.settle_seconds,
        )

        assert broker.redrive() == 2
        rest = [self.take(broker) for _ in range(2)]
        assert sorted(job_id_of(d) for d in rest) == ["rd-a", "rd-c"]
        assert all(d.delivery_count == 1 for d in rest)
        for delivery in rest:
            broker.ack(delivery)
        assert broker.redrive() == 0
        depth_becomes(broker, (0, 0, 0), self.settle_seconds)

    # -- depth -------------------------------------------------------------------------------------

    def test_depth_counts_waiting_in_flight_and_dead(self, lrt_broker_target: BrokerTarget) -> None:
        broker = self.fresh(lrt_broker_target, self.long_lease_seconds)
        broker.publish([job(f"depth-{i}") for i in range(3)])
        depth_becomes(broker, (3, 0, 0), self.settle_seconds)
        first = self.take(broker)
        depth_becomes(broker, (2, 1, 0), self.settle_seconds)
        broker.dead_letter(first, "testing depth")
        depth_becomes(broker, (2, 0, 1), self.settle_seconds)
        second = self.take(broker)
        broker.release(second)
        depth_becomes(broker, (2, 0, 1), self.settle_seconds)
        for _ in range(2):
            broker.ack(self.take(broker))
        depth_becomes(broker, (0, 0, 1), self.settle_seconds)

    # -- concurrency -------------------------------------------------------------------------------

    def _race_threads(self, brokers: list[Broker], jobs: int, extend: bool) -> None:
        ids = [f"race-{i}" for i in range(jobs)]
        brokers[0].publish([job(i) for i in ids])
        lock = threading.Lock()
        held: set[str] = set()
        acked: Counter[str] = Counter()
        problems: list[str] = []
        start = threading.Barrier(len(brokers))
        deadline = time.monotonic() + 60 + jobs

        def work(broker: Broker) -> None:
            try:
                start.wait(30)
                while time.monotonic() < deadline:
                    with lock:
                        if sum(acked.values()) >= jobs or problems:
                            return
                    delivery = broker.receive(0.5)
                    if delivery is None:
                        continue
                    job_id = job_id_of(delivery)
                    with lock:
                        if job_id in held:
                            problems.append(f"{job_id} given to two holders at once")
                        held.add(job_id)
                    time.sleep(0.005)
                    if extend:
                        broker.extend(delivery, self.long_lease_seconds)
                    broker.ack(delivery)
                    with lock:
                        held.discard(job_id)
                        acked[job_id] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                with lock:
                    problems.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=work, args=(b,), daemon=True) for b in brokers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(deadline - time.monotonic() + 30)
        assert not problems, problems
        assert not any(t.is_alive() for t in threads), "a thread is stuck"
        twice = sorted(i for i, n in acked.items() if n > 1)
        assert not twice, f"acked more than once: {twice}"
        missing = sorted(set(ids) - set(acked))
        assert not missing, f"never delivered: {missing}"
        self.assert_empty(brokers[0])

    def test_no_job_held_twice_across_threads(self, lrt_broker_target: BrokerTarget) -> None:
        brokers = [self.fresh(lrt_broker_target, self.long_lease_seconds)]
        brokers += [self.make_broker(lrt_broker_target, self.long_lease_seconds) for _ in range(7)]
        self._race_threads(brokers, self.concurrent_jobs, extend=False)

    def test_one_broker_shared_by_threads(self, lrt_broker_target: BrokerTarget) -> None:
        broker = self.fresh(lrt_broker_target, self.long_lease_seconds)
        self._race_threads([broker] * 8, self.concurrent_jobs, extend=True)

    def test_no_job_held_twice_across_processes(self, lrt_broker_target: BrokerTarget) -> None:
        broker = self.fresh(lrt_broker_target, self.long_lease_seconds)
        ids = [f"proc-{i}" for i in range(self.concurrent_jobs)]
        broker.publish([job(i) for i in ids])
        env = self.child_env(lrt_broker_target, self.long_lease_seconds)
        procs = [ChildProcess(["drain"], env) for _ in range(4)]
        received: Counter[str] = Counter()
        acked: Counter[str] = Counter()
        per_process: list[int] = []
        with children(*procs):
            for proc in procs:
                proc.expect("READY", self.startup_timeout)
            for proc in procs:
                proc.send("GO")
            deadline = time.monotonic() + 60 + len(ids)
            while sum(acked.values()) < len(ids) and time.monotonic() < deadline:
                for proc in procs:
                    with contextlib.suppress(queue.Empty):
                        while True:
                            line = proc.lines.get(timeout=0.05)
                            if line is None:
                                pytest.fail(f"helper process exited early{proc._err()}")
                            kind, job_id = [*line.split(), ""][:2]
                            if kind == "RECV":
                                received[job_id] += 1
                            elif kind == "ACK":
                                acked[job_id] += 1
                            elif kind == "ERROR":
                                pytest.fail(f"helper process failed: {line}{proc._err()}")
            for proc in procs:
                proc.close_stdin()
            for proc in procs:
                line = proc.expect("DONE", 30)
                per_process.append(int(line.split()[1]))
        twice = sorted(i for i, n in received.items() if n > 1)
        assert not twice, f"received by two holders: {twice}"
        assert all(n == 1 for n in acked.values()), acked
        missing = sorted(set(ids) - set(acked))
        assert not missing, f"never acked: {missing}"
        assert sum(per_process) == len(ids)
        self.assert_empty(broker)
        depth_becomes(broker, (0, 0, 0), self.settle_seconds)


# -- helper processes -------------------------------------------------------------------------


def _hold(wait: float) -> int:
    """Receive one job, say so, then hold it until killed."""
    from lrtkit.config import load_settings
    from lrtkit.plugins import load_broker

    broker = load_broker(load_settings())
    delivery = broker.receive(wait)
    if delivery is None:
        print("EMPTY", flush=True)
        return 1
    print(f"HOLDING {job_id_of(delivery)} {delivery.delivery_count}", flush=True)
    while True:
        time.sleep(3600)


def _drain() -> int:
    """Race for jobs after ``GO`` on stdin; ack each; stop when stdin closes."""
    from lrtkit.config import load_settings
    from lrtkit.plugins import load_broker

    broker = load_broker(load_settings())
    stop = threading.Event()
    go = threading.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "GO":
                go.set()
        go.set()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    broker.depth()  # connected and ready
    print("READY", flush=True)
    go.wait()
    done = 0
    try:
        while not stop.is_set():
            delivery = broker.receive(0.5)
            if delivery is None:
                continue
            job_id = job_id_of(delivery)
            print(f"RECV {job_id} {delivery.delivery_count}", flush=True)
            time.sleep(0.005)
            broker.ack(delivery)
            done += 1
            print(f"ACK {job_id}", flush=True)
    except LrtError as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        return 1
    finally:
        broker.close()
    print(f"DONE {done}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lrtkit.testing.broker_contract")
    sub = parser.add_subparsers(dest="command", required=True)
    hold = sub.add_parser("hold", help="receive one job and hold it until killed")
    hold.add_argument("--wait", type=float, default=30.0)
    sub.add_parser("drain", help="race for jobs after GO on stdin until stdin closes")
    args = parser.parse_args(argv)
    if args.command == "hold":
        return _hold(args.wait)
    return _drain()


__all__ = [
    "BrokerContract",
    "ChildProcess",
    "depth_becomes",
    "eventually",
    "job",
    "job_id_of",
]

if __name__ == "__main__":
    sys.exit(main())
