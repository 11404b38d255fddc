"""The SaladCloud guides' job as an lrtkit handler: a slow sum of 1..steps.

The guides' worker is a few hundred lines of queue polling, heartbeats, checkpoint uploads
and dead-lettering around one loop. With lrtkit the loop is all there is::

    lrtkit submit examples/jobs.csv --handler examples.sum_job:sum_job
    lrtkit run examples.sum_job:sum_job

A body is what the guides' submitter sends, ``{"job_id": "job-0", "steps": 600}``; the
payload model validates it (a bad body is dead-lettered with the reason, never retried).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

import lrtkit


class SumJob(BaseModel):
    steps: int = Field(gt=0, description="how many numbers to add")
    seconds_per_step: float = Field(30.0, ge=0, description="simulated work per step")


def sum_job(job: SumJob, ctx: lrtkit.JobContext) -> dict[str, int]:
    """Add 1..steps, one number per step, saving a checkpoint after every step."""
    state: dict[str, int] = ctx.checkpoint.load() or {"step": 0, "sum": 0}
    if state["step"]:
        ctx.log.info("resuming from step %d of %d", state["step"], job.steps)
    while state["step"] < job.steps:
        # One unit of work. Waiting on ctx.stopping instead of time.sleep wakes up at once on
        # SIGTERM, a lost lease or `lrtkit cancel`; ctx.check() then raises lrtkit.Stop.
        ctx.stopping.wait(job.seconds_per_step)
        ctx.check()
        state["step"] += 1
        state["sum"] += state["step"]
        ctx.checkpoint.save(state)
        ctx.progress(state["step"], job.steps)
    return {"sum": state["sum"]}
