"""Unit-level tests of the worker's pieces, on the real local broker and file storage."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from lrtkit.broker import Delivery, Message
from lrtkit.brokers.local import LocalBroker
from lrtkit.checkpoint import Checkpoint
from lrtkit.cli import cli
from lrtkit.config import Settings, load_settings
from lrtkit.errors import ConfigError, ConnectionLost, LeaseLost, Stop, StorageError
from lrtkit.jobs import JobState, Progress, encode_body
from lrtkit.records import JobStore
from lrtkit.storage.file import FileStorage
from lrtkit.testing.handlers import SumJob
from lrtkit.worker import load_handler, run_worker
from lrtkit.worker.attempt import Attempt
from lrtkit.worker.context import CANCELLED, LEASE_LOST, SHUTDOWN, JobContext
from lrtkit.worker.endings import retry_delay
from lrtkit.worker.lease import LeaseKeeper
from lrtkit.worker.logs import JsonFormatter, TextFormatter, event, job_logger
from lrtkit.worker.outcome import Outcome, summarize
from lrtkit.worker.process import JobProcessor
from lrtkit.worker.retry import backoff, retrying
from lrtkit.worker.task import PythonTask

# -- load_handler ----------------------------------------------------------------------------------


def write_module(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory is tmp_path and sys.path is restored after the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        "sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))]
    )
    return tmp_path


def test_load_handler_finds_the_payload_model() -> None:
    fn, model = load_handler("lrtkit.testing.handlers:sum_job")
    assert model is SumJob
    assert fn.__name__ == "sum_job"


def test_load_handler_dict_means_no_model() -> None:
    _fn, model = load_handler("lrtkit.testing.handlers:always_fails")
    assert model is None


def test_load_handler_imports_from_the_current_directory(in_tmp: Path) -> None:
    name = f"app_{time.time_ns()}"
    write_module(
        in_tmp,
        name,
        """
        from __future__ import annotations
        from pydantic import BaseModel

        class Job(BaseModel):
            n: int

        def train(job: Job, ctx):
            return job.n

        def bare(job):
            return job
        """,
    )
    fn, model = load_handler(f"{name}:train")
    assert model is not None
    assert model.__name__ == "Job"  # resolved from a string annotation
    assert fn(model(n=3), None) == 3
    _bare, none = load_handler(f"{name}:bare")
    assert none is None


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("no_colon", "MODULE:FUNCTION"),
        ("lrtkit_no_such_module_xyz:fn", "no module named"),
        ("lrtkit.testing.handlers:no_such_fn", "no attribute"),
        ("lrtkit.testing.handlers:TRACE_DIR_ENV", "not a function"),
    ],
)
def test_load_handler_errors_name_the_spec(spec: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_handler(spec)
    assert spec in str(info.value)
    assert says in str(info.value)


def test_load_handler_reports_import_errors_and_bad_annotations(in_tmp: Path) -> None:
    broken = f"broken_{time.time_ns()}"
    write_module(in_tmp, broken, "import lrtkit_missing_dependency_xyz\n")
    with pytest.raises(ConfigError, match="lrtkit_missing_dependency_xyz"):
        load_handler(f"{broken}:fn")
    odd = f"odd_{time.time_ns()}"
    write_module(in_tmp, odd, "def fn(job: int, ctx): ...\ndef many(a, b, c): ...\n")
    with pytest.raises(ConfigError, match="BaseModel"):
        load_handler(f"{odd}:fn")
    with pytest.raises(ConfigError, match="3 arguments"):
        load_handler(f"{odd}:many")
    quits = f"quits_{time.time_ns()}"
    write_module(in_tmp, quits, "import sys\nsys.exit(3)\n")
    with pytest.raises(ConfigError, match="SystemExit"):
        load_handler(f"{quits}:fn")  # a clear error (exit 2), not the module's own exit code


# -- JobContext, outcomes, logging -----------------------------------------------------------------


def make_ctx(tmp_path: Path) -> JobContext:
    storage = FileStorage(tmp_path / "store")
    return JobContext(
        "job-1", 2, Checkpoint(storage, "job-1", owner="me"), tmp_path, job_logger("job-1", 2)
    )


def test_context_check_raises_stop_with_the_strongest_reason(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ctx.check()  # nothing yet
    assert ctx.request_stop(SHUTDOWN)
    with pytest.raises(Stop) as info:
        ctx.check()
    assert info.value.reason == SHUTDOWN
    assert ctx.request_stop(CANCELLED)
    assert not ctx.request_stop(SHUTDOWN), "a shutdown does not undo a cancel"
    assert ctx.request_stop(LEASE_LOST)
    assert not ctx.request_stop(CANCELLED)
    assert ctx.stop_reason == LEASE_LOST


def test_progress_is_kept_until_taken_once(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    assert ctx.take_progress() is None
    for i in range(100):
        ctx.progress(i, 100, loss=1 / (i + 1))
    taken = ctx.take_progress()
    assert taken == Progress(done=99, total=100, metrics={"loss": 0.01})
    assert ctx.take_progress() is None


def test_summarize_names_type_message_and_last_frame() -> None:
    def explode() -> None:
        raise KeyError("weights.bin")

    try:
        explode()
    except KeyError as exc:
        text = summarize(exc)
    assert text.startswith("KeyError: 'weights.bin' (at test_worker_units.py:")
    assert text.endswith("in explode)")


def test_retry_delay_doubles_and_is_capped() -> None:
    settings = load_settings(environ={"LRT_RETRY_BACKOFF_SECONDS": "5"})
    assert [retry_delay(settings, n) for n in (1, 2, 3)] == [5, 10, 20]
    assert retry_delay(settings, 40) == 3600


def log_record(name: str, **fields: Any) -> logging.LogRecord:
    captured: list[logging.LogRecord] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    logger = logging.getLogger("lrtkit.worker.test")
    handler = Grab()
    logger.addHandler(handler)
    try:
        event(logger, logging.WARNING, name, **fields)
    finally:
        logger.removeHandler(handler)
    return captured[0]


def test_text_and_json_log_lines() -> None:
    record = log_record("job.failed", job_id="j-1", attempt=2, error="boom here")
    text = TextFormatter().format(record)
    assert 'WARNING job.failed job_id=j-1 attempt=2 error="boom here"' in text
    assert text[:4].isdigit()
    assert text[10] == "T"
    data = json.loads(JsonFormatter().format(record))
    assert data["event"] == "job.failed"
    assert data["level"] == "WARNING"
    assert data["job_id"] == "j-1"
    assert data["attempt"] == 2
    assert data["ts"].endswith("Z")


# -- retrying --------------------------------------------------------------------------------------


def test_retrying_rides_out_connection_trouble_but_not_other_errors() -> None:
    calls: list[int] = []
    pauses: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionLost("reset by peer")
        return "ok"

    assert retrying("flaky", flaky, sleep=pauses.append) == "ok"
    assert len(calls) == 3
    assert len(pauses) == 2
    assert pauses[1] > pauses[0] * 1.2

    def denied() -> None:
        raise ConfigError("access denied")

    with pytest.raises(ConfigError):
        retrying("denied", denied, sleep=pauses.append)
    with pytest.raises(StorageError):
        retrying(
            "gone", lambda: (_ for _ in ()).throw(StorageError("x")), keep_trying=lambda: False
        )
    assert backoff(50) <= 30.0


# -- lease keeper, on the real local broker ----------------------------------------------------


class CappedBroker(LocalBroker):
    """The local broker with a lease cap, to drive the rollover path (as SQS's 12 h cap)."""

    max_lease_seconds: ClassVar[float | None] = 1.5
    rollovers: int = 0

    def rollover(self, delivery: Delivery) -> None:
        self.rollovers += 1
        self.extend(delivery, self.lease_seconds)


def test_lease_keeper_loses_an_expired_lease_and_fences_the_checkpoint(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "q.db", "q", lease_seconds=0.3)
    broker.ensure()
    broker.publish([Message("j", encode_body("j", {}))])
    delivery = broker.receive(1)
    assert delivery is not None
    attempt = Attempt(delivery, job_logger("j", 1))
    storage = FileStorage(tmp_path / "store")
    checkpoint = Checkpoint(storage, "j", owner=attempt.owner)
    checkpoint.claim()
    ctx = JobContext("j", 1, checkpoint, tmp_path, attempt.log)
    attempt.attach(ctx, checkpoint)
    time.sleep(0.4)
    LeaseKeeper(broker, attempt, 0.3).beat()
    assert attempt.lost.is_set()
    assert ctx.stop_reason == LEASE_LOST
    with pytest.raises(LeaseLost):
        checkpoint.save({"step": 1})
    broker.close()


def test_lease_keeper_writes_progress_once_per_beat_and_sees_cancel(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "q.db", "q", lease_seconds=3)
    broker.ensure()
    broker.publish([Message("j", encode_body("j", {}))])
    delivery = broker.receive(1)
    assert delivery is not None
    storage = FileStorage(tmp_path / "store")
    store = JobStore(storage)
    attempt = Attempt(delivery, job_logger("j", 1))
    attempt.job_id, attempt.store = "j", store
    ctx = JobContext("j", 1, Checkpoint(storage, "j", owner=attempt.owner), tmp_path, attempt.log)
    attempt.attach(ctx, ctx.checkpoint)
    keeper = LeaseKeeper(broker, attempt, 3)
    before = store.get("j")
    assert before is None
    for i in range(50):
        ctx.progress(i, 50)
    keeper.beat()
    record = store.get("j")
    assert record is not None
    assert record.progress == Progress(done=49, total=50)
    stamp = record.updated_at
    keeper.beat()  # nothing new: no write
    again = store.get("j")
    assert again is not None
    assert again.updated_at == stamp
    store.request_cancel("j")
    keeper.beat()
    assert ctx.stop_reason == CANCELLED
    broker.ack(delivery)
    broker.close()


def settings_for(tmp_path: Path, **env: str) -> Settings:
    return load_settings(
        environ={
            "LRT_STORAGE": f"file://{tmp_path / 'store'}",
            "LRT_LOCAL_DB": str(tmp_path / "q.db"),
            "LRT_QUEUE": "q",
            "LRT_SALAD_IMDS_URL": "off",
            "LRT_RETRY_BACKOFF_SECONDS": "0",
            **env,
        }
    )


def test_rollover_vouches_in_the_record_and_other_workers_hand_the_job_back(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, LRT_LEASE_SECONDS="0.6")
    broker = CappedBroker(tmp_path / "q.db", "q", lease_seconds=0.6)
    broker.ensure()
    storage = FileStorage(tmp_path / "store")
    store = JobStore(storage)
    # The same job twice in the queue, as a broker's rollover copy would leave it.
    broker.publish([Message("j", encode_body("j", {})), Message("j", encode_body("j", {}))])
    first = broker.receive(1)
    assert first is not None
    holder = Attempt(first, job_logger("j", 1))
    holder.job_id, holder.store = "j", store
    keeper = LeaseKeeper(broker, holder, 0.6)
    deadline = time.monotonic() + 5
    while broker.rollovers == 0 and time.monotonic() < deadline:
        keeper.beat()
        time.sleep(0.2)
    assert broker.rollovers >= 1
    record = store.get("j")
    assert record is not None
    assert record.holder == holder.owner
    assert record.held_until is not None

    second = broker.receive(1)
    assert second is not None
    processor = JobProcessor(
        broker, storage, store, settings, PythonTask("lrtkit.testing.handlers:always_fails")
    )
    other = Attempt(second, job_logger(None, 1))
    outcome = processor.handle(other, LeaseKeeper(broker, other, 0.6))
    assert outcome is Outcome.HANDED_BACK
    after = store.get("j")
    assert after is not None
    assert after.failures == 0, "a handed-back job never ran"
    assert after.attempts == 0
    broker.close()


# -- run_worker in process and the CLI -------------------------------------------------------------


def test_run_worker_in_process_serves_and_exits_when_idle(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, LRT_LEASE_SECONDS="3")
    broker = LocalBroker(tmp_path / "q.db", "q", lease_seconds=3)
    broker.ensure()
    store = JobStore(FileStorage(tmp_path / "store"))
    broker.publish([Message("a", encode_body("a", {"steps": 3, "tick": 0.01}))])
    code = run_worker(settings, handler="lrtkit.testing.handlers:sum_job", exit_when_idle=0.5)
    assert code == 0
    record = store.get("a")
    assert record is not None
    assert record.state == JobState.SUCCEEDED
    assert record.result == {"sum": 6}
    assert store.storage.exists("jobs/a/artifacts/sum.txt")
    broker.close()


def test_exit_when_idle_counts_from_the_end_of_the_last_job(tmp_path: Path) -> None:
    # A job longer than the idle time must not make the worker quit right after it ends.
    settings = settings_for(tmp_path, LRT_LEASE_SECONDS="3")
    broker = LocalBroker(tmp_path / "q.db", "q", lease_seconds=3)
    broker.ensure()
    store = JobStore(FileStorage(tmp_path / "store"))
    broker.publish([Message("long", encode_body("long", {"steps": 12, "tick": 0.1}))])
    code = run_worker(settings, handler="lrtkit.testing.handlers:sum_job", exit_when_idle=0.8)
    exited = datetime.now(UTC)
    assert code == 0
    record = store.get("long")
    assert record is not None
    assert record.state == JobState.SUCCEEDED
    idle = (exited - record.updated_at).total_seconds()
    assert idle >= 0.7, f"the worker quit {idle:.2f}s after its job ended, not after 0.8s idle"
    broker.close()


def test_run_worker_needs_exactly_one_of_handler_and_command(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with pytest.raises(ConfigError, match="exactly one"):
        run_worker(settings)
    with pytest.raises(ConfigError, match="exactly one"):
        run_worker(settings, handler="a:b", command="true")


def test_cli_run_bad_usage_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["run"])
    assert result.exit_code == 2
    assert "MOD:FN" in result.output
    env = {"LRT_STORAGE": f"file://{tmp_path / 's'}", "LRT_LOCAL_DB": str(tmp_path / "q.db")}
    result = runner.invoke(cli, ["run", "lrtkit_nope_xyz:work"], env=env)
    assert result.exit_code == 2
    assert "lrtkit_nope_xyz:work" in result.output
    result = runner.invoke(cli, ["run", "--command", "'unclosed"], env=env)
    assert result.exit_code == 2
    assert "--command" in result.output


# -- handler behaviours, in process --------------------------------------------------------------

BEHAVIOURS = """
from pydantic import BaseModel
import lrtkit


class Out(BaseModel):
    doubled: int


class Job(BaseModel):
    n: int
    mode: str = "ok"


def work(job: Job, ctx: lrtkit.JobContext):
    if job.mode == "invalid":
        raise lrtkit.InvalidJob(f"n={job.n} has no faces in it")
    if job.mode == "not_json":
        return object()
    for i in range(job.n):
        ctx.progress(i + 1, job.n, phase="adding")
    ctx.log.info("done adding", extra={"n": job.n})
    return Out(doubled=job.n * 2)


def bare(job):
    return sorted(job)
"""


def serve(tmp_path: Path, spec: str, jobs: dict[str, dict[str, Any]], **env: str) -> JobStore:
    settings = settings_for(tmp_path, LRT_LEASE_SECONDS="3", **env)
    broker = LocalBroker(tmp_path / "q.db", "q", lease_seconds=3)
    broker.ensure()
    broker.publish(
        [Message(job_id, encode_body(job_id, payload)) for job_id, payload in jobs.items()]
    )
    broker.close()
    assert run_worker(settings, handler=spec, exit_when_idle=0.3) == 0
    return JobStore(FileStorage(tmp_path / "store"))


def test_handler_results_progress_and_bad_jobs(
    in_tmp: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    name = f"behaviours_{time.time_ns()}"
    write_module(in_tmp, name, BEHAVIOURS)
    store = serve(
        in_tmp,
        f"{name}:work",
        {"good": {"n": 4}, "bad": {"n": 1, "mode": "invalid"}, "odd": {"n": 1, "mode": "not_json"}},
        LRT_MAX_FAILURES="1",
        LRT_LOG_FORMAT="json",
    )
    good = store.get("good")
    assert good is not None
    assert good.state == JobState.SUCCEEDED
    assert good.result == {"doubled": 8}, "a pydantic result is stored as its JSON form"
    assert good.progress == Progress(done=4, total=4, metrics={"phase": "adding"})
    bad = store.get("bad")
    assert bad is not None
    assert bad.state == JobState.DEAD
    assert bad.failures == 0, "InvalidJob from a handler is a bad job, not a failure"
    assert "no faces" in (bad.error or "")
    odd = store.get("odd")
    assert odd is not None
    assert odd.state == JobState.DEAD
    assert odd.failures == 1
    assert "not JSON-serialisable" in (odd.error or "")
    lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    events = {(line["event"], line.get("job_id")) for line in lines}
    assert ("job.succeeded", "good") in events
    assert ("done adding", "good") in events
    assert ("job.invalid", "bad") in events
    assert all("ts" in line and "level" in line for line in lines)


def test_handler_taking_only_the_job(in_tmp: Path) -> None:
    name = f"behaviours_{time.time_ns()}"
    write_module(in_tmp, name, BEHAVIOURS)
    store = serve(in_tmp, f"{name}:bare", {"j": {"b": 1, "a": 2}})
    assert store.get_result("j") == ["a", "b", "job_id"]  # the body as a dict (DESIGN)


def test_node_reporter_hears_busy_idle_and_failures(tmp_path: Path) -> None:
    from lrtkit.testing.fake_salad import FakeIMDS

    with FakeIMDS() as imds:
        serve(
            tmp_path,
            "lrtkit.testing.handlers:always_fails",
            {"j": {}},
            LRT_SALAD_IMDS_URL=imds.url,
            LRT_MAX_FAILURES="1",
            LRT_SALAD_REALLOCATE_AFTER="1",
        )
        assert 1000 in imds.cost_history, imds.cost_history
        assert imds.cost_history[-1] == 0
        assert imds.reallocations, "one failure with LRT_SALAD_REALLOCATE_AFTER=1 asks to move"


class FlakyBroker(LocalBroker):
    """The local broker whose first receives fail as a dropped connection would."""

    failures_left = 2

    def receive(self, wait: float) -> Delivery | None:
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionLost("connection reset by peer")
        return super().receive(wait)


def test_worker_rides_out_broker_connection_trouble(tmp_path: Path) -> None:
    from lrtkit.autoscale.imds import NoopReporter
    from lrtkit.worker.runtime import Limits, Worker

    settings = settings_for(tmp_path, LRT_LEASE_SECONDS="3")
    broker = FlakyBroker(tmp_path / "q.db", "q", lease_seconds=3)
    broker.ensure()
    broker.publish([Message("j", encode_body("j", {"steps": 2, "tick": 0.01}))])
    storage = FileStorage(tmp_path / "store")
    store = JobStore(storage)
    task = PythonTask("lrtkit.testing.handlers:sum_job")
    worker = Worker(
        broker,
        JobProcessor(broker, storage, store, settings, task),
        NoopReporter(),
        Limits(exit_when_idle=0.3),
        lease_seconds=3,
        grace_seconds=1,
    )
    assert worker.run() == 0
    assert broker.failures_left == 0
    assert store.get_result("j") == {"sum": 3}
    broker.close()


def test_command_must_be_an_executable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an executable"):
        run_worker(settings_for(tmp_path), command="lrtkit-no-such-program --flag")


def test_a_holder_whose_lease_ran_out_writes_no_result_record_or_ack(in_tmp: Path) -> None:
    name = f"sleepy_{time.time_ns()}"
    write_module(
        in_tmp, name, "import time\ndef work(job, ctx):\n    time.sleep(0.8)\n    return 1\n"
    )
    settings = settings_for(in_tmp, LRT_LEASE_SECONDS="0.5")
    broker = LocalBroker(in_tmp / "q.db", "q", lease_seconds=0.5)
    broker.ensure()
    broker.publish([Message("j", encode_body("j", {}))])
    delivery = broker.receive(1)
    assert delivery is not None
    storage = FileStorage(in_tmp / "store")
    store = JobStore(storage)
    processor = JobProcessor(broker, storage, store, settings, PythonTask(f"{name}:work"))
    attempt = Attempt(delivery, job_logger(None, 1))
    # The keeper is never started: a heartbeat that froze (a paused VM, a stuck thread).
    outcome = processor.handle(attempt, LeaseKeeper(broker, attempt, 0.5))
    assert outcome is Outcome.INTERRUPTED
    assert attempt.lost.is_set()
    assert store.get_result("j") is None
    record = store.get("j")
    assert record is not None
    assert record.state == JobState.RUNNING, "the stale holder must not write the outcome"
    again = broker.receive(2)
    assert again is not None, "the job was acked or lost instead of coming back"
    assert again.delivery_count == 2
    broker.close()


def test_console_script_imports_from_cwd_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    script = Path(sys.executable).parent / "lrtkit"
    if not script.exists():
        pytest.skip("the lrtkit console script is not installed next to this Python")
    write_module(tmp_path, "app", "def work(job, ctx):\n    return {'twice': job['n'] * 2}\n")
    env = {
        **os.environ,
        "LRT_STORAGE": f"file://{tmp_path / 'store'}",
        "LRT_LOCAL_DB": str(tmp_path / "q.db"),
        "LRT_QUEUE": "q",
        "LRT_SALAD_IMDS_URL": "off",
    }
    env.pop("PYTHONPATH", None)
    broker = LocalBroker(tmp_path / "q.db", "q")
    broker.ensure()
    broker.publish([Message("j", encode_body("j", {"n": 21}))])
    store = JobStore(FileStorage(tmp_path / "store"))
    proc = subprocess.Popen(
        [str(script), "run", "app:work"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while store.get_result("j") is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        assert store.get_result("j") == {"twice": 42}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        broker.close()


def test_a_handler_without_a_model_gets_the_whole_body(tmp_path: Path) -> None:
    # DESIGN: the body as a dict. The guides' handlers read job["job_id"] themselves.
    (tmp_path / "guide_style.py").write_text(
        "def work(job, ctx):\n    return {'seen': sorted(job), 'job_id': job['job_id']}\n"
    )
    settings = settings_for(tmp_path, LRT_LEASE_SECONDS="3")
    broker = LocalBroker(tmp_path / "q.db", "q", lease_seconds=3)
    broker.ensure()
    store = JobStore(FileStorage(tmp_path / "store"))
    broker.publish([Message("g-1", encode_body("g-1", {"steps": 3}))])
    sys.path.insert(0, str(tmp_path))
    try:
        code = run_worker(settings, handler="guide_style:work", max_jobs=1)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("guide_style", None)
    assert code == 0
    record = store.get("g-1")
    assert record is not None
    assert record.state == JobState.SUCCEEDED, record.error
    assert record.result == {"seen": ["job_id", "steps"], "job_id": "g-1"}
    broker.close()


def test_progress_metric_that_is_not_json_fails_the_handler_clearly(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    ctx.progress(1, 2, loss=0.5)
    with pytest.raises(TypeError, match="'weights' is a bytes"):
        ctx.progress(2, 2, weights=b"\x00")


def test_a_job_whose_finish_crashes_is_handed_back_not_left_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An error of no lrtkit kind while the job ends (the disk fills up once while uploading
    # artifacts) must release the delivery for a retry at once, not leave it held until its
    # lease runs out: with a 10-minute lease the retry has to come from the release.
    real_upload = JobStore.upload_artifacts
    calls: list[str] = []

    def disk_full_once(self: JobStore, job_id: str, folder: Path) -> int:
        calls.append(job_id)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real_upload(self, job_id, folder)

    monkeypatch.setattr(JobStore, "upload_artifacts", disk_full_once)
    settings = settings_for(tmp_path, LRT_LEASE_SECONDS="600", LRT_RETRY_BACKOFF_SECONDS="0")
    broker = LocalBroker(tmp_path / "q.db", "q", lease_seconds=600)
    broker.ensure()
    store = JobStore(FileStorage(tmp_path / "store"))
    broker.publish([Message("full-1", encode_body("full-1", {"steps": 2, "tick": 0}))])
    worker = threading.Thread(
        target=run_worker,
        args=(settings,),
        kwargs={"handler": "lrtkit.testing.handlers:sum_job", "max_jobs": 1},
        daemon=True,
    )
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the delivery was left held after the worker's own error"
    record = store.get("full-1")
    assert record is not None
    assert record.state == JobState.SUCCEEDED
    assert record.attempts == 2
    assert len(calls) == 2
    assert broker.depth() == (0, 0, 0)
    broker.close()
