"""``lrtkit demo`` end to end: real worker processes, a real SIGKILL, results checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_kills_a_worker_and_the_other_resumes_it(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    # The caller's own lrtkit settings must not leak into the demo.
    env = {**os.environ, "LRT_BROKER": "nosuch", "LRT_STORAGE": "s3://nowhere", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "lrtkit", "demo", "--dir", str(folder)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "SIGKILL worker" in out
    assert "resumed demo-" in out
    assert "6 of 6 results are right" in out
    assert "Traceback" not in out
    # The kept folder holds what the story says: two worker logs, the queue, the records.
    assert (folder / "worker-1.log").exists()
    assert (folder / "worker-2.log").exists()
    records = sorted(p.parent.name for p in (folder / "store" / "jobs").glob("*/record.json"))
    assert records == [f"demo-{i}" for i in range(1, 7)]


def test_demo_refuses_a_folder_in_use(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "lrtkit", "demo", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "is not empty" in proc.stderr
