"""``lrtkit submit FILE|-``: validate every row, then publish (see :mod:`lrtkit.submit`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from lrtkit.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    console,
    err_console,
    esc,
    fail,
    handle_errors,
    opened_broker,
    print_json,
    state,
)
from lrtkit.errors import InvalidJob

if TYPE_CHECKING:
    from pydantic import BaseModel

    from lrtkit.submit import BadRow, SubmitSummary

SHOW_AT_MOST = 20


@click.command()
@click.argument("source", metavar="FILE|-", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="Input format (default: from the extension, .csv or .jsonl; sniffed for stdin).",
)
@click.option(
    "--handler",
    metavar="MOD:FN",
    default=None,
    help="Validate each row against this handler's payload model before submitting.",
)
@click.option(
    "--skip-invalid", is_flag=True, help="Submit the good rows even if some rows are bad."
)
@click.option("--force", is_flag=True, help="Submit again jobs whose id already has a record.")
@click.option(
    "--strings",
    is_flag=True,
    help="Without --handler, keep every CSV cell as text (default: plain numbers and "
    "true/false become JSON numbers and booleans).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Jobs per publish call.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@handle_errors
def submit(
    *,
    source: str,
    fmt: str | None,
    handler: str | None,
    skip_invalid: bool,
    force: bool,
    strings: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    """Submit jobs from a CSV file (header row) or JSON Lines; '-' reads standard input.

    Every row is checked first (job_id, repeated ids, the handler's payload model with
    --handler); if any row is bad, each is reported with its line number and NOTHING is
    submitted, unless --skip-invalid. Rows without job_id get a UUID. Jobs whose id already
    has a record are skipped unless --force. Exit 2 on bad input, 1 if publishing failed.
    """
    from lrtkit.submit import lookups_needed, read_jobs, validate_rows
    from lrtkit.submit import submit as do_submit

    model = _payload_model(handler)
    rows = read_jobs(source, fmt)
    checked = validate_rows(rows, model, infer_types=not strings)
    if checked.bad:
        _report_bad(checked.bad, len(rows))
        if not skip_invalid:
            fail(
                f"{len(checked.bad)} of {len(rows)} row(s) are bad; nothing was submitted "
                "(fix them, or pass --skip-invalid to submit the good rows)",
                EXIT_USAGE,
            )
    if not checked.jobs:
        if as_json:
            print_json(_summary_json(None, checked.bad))
        else:
            console.print("nothing to submit", highlight=False)
        return

    store = state().store()
    bars = _progress_bar(lookups_needed(checked.jobs), len(checked.jobs))
    with opened_broker() as broker, bars as advance:
        summary = do_submit(
            broker, store, checked.jobs, force=force, batch_size=batch_size, progress=advance
        )
    if as_json:
        print_json(_summary_json(summary, checked.bad))
    else:
        _print_summary(summary, checked.bad)
    if summary.error is not None:
        code = EXIT_USAGE if isinstance(summary.error, InvalidJob) else EXIT_FAILED
        fail(f"publishing stopped: {summary.error}", code)


def _payload_model(handler: str | None) -> type[BaseModel] | None:
    if handler is None:
        return None
    from lrtkit.worker import load_handler

    _, model = load_handler(handler)
    if model is None:
        err_console.print(
            f"note: {esc(handler)} takes a dict (no payload model): only job ids are checked",
            highlight=False,
        )
    return model


def _report_bad(bad: list[BadRow], total: int) -> None:
    for row in bad[:SHOW_AT_MOST]:
        err_console.print(f"[red]bad row[/] {esc(row)}", highlight=False, soft_wrap=True)
    if len(bad) > SHOW_AT_MOST:
        err_console.print(f"... and {len(bad) - SHOW_AT_MOST} more bad row(s)", highlight=False)
    err_console.print(f"{len(bad)} of {total} row(s) are bad", highlight=False)


@contextmanager
def _progress_bar(lookups: int, total: int) -> Iterator[Callable[[str, int], None]]:
    """Rich progress bars on stderr (checking ids, submitting), only on a terminal."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
        transient=True,
    ) as progress:
        tasks = {}
        if lookups:
            tasks["checked"] = progress.add_task("checking ids", total=lookups)
        tasks["submitted"] = progress.add_task("submitting", total=total)
        yield lambda phase, n: progress.advance(tasks[phase], n)


def _print_summary(summary: SubmitSummary, bad: list[BadRow]) -> None:
    parts = [f"submitted {len(summary.submitted)}"]
    if summary.skipped_known:
        parts.append(
            f"skipped {len(summary.skipped_known)} already known (--force submits them again)"
        )
    if bad:
        parts.append(f"skipped {len(bad)} invalid")
    if summary.failed:
        parts.append(f"failed {len(summary.failed)}")
    if summary.not_attempted:
        parts.append(f"not attempted {len(summary.not_attempted)}")
    console.print(", ".join(parts), highlight=False)
    by_reason: dict[str, list[str]] = {}
    for job_id, reason in summary.failed.items():
        by_reason.setdefault(reason, []).append(job_id)
    for reason, ids in list(by_reason.items())[:SHOW_AT_MOST]:
        named = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        err_console.print(
            f"[red]not published[/] {named}: {esc(reason)}", highlight=False, soft_wrap=True
        )
    if len(by_reason) > SHOW_AT_MOST:
        err_console.print(f"... and {len(by_reason) - SHOW_AT_MOST} more reasons", highlight=False)
    if summary.failed or summary.not_attempted:
        err_console.print(
            "the jobs that were not published have no record; run the same command again "
            "to submit them (the published ones are skipped as known)",
            highlight=False,
        )


def _summary_json(summary: SubmitSummary | None, bad: list[BadRow]) -> dict[str, Any]:
    return {
        "submitted": summary.submitted if summary else [],
        "skipped_known": summary.skipped_known if summary else [],
        "invalid": [{"line": b.line, "reason": b.reason, "job_id": b.job_id} for b in bad],
        "failed": summary.failed if summary else {},
        "not_attempted": summary.not_attempted if summary else [],
    }
