"""The worker contract: what ``lrtkit run`` must do on every broker, with real processes.

A broker plugin runs it the same way as the broker contract: provide ``lrt_broker_target``
and subclass::

    from lrtkit.testing.worker_contract import WorkerContract

    class TestMyBrokerWorker(WorkerContract):
        pass

Every test starts real worker processes (``python -m lrtkit run ...``) against the target's
queue and a file storage in a temporary folder, kills them with real signals (SIGKILL, SIGTERM)
and checks the job records, results, dead letters and the handlers' step traces
(:mod:`lrtkit.testing.handlers`). Nothing here assumes a particular broker; tests about a lease
that runs out while its holder is alive run only where ``Broker.timed_lease`` is true. Every
process a test starts is killed at teardown, pass or fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from lrtkit.broker import Broker, DeadLetter, Message
from lrtkit.config import load_settings
from lrtkit.jobs import JobRecord, JobState, encode_body
from lrtkit.plugins import load_storage
from lrtkit.records import JobStore
from lrtkit.storage.file import LOCK_DIR
from lrtkit.testing.broker_contract import eventually
from lrtkit.testing.handlers import TRACE_DIR_ENV, TraceRow, read_trace
from lrtkit.testing.target import BrokerTarget

T = TypeVar("T")

HANDLERS = "lrtkit.testing.handlers"


def expected_sum(steps: int) -> int:
    return steps * (steps + 1) // 2


def redone(rows: list[TraceRow]) -> int:
    """How many step executions repeated a step already done."""
    return sum(count - 1 for count in Counter(r.step for r in rows).values())


class WorkerHarness:
    """Starts worker processes on one target and looks at what they did."""

    def __init__(self, target: BrokerTarget, folder: Path, lease_seconds: float) -> None:
        self.target = target
        self.folder = folder
        self.lease_seconds = lease_seconds
        self.trace_dir = folder / "traces"
        self.trace_dir.mkdir()
        self.storage_url = f"file://{folder / 'store'}"
        self.store = JobStore(
            load_storage(load_settings(environ={"LRT_STORAGE": self.storage_url}))
        )
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._broker: Broker | None = None

    # -- the queue -----------------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """An in-process client of the target queue (for publishing and inspection)."""
        if self._broker is None:
            self._broker = self.target.broker(lease_seconds=self.lease_seconds)
        return self._broker

    @staticmethod
    def new_id(prefix: str = "job") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def submit(self, job_id: str, **payload: Any) -> str:
        """Record the job ``queued``, then publish it (as ``lrtkit submit`` does)."""
        self.store.update(job_id, state=JobState.QUEUED)
        self.broker.publish([Message(job_id, encode_body(job_id, payload))])
        return job_id

    def publish_raw(self, body: bytes) -> str:
        """Publish a body as is (maybe malformed) under a unique label; return the label."""
        label = self.new_id("raw")
        self.broker.publish([Message(label, body)])
        return label

    def dead_letters(self) -> list[DeadLetter]:
        return self.broker.dead_letters()

    def dead_letters_when(self, count: int) -> list[DeadLetter] | None:
        """The dead letters once there are ``count`` of them, else None."""
        found = self.dead_letters()
        return found if len(found) == count else None

    def record(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        assert record is not None, f"job {job_id} has no record"
        return record

    def trace(self, job_id: str) -> list[TraceRow]:
        return read_trace(self.trace_dir, job_id)

    # -- workers -------------------------------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        extra = {
            "LRT_STORAGE": self.storage_url,
            "LRT_LEASE_SECONDS": str(self.lease_seconds),
            "LRT_GRACE_SECONDS": "5",
            "LRT_RETRY_BACKOFF_SECONDS": "0",
            "LRT_SALAD_IMDS_URL": "off",
            "LRT_LOG_LEVEL": "INFO",
            TRACE_DIR_ENV: str(self.trace_dir),
            "PYTHONUNBUFFERED": "1",
            **overrides,
        }
        return self.target.subprocess_env(extra)

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """Start ``python -m lrtkit run ARGS...``; its stderr goes to a log file."""
        log_path = self.folder / f"worker-{len(self.processes) + 1}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lrtkit", "run", *args],
                env=self.env(**env),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
            )
        self.processes.append((proc, log_path))
        return proc

    def start_handler(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        return self.start(f"{HANDLERS}:{name}", *args, **env)

    def start_command(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        command = f"{shlex.quote(sys.executable)} -m {HANDLERS}"
        return self.start("--command", command, *args, **env)

    def logs(self) -> str:
        parts = []
        for i, (_proc, path) in enumerate(self.processes, 1):
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- worker {i} ---\n{text[-4000:]}")
        return "\n".join(parts)

    def wait_exit(self, proc: subprocess.Popen[bytes], timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {proc.pid} did not exit within {timeout}s\n{self.logs()}")

    def eventually(
        self, check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
    ) -> T:
        """Poll ``check`` until truthy; fail naming ``what`` (with the workers' logs)."""
        return eventually(check, timeout, interval, what=what, details=self.logs)

    def steps_done(
        self, job_id: str, at_least: int, timeout: float, pid: int | None = None
    ) -> None:
        def check() -> bool:
            rows = self.trace(job_id)
            return len([r for r in rows if pid is None or r.pid == pid]) >= at_least

        self.eventually(check, timeout, f"{at_least} step(s) of {job_id}")

    def state_becomes(self, job_id: str, state: JobState, timeout: float) -> JobRecord:
        def check() -> JobRecord | None:
            record = self.store.get(job_id)
            return record if record is not None and record.state == state else None

        return self.eventually(check, timeout, f"{job_id} becomes {state.value}")

    def depth_becomes(self, expected: tuple[int, int, int], timeout: float = 15.0) -> None:
        self.eventually(
            lambda: tuple(self.broker.depth()) == expected,
            timeout,
            f"queue depth {expected} (now {tuple(self.broker.depth())})",
            interval=0.2,
        )

    def freeze(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGSTOP ``proc`` at a moment it holds no broker lock (a frozen node, not a jammed queue).

        A worker frozen inside a broker or storage call may hold a lock that other clients on
        this machine wait on (SQLite's write lock, the file storage's flock stripes); a real
        vanished node holds none. Then it is thawed for a moment and frozen again.
        """
        for _ in range(40):
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.05)
            probe: list[object] = []
            thread = threading.Thread(target=self._probe, args=(probe,))
            thread.start()
            thread.join(1.0)
            if probe:
                if probe[0] is not None:
                    self.broker.release(probe[0], 0)  # type: ignore[arg-type]
                if not self._storage_locked():
                    return
            proc.send_signal(signal.SIGCONT)
            thread.join()
            time.sleep(0.05)
        pytest.fail("could not freeze the worker outside a broker or storage call")

    def _storage_locked(self) -> bool:
        """True if some process holds one of the file storage's lock stripes."""
        lock_dir = Path(self.storage_url.removeprefix("file://")) / LOCK_DIR
        for path in lock_dir.glob("*.lock"):
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            finally:
                os.close(fd)  # closing releases the probe's own lock
        return False

    def _probe(self, out: list[object]) -> None:
        out.append(self.broker.receive(0))

    def close(self) -> None:
        for proc, _path in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def child_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A zombie still answers kill(0); check its state.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return status == "Z"
    return False


class WorkerContract:
    """What ``lrtkit run`` guarantees on a broker; subclass with a ``lrt_broker_target`` fixture."""

    lease_seconds: ClassVar[float] = 2.0  # short: kill tests wait for it to run out
    long_lease_seconds: ClassVar[float] = 30.0  # graceful tests prove they did not wait for it
    tick: ClassVar[float] = 0.2
    startup: ClassVar[float] = 30.0  # generous bound for a worker process to start and work

    @pytest.fixture
    def workers(self, lrt_broker_target: BrokerTarget, tmp_path: Path) -> Iterator[WorkerHarness]:
        harness = WorkerHarness(lrt_broker_target, tmp_path, self.lease_seconds)
        try:
            yield harness
        finally:
            harness.close()

    @pytest.fixture
    def slow_workers(
        self, lrt_broker_target: BrokerTarget, tmp_path: Path
    ) -> Iterator[WorkerHarness]:
        harness = WorkerHarness(lrt_broker_target, tmp_path, self.long_lease_seconds)
        try:
            yield harness
        finally:
            harness.close()

    def _timed_lease(self, harness: WorkerHarness) -> bool:
        return type(harness.broker).timed_lease

    # -- interruptions ---------------------------------------------------------------------------

    def test_sigkill_mid_job_resumes_from_checkpoint(self, workers: WorkerHarness) -> None:
        steps = 15
        job_id = workers.submit(workers.new_id(), steps=steps, tick=self.tick)
        first = workers.start_handler("sum_job")
        workers.steps_done(job_id, 4, self.startup)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        done_before = len(workers.trace(job_id))

        second = workers.start_handler("sum_job", "--max-jobs", "1")
        assert workers.wait_exit(second, self.startup + steps * self.tick + 30) == 0, workers.logs()
        record = workers.record(job_id)
        assert record.state == JobState.SUCCEEDED, record
        assert record.result == {"sum": expected_sum(steps)}
        assert workers.store.get_result(job_id) == {"sum": expected_sum(steps)}
        assert record.failures == 0, "a SIGKILL is an interruption, not a failure"
        rows = workers.trace(job_id)
        assert sorted({r.step for r in rows}) == list(range(1, steps + 1))
        assert redone(rows) <= 1, rows
        resumed = [r for r in rows if r.pid != first.pid]
        assert resumed[0].step >= done_before, f"the second worker started over: {rows}"
        workers.depth_becomes((0, 0, 0))

    def test_sigterm_saves_releases_and_exits_within_grace(
        self, slow_workers: WorkerHarness
    ) -> None:
        harness = slow_workers
        steps = 15
        grace = 5.0
        job_id = harness.submit(harness.new_id(), steps=steps, tick=self.tick)
        first = harness.start_handler("sum_job", LRT_GRACE_SECONDS=str(grace))
        harness.steps_done(job_id, 3, self.startup)
        first.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert harness.wait_exit(first, grace + 10) == 0, harness.logs()
        assert harness.record(job_id).state == JobState.QUEUED

        second = harness.start_handler("sum_job", "--max-jobs", "1")
        harness.steps_done(job_id, 1, self.startup, pid=second.pid)
        picked_up = time.monotonic() - signalled
        assert picked_up < self.long_lease_seconds - 5, (
            f"the job came back after {picked_up:.1f}s: it waited for the "
            f"{self.long_lease_seconds}s lease instead of being released\n{harness.logs()}"
        )
        assert harness.wait_exit(second, self.startup + steps * self.tick + 30) == 0, harness.logs()
        record = harness.record(job_id)
        assert record.state == JobState.SUCCEEDED
        assert record.result == {"sum": expected_sum(steps)}
        assert record.failures == 0
        rows = harness.trace(job_id)
        assert redone(rows) == 0, f"a step was redone after a graceful stop: {rows}"
        assert sorted(r.step for r in rows) == list(range(1, steps + 1))

    def test_handlers_ignoring_stop_are_released_after_grace(
        self, slow_workers: WorkerHarness
    ) -> None:
        harness = slow_workers
        ids = [harness.submit(harness.new_id(), steps=1000, tick=self.tick) for _ in range(2)]
        proc = harness.start_handler("ignores_stop", "--concurrency", "2", LRT_GRACE_SECONDS="1")
        for job_id in ids:
            harness.steps_done(job_id, 2, self.startup)
        proc.send_signal(signal.SIGTERM)
        assert harness.wait_exit(proc, 15) == 0, harness.logs()
        for job_id in ids:
            assert harness.record(job_id).state == JobState.QUEUED
        # Released at once: both can be received long before the 30 s lease would end.
        received = []
        for _ in ids:
            delivery = harness.broker.receive(wait=10)
            assert delivery is not None, f"a job was not released\n{harness.logs()}"
            received.append(json.loads(delivery.body)["job_id"])
            harness.broker.ack(delivery)
        assert sorted(received) == sorted(ids)

    def test_second_signal_exits_at_once(self, slow_workers: WorkerHarness) -> None:
        harness = slow_workers
        job_id = harness.submit(harness.new_id(), steps=1000, tick=self.tick)
        proc = harness.start_handler("ignores_stop", LRT_GRACE_SECONDS="60")
        harness.steps_done(job_id, 1, self.startup)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        code = harness.wait_exit(proc, 10)
        assert code == 128 + signal.SIGTERM, harness.logs()

    def test_five_sigkills_are_not_failures(self, workers: WorkerHarness) -> None:
        steps = 20
        job_id = workers.submit(workers.new_id(), steps=steps, tick=self.tick)
        for _ in range(5):
            proc = workers.start_handler("sum_job", LRT_MAX_FAILURES="3")
            workers.steps_done(job_id, 1, self.startup + self.lease_seconds * 3, pid=proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        last = workers.start_handler("sum_job", "--max-jobs", "1", LRT_MAX_FAILURES="3")
        assert workers.wait_exit(last, self.startup + steps * self.tick + 60) == 0, workers.logs()
        record = workers.record(job_id)
        assert record.state == JobState.SUCCEEDED, record
        assert record.result == {"sum": expected_sum(steps)}
        assert record.failures == 0
        assert record.attempts >= 6
        assert not workers.dead_letters()
        assert redone(workers.trace(job_id)) <= 5

    @pytest.mark.parametrize("kind", ["sum_job", "folder_job", "command"])
    def test_stale_worker_writes_nothing_after_losing_its_lease(
        self, workers: WorkerHarness, kind: str
    ) -> None:
        if not self._timed_lease(workers):
            pytest.skip("the lease is the connection on this broker: a live holder keeps it")

        def start(*args: str) -> subprocess.Popen[bytes]:
            if kind == "command":
                return workers.start_command("--checkpoint-interval", "0.3", *args)
            return workers.start_handler(kind, *args)

        steps = 12
        job_id = workers.submit(workers.new_id(), steps=steps, tick=self.tick)
        stale = start()
        workers.steps_done(job_id, 3, self.startup)
        stale_child = workers.trace(job_id)[-1].pid
        workers.freeze(stale)  # frozen past its lease, like a partitioned node
        try:
            fresh = start("--max-jobs", "1")
            first_fresh = workers.eventually(
                lambda: next((r for r in workers.trace(job_id) if r.attempt > 1), None),
                self.startup + self.lease_seconds * 3,
                "the job resumed by another worker",
            )
        finally:
            stale.send_signal(signal.SIGCONT)
        assert workers.wait_exit(fresh, self.startup + steps * self.tick + 30) == 0, workers.logs()
        if kind == "command":
            # Lease loss stops the stale holder's command; it uploads nothing more.
            workers.eventually(lambda: child_gone(stale_child), 15, "the stale command ends")
        stale.send_signal(signal.SIGTERM)
        assert workers.wait_exit(stale, 15) == 0, workers.logs()
        record = workers.record(job_id)
        assert record.state == JobState.SUCCEEDED
        assert record.result == {"sum": expected_sum(steps)}
        assert record.failures == 0
        assert workers.store.get_result(job_id) == {"sum": expected_sum(steps)}
        if kind != "command":
            # The stale holder finished at most the step it was in when it woke up.
            stale_rows = [r for r in workers.trace(job_id) if r.attempt == 1]
            late = [r for r in stale_rows if r.at > first_fresh.at]
            assert len(late) <= 1, stale_rows

    # -- failures and bad jobs -----------------------------------------------------------------

    def test_handler_raising_every_time_is_dead_lettered(self, workers: WorkerHarness) -> None:
        job_id = workers.submit(workers.new_id(), steps=3)
        proc = workers.start_handler("always_fails", "--exit-when-idle", "3", LRT_MAX_FAILURES="3")
        assert workers.wait_exit(proc, self.startup + 30) == 0, workers.logs()
        dead = workers.eventually(workers.dead_letters, 15, "a dead letter")
        assert len(dead) == 1
        assert json.loads(dead[0].body) == {"job_id": job_id, "steps": 3}
        assert "ValueError: always fails" in dead[0].reason
        assert "handlers.py" in dead[0].reason
        assert "always_fails" in dead[0].reason
        record = workers.record(job_id)
        assert record.state == JobState.DEAD
        assert record.failures == 3
        assert record.attempts == 3
        assert "ValueError: always fails" in (record.error or "")

    def test_bad_messages_are_dead_lettered_at_once(self, workers: WorkerHarness) -> None:
        bodies = {
            "malformed": b'{"job_id": "oops", "steps": ',
            "missing": json.dumps({"job_id": workers.new_id("missing")}).encode(),
            "wrong_type": json.dumps({"job_id": workers.new_id("type"), "steps": "many"}).encode(),
            "traversal": json.dumps({"job_id": "../../etc/passwd", "steps": 3}).encode(),
        }
        for body in bodies.values():
            workers.publish_raw(body)
        good = workers.submit(workers.new_id(), steps=3, tick=0.05)
        proc = workers.start_handler("sum_job", "--exit-when-idle", "3")
        assert workers.wait_exit(proc, self.startup + 30) == 0, workers.logs()

        assert workers.record(good).state == JobState.SUCCEEDED, "the worker stopped serving"
        dead = workers.eventually(
            lambda: workers.dead_letters_when(len(bodies)), 15, "4 dead letters"
        )
        reasons = {d.body: d.reason for d in dead}
        assert set(reasons) == set(bodies.values())
        assert "not valid JSON" in reasons[bodies["malformed"]]
        assert "steps" in reasons[bodies["missing"]]
        assert "required" in reasons[bodies["missing"]].lower()
        assert "steps" in reasons[bodies["wrong_type"]]
        assert "integer" in reasons[bodies["wrong_type"]]
        assert "job_id" in reasons[bodies["traversal"]]
        assert "../../etc/passwd" in reasons[bodies["traversal"]]
        missing_id = json.loads(bodies["missing"])["job_id"]
        record = workers.record(missing_id)
        assert record.state == JobState.DEAD
        assert "steps" in (record.error or "")
        assert not (workers.folder / "etc").exists()
        assert not any(".." in key for key in workers.store.storage.list_keys("jobs/"))

    # -- cancellation and redelivery -----------------------------------------------------------

    def test_cancel_stops_a_running_job_within_a_heartbeat(self, workers: WorkerHarness) -> None:
        job_id = workers.submit(workers.new_id(), steps=1000, tick=self.tick)
        proc = workers.start_handler("sum_job", "--exit-when-idle", "2")
        workers.steps_done(job_id, 2, self.startup)
        workers.store.request_cancel(job_id)
        requested = time.time()
        heartbeat = self.lease_seconds / 3
        workers.state_becomes(job_id, JobState.CANCELLED, heartbeat + 15)
        assert workers.wait_exit(proc, 30) == 0, workers.logs()
        after = [r for r in workers.trace(job_id) if r.at > requested]
        # Within one heartbeat: the cancel is seen at the next beat, and the handler stops at
        # its next ctx.check(). 1 s of slack covers a slow renewal on a loaded machine.
        stopped_after = (after[-1].at - requested) if after else 0.0
        assert stopped_after <= heartbeat + self.tick + 1.0, (
            f"steps went on for {stopped_after:.2f}s after the cancel request "
            f"({len(after)} steps; heartbeat {heartbeat:.2f}s)"
        )
        assert not workers.dead_letters()
        workers.depth_becomes((0, 0, 0))

    def test_redelivered_succeeded_job_is_acked_without_running(
        self, workers: WorkerHarness
    ) -> None:
        job_id = workers.new_id()
        workers.store.update(job_id, state=JobState.SUCCEEDED, result={"sum": 6}, attempts=1)
        workers.broker.publish([Message(job_id, encode_body(job_id, {"steps": 3}))])
        cancelled = workers.new_id()
        workers.store.update(cancelled, state=JobState.CANCELLED)
        workers.broker.publish([Message(cancelled, encode_body(cancelled, {"steps": 3}))])
        proc = workers.start_handler("sum_job", "--exit-when-idle", "2")
        assert workers.wait_exit(proc, self.startup + 15) == 0, workers.logs()
        assert workers.trace(job_id) == []
        assert workers.trace(cancelled) == []
        record = workers.record(job_id)
        assert record.state == JobState.SUCCEEDED
        assert record.attempts == 1
        assert record.result == {"sum": 6}
        assert workers.record(cancelled).state == JobState.CANCELLED
        workers.depth_becomes((0, 0, 0))

    def test_concurrency_and_max_jobs(self, workers: WorkerHarness) -> None:
        ids = [workers.submit(workers.new_id(), steps=5, tick=self.tick) for _ in range(5)]
        proc = workers.start_handler("sum_job", "--concurrency", "3", "--max-jobs", "3")
        assert workers.wait_exit(proc, self.startup + 30) == 0, workers.logs()
        done = [i for i in ids if workers.record(i).state == JobState.SUCCEEDED]
        assert len(done) == 3
        spans = [(workers.trace(i)[0].at, workers.trace(i)[-1].at) for i in done]
        overlapping = sum(
            1 for a in spans for b in spans if a is not b and a[0] < b[1] and b[0] < a[1]
        )
        assert overlapping > 0, f"the three jobs ran one after another: {spans}"
        workers.depth_becomes((2, 0, 0))

    # -- command mode --------------------------------------------------------------------------

    def test_command_resumes_its_checkpoint_folder_after_sigkill(
        self, workers: WorkerHarness
    ) -> None:
        steps = 15
        job_id = workers.submit(workers.new_id(), steps=steps, tick=self.tick)
        first = workers.start_command("--checkpoint-interval", "0.3")
        workers.steps_done(job_id, 5, self.startup)
        child_pid = workers.trace(job_id)[-1].pid
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        workers.eventually(lambda: child_gone(child_pid), 10, "the command dies with its worker")
        done_before = max(r.step for r in workers.trace(job_id))

        second = workers.start_command("--checkpoint-interval", "0.3", "--max-jobs", "1")
        assert workers.wait_exit(second, self.startup + steps * self.tick + 30) == 0, workers.logs()
        record = workers.record(job_id)
        assert record.state == JobState.SUCCEEDED, record
        assert record.result == {"sum": expected_sum(steps)}
        rows = workers.trace(job_id)
        resumed = [r for r in rows if r.attempt == 2]
        assert resumed, rows
        assert resumed[0].step > 1, f"the command started over instead of resuming: {rows}"
        assert redone(rows) < done_before, rows
        assert sorted({r.step for r in rows}) == list(range(1, steps + 1))
        assert list(workers.store.storage.list_keys(f"jobs/{job_id}/artifacts/"))

    def test_command_gets_sigterm_and_resumes_elsewhere(self, slow_workers: WorkerHarness) -> None:
        harness = slow_workers
        steps = 15
        job_id = harness.submit(harness.new_id(), steps=steps, tick=self.tick)
        first = harness.start_command(LRT_GRACE_SECONDS="5")
        harness.steps_done(job_id, 3, self.startup)
        child_pid = harness.trace(job_id)[-1].pid
        first.send_signal(signal.SIGTERM)
        assert harness.wait_exit(first, 15) == 0, harness.logs()
        assert child_gone(child_pid), "the command outlived its worker"
        record = harness.record(job_id)
        assert record.state == JobState.QUEUED
        assert record.failures == 0, "exit 75 after SIGTERM is an interruption"

        second = harness.start_command("--max-jobs", "1")
        assert harness.wait_exit(second, self.startup + steps * self.tick + 30) == 0, harness.logs()
        record = harness.record(job_id)
        assert record.state == JobState.SUCCEEDED
        assert record.result == {"sum": expected_sum(steps)}
        rows = harness.trace(job_id)
        assert redone(rows) == 0, f"the folder saved at exit was not the newest: {rows}"
        assert sorted(r.step for r in rows) == list(range(1, steps + 1))

    def test_command_exit_codes(self, workers: WorkerHarness) -> None:
        bad = workers.submit(workers.new_id("bad"), exit_code=65)
        later = workers.submit(workers.new_id("later"), steps=3, tick=0.05, tempfail_attempts=1)
        broken = workers.submit(workers.new_id("broken"), exit_code=3)
        proc = workers.start_command(
            "--concurrency", "3", "--exit-when-idle", "3", LRT_MAX_FAILURES="2"
        )
        assert workers.wait_exit(proc, self.startup + 30) == 0, workers.logs()

        record = workers.record(bad)
        assert record.state == JobState.DEAD, record
        assert record.failures == 0
        assert record.attempts == 1
        record = workers.record(later)
        assert record.state == JobState.SUCCEEDED, record
        assert record.failures == 0, "exit 75 is an interruption, not a failure"
        assert record.result == {"sum": 6}
        record = workers.record(broken)
        assert record.state == JobState.DEAD, record
        assert record.failures == 2
        reasons = {json.loads(d.body)["job_id"]: d.reason for d in workers.dead_letters()}
        assert set(reasons) == {bad, broken}
        assert "65" in reasons[bad]
        assert "exited with code 3" in reasons[broken]
        assert "exiting with 3 as asked" in reasons[broken], (
            "the reason quotes the command's stderr"
        )
