"""``lrtkit dlq list`` and ``lrtkit dlq redrive``: dead letters, with their reasons."""

from __future__ import annotations

import click

from lrtkit.cli.common import (
    EXIT_USAGE,
    console,
    fail,
    handle_errors,
    opened_broker,
    print_json,
    short,
    state,
    table,
)
from lrtkit.errors import LrtError
from lrtkit.jobs import JobState, job_id_of, validate_job_id


@click.group()
def dlq() -> None:
    """Inspect dead-lettered jobs and send them back to the queue."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1), default=None, help="Show at most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@handle_errors
def list_(*, limit: int | None, as_json: bool) -> None:
    """List dead letters: job id, deliveries, reason and the original body."""
    with opened_broker() as broker:
        letters = broker.dead_letters(limit)
    if as_json:
        print_json(
            [
                {
                    # The contract: the id the body carries, null when it has none.
                    "job_id": job_id_of(d.body),
                    "reason": d.reason,
                    "deliveries": d.deliveries,
                    "body": d.body.decode("utf-8", errors="replace"),
                }
                for d in letters
            ]
        )
        return
    if not letters:
        console.print("the dead-letter queue is empty", highlight=False)
        return
    view = table("job_id", "deliveries", "reason", "body", wrap=("reason", "body"))
    for d in letters:
        view.add_row(
            job_id_of(d.body) or "[dim](none)[/]",
            str(d.deliveries),
            short(d.reason, 200),
            short(d.body.decode("utf-8", errors="replace"), 60),
        )
    console.print(view)
    console.print(f"{len(letters)} dead letter(s)", highlight=False)


@dlq.command()
@click.argument("job_ids", metavar="[JOB_ID...]", nargs=-1)
@click.option("--all", "redrive_all", is_flag=True, help="Send every dead letter back.")
@handle_errors
def redrive(*, job_ids: tuple[str, ...], redrive_all: bool) -> None:
    """Send dead letters back to the queue; their records become queued, failures reset.

    Name the jobs, or pass --all. Ids that are not in the dead-letter queue are an error and
    then nothing is sent back.
    """
    if bool(job_ids) == redrive_all:
        fail("name the jobs to redrive, or pass --all (not both)", EXIT_USAGE)
    wanted = [validate_job_id(j) for j in dict.fromkeys(job_ids)]
    store = state().store()
    with opened_broker() as broker:
        present = [d.job_id for d in broker.dead_letters()]
        if redrive_all:
            ids = [j for j in dict.fromkeys(present) if j is not None]
        else:
            missing = [j for j in wanted if j not in present]
            if missing:
                fail(f"not in the dead-letter queue: {', '.join(missing)}; nothing was redriven")
            ids = wanted
        # Records first, as for submit: a worker that gets the message at once finds it queued.
        before = {j: store.get(j) for j in ids}
        for job_id in ids:
            store.update(job_id, state=JobState.QUEUED, failures=0, error=None)
        try:
            count = broker.redrive(None if redrive_all else ids)
        except LrtError:
            for job_id, record in before.items():
                if record is not None:
                    store.put(record)
                else:
                    store.delete(job_id)
            raise
    console.print(f"redrove {count} job(s) to the queue", highlight=False)
