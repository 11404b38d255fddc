"""``lrtkit demo``: the whole story on the embedded default, no configuration needed."""

from __future__ import annotations

from pathlib import Path

import click

from lrtkit.cli.common import console, handle_errors


@click.command()
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run in this new or empty folder and keep it (queue, records, checkpoints, logs); "
    "default: a temporary folder, removed at the end.",
)
@click.option(
    "--jobs", type=click.IntRange(2, 20), default=6, show_default=True, help="Jobs to submit."
)
@click.option(
    "--step-seconds",
    type=click.FloatRange(0.1, 5),
    default=0.25,
    show_default=True,
    help="How long each step of a job takes.",
)
@handle_errors
def demo(*, folder: Path | None, jobs: int, step_seconds: float) -> None:
    """Submit sum jobs, start two workers, SIGKILL one mid-job, watch the other resume it.

    Uses the local SQLite broker and file storage in a private folder: your settings and
    queues are not touched. Exit 0 only if every result equals n(n+1)/2 and the killed job
    was resumed from its checkpoint.
    """
    from lrtkit.demo.runner import run_demo

    raise SystemExit(run_demo(folder, jobs=jobs, step_seconds=step_seconds, console=console))
