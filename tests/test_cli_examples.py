"""The examples work as documented: their sample jobs validate, and the trainer resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lrtkit.cli import cli
from lrtkit.config import load_settings
from lrtkit.jobs import JobState
from lrtkit.plugins import load_storage
from lrtkit.records import JobStore
from lrtkit.storage import layout
from lrtkit.testing import unique_name

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "LRT_BROKER": "local",
        "LRT_LOCAL_DB": str(tmp_path / "queue.sqlite3"),
        "LRT_STORAGE": f"file://{tmp_path / 'store'}",
        "LRT_QUEUE": unique_name(),
        "LRT_LEASE_SECONDS": "3",
        "LRT_GRACE_SECONDS": "5",
    }


@pytest.mark.parametrize(
    ("sample", "handler", "count"),
    [
        ("examples/jobs.csv", "examples.sum_job:sum_job", 4),
        ("examples/jobs.jsonl", "examples.train_lora:train", 3),
    ],
)
def test_sample_jobs_validate_against_their_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample: str, handler: str, count: int
) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(
        cli, ["submit", sample, "--handler", handler, "--json"], env=_env(tmp_path)
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["submitted"]) == count


@pytest.mark.slow
def test_trainer_stopped_by_sigterm_resumes_to_the_same_adapter(tmp_path: Path) -> None:
    env = _env(tmp_path)
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    payload = {
        "base_model": "sd-1.5",
        "captions": ["a photo of sks dog", "sks dog on a beach"],
        "epochs": 1,
        "steps_per_epoch": 60,
        "save_every": 5,
        "seconds_per_step": 0.05,
    }
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "\n".join(json.dumps({"job_id": j, **payload}) for j in ("stopped", "straight")) + "\n"
    )
    store = JobStore(load_storage(load_settings(environ=env)))
    submit = CliRunner().invoke(cli, ["submit", str(jobs)], env=env)
    assert submit.exit_code == 0, submit.output

    def worker(*extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "lrtkit", "run", "examples.train_lora:train", *extra],
            cwd=tmp_path,
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    first = worker()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = store.get("stopped")
            if record and record.progress and (record.progress.done or 0) >= 10:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the first worker made no progress")
        first.send_signal(signal.SIGTERM)
        first_log, _ = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, first_log

    second = worker("--max-jobs", "2")
    second_log, _ = second.communicate(timeout=120)
    assert second.returncode == 0, second_log
    assert "resumed from step" in second_log

    for job_id in ("stopped", "straight"):
        record = store.get(job_id)
        assert record is not None
        assert record.state == JobState.SUCCEEDED, (job_id, record)
        assert record.result["final_loss"] < 0.5
    stopped = store.get("stopped")
    assert stopped is not None
    assert stopped.attempts >= 2

    def adapter(job_id: str) -> bytes:
        data, _ = store.storage.get(layout.artifact_key(job_id, "adapter_model.json"))
        return data

    # Deterministic training: stopping and resuming changes nothing in the result.
    assert adapter("stopped") == adapter("straight")
