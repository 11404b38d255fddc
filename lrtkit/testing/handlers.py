"""Handlers the worker contract suite runs in real worker processes.

Plugin packages use them too (``lrtkit run lrtkit.testing.handlers:sum_job``), so they depend on
nothing but lrtkit. Every step a handler completes is appended to a trace file
(``$LRT_TEST_TRACE_DIR/{job_id}.trace``, one ``step attempt pid time`` line per step, written
before the checkpoint is saved) so a test can count redone steps after killing workers.

``python -m lrtkit.testing.handlers`` is the command-mode child: the same sum, checkpointing
``$LRT_CHECKPOINT_DIR/state.json``; payload fields ``exit_code`` (exit with it at once) and
``tempfail_attempts`` (exit 75 while ``LRT_ATTEMPT`` is at most that) drive the exit-code tests.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

from pydantic import BaseModel

from lrtkit.worker.context import JobContext

TRACE_DIR_ENV = "LRT_TEST_TRACE_DIR"


class SumJob(BaseModel):
    """The SaladCloud guides' job: add 1..steps, one step per tick."""

    steps: int
    tick: float = 0.2


def trace(job_id: str, step: int, attempt: int) -> None:
    """Append one completed step to the job's trace file (no-op without LRT_TEST_TRACE_DIR)."""
    folder = os.environ.get(TRACE_DIR_ENV)
    if not folder:
        return
    path = Path(folder) / f"{job_id}.trace"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"{step} {attempt} {os.getpid()} {time.time():.3f}\n")
        fh.flush()
        os.fsync(fh.fileno())


class TraceRow(NamedTuple):
    step: int
    attempt: int
    pid: int
    at: float


def read_trace(folder: str | Path, job_id: str) -> list[TraceRow]:
    """The rows of a job's trace, oldest first (empty if none yet)."""
    path = Path(folder) / f"{job_id}.trace"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 4:
            rows.append(TraceRow(int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3])))
    return rows


def sum_job(job: SumJob, ctx: JobContext) -> dict[str, int]:
    """Sum 1..steps, checkpointing after every step; stops at the next tick when asked."""
    state = ctx.checkpoint.load() or {"step": 0, "sum": 0}
    ctx.log.info("resuming", extra={"step": state["step"]})
    while state["step"] < job.steps:
        ctx.check()
        time.sleep(job.tick)
        state["step"] += 1
        state["sum"] += state["step"]
        trace(ctx.job_id, state["step"], ctx.attempt)
        ctx.checkpoint.save(state)
        ctx.progress(state["step"], job.steps)
    (ctx.output_dir / "sum.txt").write_text(str(state["sum"]))
    return {"sum": state["sum"]}


def always_fails(job: dict[str, Any], ctx: JobContext) -> None:
    """Raises every time: a job that must end dead-lettered after LRT_MAX_FAILURES."""
    raise ValueError(f"always fails (job {ctx.job_id}, attempt {ctx.attempt})")


def ignores_stop(job: SumJob, ctx: JobContext) -> dict[str, int]:
    """Never calls ``ctx.check()``: the worker must release it once the grace period is over."""
    total = 0
    for step in range(1, job.steps + 1):
        time.sleep(job.tick)
        total += step
        trace(ctx.job_id, step, ctx.attempt)
    return {"sum": total}


def folder_job(job: SumJob, ctx: JobContext) -> dict[str, int]:
    """The sum, checkpointed as a folder (one file per step) with save_dir/restore_dir."""
    work = ctx.output_dir.parent / "work"
    work.mkdir(exist_ok=True)
    ctx.checkpoint.restore_dir(work)
    done = sorted(int(p.stem) for p in work.glob("*.step"))
    step = done[-1] if done else 0
    while step < job.steps:
        ctx.check()
        time.sleep(job.tick)
        step += 1
        (work / f"{step}.step").write_text(str(step))
        trace(ctx.job_id, step, ctx.attempt)
        ctx.checkpoint.save_dir(work)
    return {"sum": sum(int(p.read_text()) for p in work.glob("*.step"))}


# -- command-mode child --------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.parent.parent / f".{path.name}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def command_main() -> int:
    """The sum as a command: state in $LRT_CHECKPOINT_DIR/state.json; SIGTERM exits 75."""
    stopping = {"flag": False}

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    job = json.loads(Path(os.environ["LRT_JOB_FILE"]).read_text(encoding="utf-8"))
    job_id = job["job_id"]
    attempt = int(os.environ["LRT_ATTEMPT"])
    if "exit_code" in job:
        print(f"exiting with {job['exit_code']} as asked", file=sys.stderr)
        return int(job["exit_code"])
    if attempt <= int(job.get("tempfail_attempts", 0)):
        print("not now, try later", file=sys.stderr)
        return 75
    steps = int(job["steps"])
    tick = float(job.get("tick", 0.2))
    state_file = Path(os.environ["LRT_CHECKPOINT_DIR"]) / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"step": 0, "sum": 0}
    while state["step"] < steps:
        if stopping["flag"]:
            return 75
        time.sleep(tick)
        state["step"] += 1
        state["sum"] += state["step"]
        trace(job_id, state["step"], attempt)
        _write_atomic(state_file, json.dumps(state))
    Path(os.environ["LRT_OUTPUT_DIR"], "sum.txt").write_text(str(state["sum"]))
    Path(os.environ["LRT_RESULT_FILE"]).write_text(json.dumps({"sum": state["sum"]}))
    return 0


if __name__ == "__main__":
    sys.exit(command_main())
