"""The demo's job: the SaladCloud guides' slow sum of 1..n, one checkpointed step at a time.

Usable on its own: ``lrtkit run lrtkit.demo.handler:sum_job`` serves bodies like
``{"job_id": "job-0", "steps": 600}``. When ``LRT_DEMO_EVENTS`` names a file, each start,
step and finish is appended to it as one JSON line, which is how ``lrtkit demo`` watches the
workers without reaching into them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pydantic import BaseModel, Field

import lrtkit

EVENTS_VARIABLE = "LRT_DEMO_EVENTS"


class SumJob(BaseModel):
    """Sum 1..steps; each step takes ``step_seconds`` (the guides sleep 30 s per step)."""

    steps: int = Field(gt=0, le=1_000_000)
    step_seconds: float = Field(0.2, ge=0, le=3600)


def sum_job(job: SumJob, ctx: lrtkit.JobContext) -> dict[str, int]:
    """Resume from the last checkpoint, then add one number per step, saving after each."""
    state: dict[str, int] = ctx.checkpoint.load() or {"step": 0, "sum": 0}
    _event(ctx, "start", steps=job.steps, resumed_from=state["step"])
    while state["step"] < job.steps:
        ctx.stopping.wait(job.step_seconds)  # one unit of work; wakes early on a stop request
        ctx.check()
        state["step"] += 1
        state["sum"] += state["step"]
        ctx.checkpoint.save(state)
        ctx.progress(state["step"], job.steps)
        _event(ctx, "step", step=state["step"])
    _event(ctx, "done", sum=state["sum"])
    return {"sum": state["sum"]}


def _event(ctx: lrtkit.JobContext, kind: str, **fields: Any) -> None:
    path = os.environ.get(EVENTS_VARIABLE)
    if not path:
        return
    line = json.dumps(
        {
            "t": time.time(),
            "pid": os.getpid(),
            "job": ctx.job_id,
            "attempt": ctx.attempt,
            "event": kind,
            **fields,
        }
    )
    # One short write in append mode: lines from several processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
