"""``lrtkit setup``, ``status``, ``jobs`` and ``cancel``: the queue and the job records."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from lrtkit.cli.common import (
    EXIT_FAILED,
    console,
    esc,
    fail,
    handle_errors,
    opened_broker,
    print_json,
    short,
    show_progress,
    state,
    table,
)
from lrtkit.jobs import FINAL_STATES, JobState, validate_job_id

if TYPE_CHECKING:
    from lrtkit.jobs import JobRecord

STATE_STYLE = {
    JobState.QUEUED: "cyan",
    JobState.RUNNING: "yellow",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "magenta",
    JobState.DEAD: "red",
    JobState.CANCELLED: "dim",
}


# -- setup -------------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@handle_errors
def setup(*, as_json: bool) -> None:
    """Create the queue and its dead-letter queue with the recommended settings.

    Idempotent: run it again and it reports what exists. Exit 1 when an existing queue has
    settings that differ from what lrtkit needs (each difference is listed).
    """
    with opened_broker() as broker:
        report = broker.ensure()
    if as_json:
        print_json(
            {
                "created": report.created,
                "existing": report.existing,
                "mismatches": report.mismatches,
            }
        )
        if report.mismatches:
            raise SystemExit(EXIT_FAILED)
        return
    for name in report.created:
        console.print(f"[green]created[/]   {esc(name)}", highlight=False)
    for name in report.existing:
        console.print(f"[blue]exists[/]    {esc(name)}", highlight=False)
    for problem in report.mismatches:
        console.print(f"[red]mismatch[/]  {esc(problem)}", highlight=False, soft_wrap=True)
    if report.mismatches:
        fail(
            f"{len(report.mismatches)} setting(s) of the existing queue differ from what lrtkit "
            "expects: change them on the broker (or delete the queue and run setup again)"
        )
    if not (report.created or report.existing):
        console.print("nothing to set up", highlight=False)


# -- status ------------------------------------------------------------------------------------


@click.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the documented shape).")
@handle_errors
def status(*, job_id: str | None, as_json: bool) -> None:
    """Show one job's record, or the queue depth and the number of jobs per state."""
    if job_id is not None:
        _job_status(validate_job_id(job_id), as_json)
        return
    with opened_broker() as broker:
        depth = broker.depth()
    records = state().store().list_records()
    counts = {s.value: 0 for s in JobState}
    for record in records:
        counts[record.state.value] += 1
    data = {
        "depth": {"waiting": depth.waiting, "in_flight": depth.in_flight, "dead": depth.dead},
        "states": counts,
    }
    if as_json:
        print_json(data)
        return
    settings = state().settings()
    queue = table("queue", "waiting", "in flight", "dead-lettered")
    queue.add_row(
        esc(f"{settings.broker}:{settings.queue}"),
        str(depth.waiting),
        str(depth.in_flight),
        str(depth.dead),
    )
    console.print(queue)
    console.print(f"job records in {esc(settings.storage)}", highlight=False)
    jobs = table("state", "jobs")
    for name, count in counts.items():
        style = STATE_STYLE[JobState(name)] if count else "dim"
        jobs.add_row(f"[{style}]{name}[/]", str(count))
    console.print(jobs)


def _job_status(job_id: str, as_json: bool) -> None:
    store = state().store()
    record = store.get(job_id)
    if record is None:
        fail(f"no job {job_id!r}: it has no record in {state().settings().storage}")
    data = record.public()
    if as_json:
        print_json(data)
        return
    view = table("field", "value", title=f"job {job_id}", wrap=("value",))
    view.add_row("state", _state(record))
    view.add_row("attempts", str(record.attempts))
    view.add_row("failures", str(record.failures))
    view.add_row("progress", show_progress(data["progress"]) or "-")
    view.add_row("result", "-" if record.result is None else short(record.result, 400))
    view.add_row("error", esc(record.error or "-"))
    view.add_row("updated", str(data["updated_at"]).replace("T", " "))
    if store.cancel_requested(job_id) and record.state not in FINAL_STATES:
        view.add_row("cancel", "requested (the worker stops it at its next heartbeat)")
    console.print(view)


# -- jobs --------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--state",
    "state_filter",
    type=click.Choice([s.value for s in JobState]),
    default=None,
    help="Only jobs in this state.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of job records.")
@handle_errors
def jobs(*, state_filter: str | None, as_json: bool) -> None:
    """List job records (sorted by job id)."""
    wanted = JobState(state_filter) if state_filter else None
    records = state().store().list_records(wanted)
    if as_json:
        print_json([r.public() for r in records])
        return
    if not records:
        which = f" in state {state_filter}" if state_filter else ""
        console.print(f"no jobs{which}", highlight=False)
        return
    view = table(
        "job_id",
        "state",
        "tries",
        "progress",
        "result / error",
        "updated",
        wrap=("result / error",),
        widths={"job_id": 12, "updated": 11, "progress": 8},
    )
    for record in records:
        public = record.public()
        outcome = record.error if record.error else record.result
        view.add_row(
            record.job_id,
            _state(record),
            str(record.attempts),
            show_progress(public["progress"], metrics=False),
            "" if outcome is None else short(outcome, 60),
            _when(public["updated_at"]),
        )
    console.print(view)
    console.print(f"{len(records)} job(s)", highlight=False)


# -- cancel ------------------------------------------------------------------------------------


@click.command()
@click.argument("job_ids", metavar="JOB_ID...", nargs=-1, required=True)
@handle_errors
def cancel(job_ids: tuple[str, ...]) -> None:
    """Cancel queued or running jobs.

    A queued job is marked cancelled at once (a worker that receives it drops it); a running
    job is stopped by its worker at the next heartbeat, which then marks it cancelled. Jobs
    already finished are left as they are. Unknown ids: error, nothing is cancelled.
    """
    ids = list(dict.fromkeys(validate_job_id(j) for j in job_ids))
    store = state().store()
    records = {job_id: store.get(job_id) for job_id in ids}
    unknown = [job_id for job_id, record in records.items() if record is None]
    if unknown:
        fail(
            f"no such job(s): {', '.join(unknown)} (no record in {state().settings().storage}); "
            "nothing was cancelled",
            EXIT_FAILED,
        )
    for job_id, record in records.items():
        assert record is not None
        if record.state in FINAL_STATES:
            console.print(f"{job_id}: already {record.state.value}, left as it is")
            continue
        store.request_cancel(job_id)
        if record.state == JobState.RUNNING:
            console.print(f"{job_id}: cancel requested; its worker stops it at the next heartbeat")
        else:
            store.update(job_id, state=JobState.CANCELLED, error="cancelled while queued")
            console.print(f"{job_id}: cancelled")


# -- helpers -----------------------------------------------------------------------------------


def _state(record: JobRecord) -> str:
    return f"[{STATE_STYLE[record.state]}]{record.state.value}[/]"


def _when(value: Any) -> str:
    """``MM-DD HH:MM`` (UTC) of an ISO timestamp: short enough for a table."""
    text = str(value or "")
    return text.replace("T", " ")[5:16]
