"""The admin commands on the local broker and file storage: JSON shapes, exit codes, effects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lrtkit.broker import Message
from lrtkit.jobs import JobRecord, JobState, encode_body
from tests.cli_env import CliEnv

RECORD_KEYS = [
    "job_id",
    "state",
    "attempts",
    "failures",
    "progress",
    "result",
    "error",
    "updated_at",
]


class Env(CliEnv):
    def enqueue(self, *job_ids: str) -> None:
        for job_id in job_ids:
            self.store.put(JobRecord(job_id=job_id))
        self.broker.publish([Message(j, encode_body(j, {"steps": 3})) for j in job_ids])

    def dead_letter(self, job_id: str, reason: str) -> None:
        self.enqueue(job_id)
        delivery = self.broker.receive(0)
        assert delivery is not None
        self.broker.dead_letter(delivery, reason)
        self.store.update(job_id, state=JobState.DEAD, failures=3, error=reason, attempts=3)


@pytest.fixture
def lrt(tmp_path: Path) -> Iterator[Env]:
    env = Env(tmp_path)
    yield env
    env.broker.close()


def test_status_json_shape_counts_depth_and_states(lrt: Env) -> None:
    assert lrt.json("status") == {
        "depth": {"waiting": 0, "in_flight": 0, "dead": 0},
        "states": dict.fromkeys(
            ["queued", "running", "succeeded", "failed", "dead", "cancelled"], 0
        ),
    }
    lrt.enqueue("a", "b", "c")
    lrt.dead_letter("d", "boom")
    lrt.store.update("c", state=JobState.SUCCEEDED)
    held = lrt.broker.receive(0)
    assert held is not None

    data = lrt.json("status")

    assert data == {
        "depth": {"waiting": 2, "in_flight": 1, "dead": 1},
        "states": {
            "queued": 2,
            "running": 0,
            "succeeded": 1,
            "failed": 0,
            "dead": 1,
            "cancelled": 0,
        },
    }
    human = lrt.cli("status")
    assert human.exit_code == 0
    assert "waiting" in human.stdout
    assert "succeeded" in human.stdout


def test_status_of_one_job_is_its_public_record(lrt: Env) -> None:
    lrt.store.put(JobRecord(job_id="j1"))
    lrt.store.update("j1", state=JobState.SUCCEEDED, attempts=2, result={"sum": 6})

    data = lrt.json("status", "j1")

    assert isinstance(data, dict)
    assert list(data) == RECORD_KEYS
    assert data["state"] == "succeeded"
    assert data["result"] == {"sum": 6}
    assert data["attempts"] == 2
    human = lrt.cli("status", "j1")
    assert human.exit_code == 0
    assert "succeeded" in human.stdout


def test_status_of_unknown_or_malformed_job(lrt: Env) -> None:
    unknown = lrt.cli("status", "nope")
    assert unknown.exit_code == 1
    assert "no job 'nope'" in unknown.stderr
    malformed = lrt.cli("status", "a b")
    assert malformed.exit_code == 2
    assert "outside [A-Za-z0-9._-]" in malformed.stderr


def test_jobs_lists_public_records_and_filters_by_state(lrt: Env) -> None:
    lrt.enqueue("b", "a", "c")
    lrt.store.update("c", state=JobState.FAILED, failures=1, error="ValueError: x")

    every = lrt.json("jobs")
    failed = lrt.json("jobs", "--state", "failed")

    assert isinstance(every, list)
    assert [r["job_id"] for r in every] == ["a", "b", "c"]
    assert all(list(r) == RECORD_KEYS for r in every)
    assert failed == [r for r in every if r["job_id"] == "c"]
    assert lrt.cli("jobs", "--state", "bogus").exit_code == 2
    assert "ValueError: x" in lrt.cli("jobs").stdout


def test_cancel_a_queued_job_at_once_and_a_running_one_by_marker(lrt: Env) -> None:
    lrt.enqueue("q", "r", "s")
    lrt.store.update("r", state=JobState.RUNNING, attempts=1)
    lrt.store.update("s", state=JobState.SUCCEEDED)

    result = lrt.cli("cancel", "q", "r", "s")

    assert result.exit_code == 0, result.output
    q, r, s = (lrt.store.get(j) for j in "qrs")
    assert q is not None
    assert q.state == JobState.CANCELLED
    assert r is not None
    assert r.state == JobState.RUNNING
    assert s is not None
    assert s.state == JobState.SUCCEEDED
    assert lrt.store.cancel_requested("q")
    assert lrt.store.cancel_requested("r")
    assert not lrt.store.cancel_requested("s")
    assert "already succeeded" in result.stdout


def test_cancel_unknown_id_names_it_and_cancels_nothing(lrt: Env) -> None:
    lrt.enqueue("known")

    result = lrt.cli("cancel", "known", "ghost")

    assert result.exit_code == 1
    assert "ghost" in result.stderr
    assert not lrt.store.cancel_requested("known")
    record = lrt.store.get("known")
    assert record is not None
    assert record.state == JobState.QUEUED
    assert lrt.cli("cancel").exit_code == 2


def test_dlq_list_json_shape_and_redrive(lrt: Env) -> None:
    lrt.dead_letter("d1", "ValueError: bad input")
    lrt.dead_letter("d2", "delivery_limit")
    lrt.broker.publish([Message("x", b"not json")])
    bad = lrt.broker.receive(0)
    assert bad is not None
    lrt.broker.dead_letter(bad, "invalid: body is not valid JSON")

    letters = lrt.json("dlq", "list")

    assert letters == [
        {
            "job_id": "d1",
            "reason": "ValueError: bad input",
            "deliveries": 1,
            "body": '{"job_id":"d1","steps":3}',
        },
        {
            "job_id": "d2",
            "reason": "delivery_limit",
            "deliveries": 1,
            "body": '{"job_id":"d2","steps":3}',
        },
        {
            "job_id": None,
            "reason": "invalid: body is not valid JSON",
            "deliveries": 1,
            "body": "not json",
        },
    ]
    assert "ValueError: bad input" in lrt.cli("dlq", "list").stdout

    assert lrt.cli("dlq", "redrive").exit_code == 2
    missing = lrt.cli("dlq", "redrive", "d1", "ghost")
    assert missing.exit_code == 1
    assert "ghost" in missing.stderr
    assert lrt.broker.depth().dead == 3

    done = lrt.cli("dlq", "redrive", "d1")
    assert done.exit_code == 0, done.output
    record = lrt.store.get("d1")
    assert record is not None
    assert (record.state, record.failures, record.error) == (JobState.QUEUED, 0, None)
    d2 = lrt.store.get("d2")
    assert d2 is not None
    assert d2.state == JobState.DEAD
    assert lrt.broker.depth().dead == 2
    assert lrt.broker.depth().waiting == 1

    everything = lrt.cli("dlq", "redrive", "--all")
    assert everything.exit_code == 0
    assert "redrove 2" in everything.stdout
    assert lrt.broker.depth().dead == 0
    d2 = lrt.store.get("d2")
    assert d2 is not None
    assert d2.state == JobState.QUEUED


def test_setup_is_idempotent(lrt: Env, tmp_path: Path) -> None:
    env = {"LRT_LOCAL_DB": str(tmp_path / "fresh.sqlite3")}
    first = lrt.cli("setup", env=env)
    second = lrt.cli("setup", env=env)
    assert first.exit_code == 0
    assert second.exit_code == 0
    assert "created" in first.stdout
    assert "created" not in second.stdout
    assert "exists" in second.stdout


def test_plugins_lists_the_core_plugins(lrt: Env) -> None:
    data = lrt.json("plugins")
    assert isinstance(data, list)
    names = {(p["namespace"], p["name"]): p for p in data}
    assert names[("lrtkit.brokers", "local")]["error"] is None
    assert names[("lrtkit.storage", "file")]["error"] is None
    assert set(data[0]) == {"namespace", "name", "target", "distribution", "version", "error"}
    assert "local" in lrt.cli("plugins").stdout


def test_doctor_passes_on_a_working_setup(lrt: Env) -> None:
    result = lrt.cli("doctor", "--handler", "lrtkit.demo.handler:sum_job")
    assert result.exit_code == 0, result.output
    data = lrt.json("doctor")
    assert isinstance(data, dict)
    assert data["ok"] is True
    assert {c["status"] for c in data["checks"]} <= {"ok", "warn"}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LRT_BROKER": "nosuch"}, "nosuch"),
        ({"LRT_LEASE_SECONDS": "soon"}, "LRT_LEASE_SECONDS"),
        ({"LRT_STORAGE": "ftp://host/x"}, "ftp"),
        ({"LRT_STORAGE": "not a url"}, "LRT_STORAGE"),
    ],
)
def test_doctor_names_the_problem_of_a_broken_config(
    lrt: Env, env: dict[str, str], named: str
) -> None:
    result = lrt.cli("doctor", env=env)
    assert result.exit_code == 1
    assert "fail" in result.stdout
    assert named in result.stdout.replace("\n", " ")
    data = json.loads(lrt.cli("doctor", "--json", env=env).stdout)
    failed = [c for c in data["checks"] if c["status"] == "fail"]
    assert failed
    assert any(named in c["detail"] for c in failed)


def test_doctor_masks_secrets(lrt: Env) -> None:
    env = {"LRT_S3_SECRET_ACCESS_KEY": "hunter2-very-secret", "LRT_SALAD_API_KEY": "salad-key-1"}
    result = lrt.cli("doctor", "--json", env=env)
    assert "hunter2" not in result.stdout
    assert "salad-key-1" not in result.stdout
    shown = {s["variable"]: s["value"] for s in json.loads(result.stdout)["settings"]}
    assert shown["LRT_S3_SECRET_ACCESS_KEY"] == "set (hidden)"


def test_doctor_reports_a_handler_that_does_not_import(lrt: Env) -> None:
    result = lrt.cli("doctor", "--json", "--handler", "no_such_module_xyz:fn")
    assert result.exit_code == 1
    checks = json.loads(result.stdout)["checks"]
    assert any(c["name"] == "handler" and c["status"] == "fail" for c in checks)


def test_errors_are_one_line_without_traceback(lrt: Env) -> None:
    env = {**os.environ, **lrt.env, "LRT_BROKER": "nosuch"}
    proc = subprocess.run(
        [sys.executable, "-m", "lrtkit", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2  # a configuration problem
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "nosuch" in lines[0]


@pytest.mark.slow
def test_cancel_stops_a_running_job_and_drops_a_queued_one(lrt: Env) -> None:
    env = {**os.environ, **lrt.env, "LRT_LEASE_SECONDS": "3"}
    jobs = lrt.tmp / "jobs.jsonl"
    jobs.write_text(
        '{"job_id": "long", "steps": 200, "step_seconds": 0.1}\n'
        '{"job_id": "next", "steps": 2, "step_seconds": 0.1}\n'
    )
    assert lrt.cli("submit", str(jobs), "--handler", "lrtkit.demo.handler:sum_job").exit_code == 0
    worker = subprocess.Popen(
        [sys.executable, "-m", "lrtkit", "run", "lrtkit.demo.handler:sum_job", "--max-jobs", "2"],
        env=env,
        cwd=lrt.tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = lrt.store.get("long")
            if record is not None and record.state == JobState.RUNNING:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the job never started")
        result = lrt.cli("cancel", "long", "next")
        assert result.exit_code == 0, result.output
        assert "cancel requested" in result.stdout
        log, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, log
    long, after = lrt.store.get("long"), lrt.store.get("next")
    assert long is not None
    assert long.state == JobState.CANCELLED
    assert long.result is None
    assert after is not None
    assert after.state == JobState.CANCELLED
    assert after.attempts == 0
    assert lrt.broker.depth() == (0, 0, 0)  # acked, never retried


def test_data_that_looks_like_markup_is_printed_as_it_is(lrt: Env) -> None:
    lrt.enqueue("m")
    lrt.store.update("m", state=JobState.FAILED, error="KeyError: [/x] [bold]not bold[/bold]")
    shown = lrt.cli("status", "m")
    assert shown.exit_code == 0, shown.output
    assert "[/x] [bold]not bold[/bold]" in shown.stdout
    listed = lrt.cli("jobs")
    assert listed.exit_code == 0
    assert "[/x]" in listed.stdout
    path = lrt.tmp / "bad.jsonl"
    path.write_text('{"job_id": "[/red]"}\n')
    bad = lrt.cli("submit", str(path))
    assert bad.exit_code == 2
    assert "'[/red]'" in bad.stderr
