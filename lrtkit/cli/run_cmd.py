"""``lrtkit run MOD:FN`` / ``lrtkit run --command CMD``: the worker (see docs/worker.md)."""

from __future__ import annotations

import sys

import click

from lrtkit.cli.common import EXIT_USAGE, fail, handle_errors, state


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("handler", metavar="MOD:FN", required=False)
@click.option(
    "--command",
    "command",
    metavar="CMD",
    default=None,
    help="Run this program for each job instead of a Python handler (see docs/worker.md).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Jobs run at once, each in its own thread.",
)
@click.option(
    "--exit-when-idle",
    "exit_when_idle",
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    default=None,
    help="Exit 0 once there has been nothing to do for this long.",
)
@click.option(
    "--max-jobs",
    "max_jobs",
    metavar="N",
    type=click.IntRange(min=1),
    default=None,
    help="Exit 0 after this many jobs finished.",
)
@click.option(
    "--checkpoint-interval",
    "checkpoint_interval",
    metavar="SECONDS",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Command mode: upload LRT_CHECKPOINT_DIR this often while the command runs "
    "(default: every heartbeat, LRT_LEASE_SECONDS/3).",
)
@handle_errors
def run(  # noqa: PLR0917 - click passes options positionally
    handler: str | None,
    command: str | None,
    concurrency: int,
    exit_when_idle: float | None,
    max_jobs: int | None,
    checkpoint_interval: float | None,
) -> None:
    """Serve jobs from the queue with a Python handler MOD:FN, or with --command CMD.

    MOD:FN is imported like `python -m` does (the current directory is importable), e.g.
    `lrtkit run app:train` calls train(job, ctx) from ./app.py. The broker is LRT_BROKER, the
    storage LRT_STORAGE. SIGTERM/SIGINT stop gracefully (LRT_GRACE_SECONDS); a second one
    exits at once.
    """
    from lrtkit.worker import run_worker

    if (handler is None) == (command is None):
        fail("give exactly one of MOD:FN or --command CMD (see lrtkit run --help)", EXIT_USAGE)
    if checkpoint_interval is not None and command is None:
        fail("--checkpoint-interval is for --command mode only", EXIT_USAGE)
    code = run_worker(
        state().settings(),
        handler=handler,
        command=command,
        concurrency=concurrency,
        exit_when_idle=exit_when_idle,
        max_jobs=max_jobs,
        checkpoint_interval=checkpoint_interval,
    )
    sys.exit(code)
