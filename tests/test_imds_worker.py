"""A real ``lrtkit run`` worker process reporting to a fake SaladCloud IMDS over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lrtkit.autoscale.imds import BUSY_DELETION_COST, IDLE_DELETION_COST
from lrtkit.broker import Message
from lrtkit.brokers.local import LocalBroker
from lrtkit.testing import unique_name
from lrtkit.testing.fake_salad import FakeIMDS


@pytest.fixture
def imds() -> Iterator[FakeIMDS]:
    with FakeIMDS() as fake:
        yield fake


def worker_env(tmp_path: Path, imds: FakeIMDS, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LRT_", "SALAD_"))}
    return {
        **clean,
        "LRT_BROKER": "local",
        "LRT_LOCAL_DB": str(tmp_path / "queue.sqlite3"),
        "LRT_QUEUE": unique_name(),
        "LRT_STORAGE": f"file://{tmp_path / 'store'}",
        "LRT_SALAD_IMDS_URL": imds.url,
        "LRT_LEASE_SECONDS": "3",
        **extra,
    }


def publish(env: dict[str, str], *bodies: dict[str, object]) -> None:
    with LocalBroker(env["LRT_LOCAL_DB"], env["LRT_QUEUE"]) as broker:
        broker.publish([Message(str(b["job_id"]), json.dumps(b).encode()) for b in bodies])


def run_worker(env: dict[str, str], handler: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lrtkit", "run", handler, "--exit-when-idle", "1"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_busy_worker_raises_its_deletion_cost_and_lowers_it_when_idle(
    imds: FakeIMDS, tmp_path: Path
) -> None:
    env = worker_env(tmp_path, imds)
    publish(env, {"job_id": "job-a", "steps": 3, "tick": 0.1})
    proc = run_worker(env, "lrtkit.testing.handlers:sum_job", tmp_path)
    assert proc.returncode == 0, proc.stderr
    history = imds.cost_history
    assert BUSY_DELETION_COST in history, proc.stderr
    busy_at = history.index(BUSY_DELETION_COST)
    # after the job: idle again, so a scale-in takes this machine first
    assert IDLE_DELETION_COST in history[busy_at + 1 :]
    assert imds.deletion_cost == IDLE_DELETION_COST
    assert imds.reallocations == []


def test_worker_asks_to_reallocate_after_consecutive_failures(
    imds: FakeIMDS, tmp_path: Path
) -> None:
    env = worker_env(
        tmp_path,
        imds,
        LRT_SALAD_REALLOCATE_AFTER="2",
        LRT_MAX_FAILURES="2",
        LRT_RETRY_BACKOFF_SECONDS="0",
    )
    publish(env, {"job_id": "bad-1"})
    proc = run_worker(env, "lrtkit.testing.handlers:always_fails", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(imds.reallocations) == 1, proc.stderr
    assert "2 consecutive job failures" in imds.reallocations[0]
