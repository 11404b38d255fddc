"""``lrtkit plugins``: the broker, storage and scaler plugins installed, and whether they load."""

from __future__ import annotations

import dataclasses

import click

from lrtkit.cli.common import console, esc, handle_errors, print_json, table
from lrtkit.plugins import describe_installed

KINDS = {"lrtkit.brokers": "broker", "lrtkit.storage": "storage", "lrtkit.scalers": "scaler"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@handle_errors
def plugins(*, as_json: bool) -> None:
    """List installed plugins (brokers, storage, scalers) and whether each imports.

    A plugin that does not import is shown with the error (often a missing optional
    dependency, e.g. boto3 for s3 storage: pip install "lrtkit[s3]"); it only matters when
    the settings select it, which ``lrtkit doctor`` checks.
    """
    infos = describe_installed()
    if as_json:
        print_json([dataclasses.asdict(i) for i in infos])
    else:
        view = table("kind", "name", "package", "status", wrap=("status",))
        for info in infos:
            view.add_row(
                esc(KINDS.get(info.namespace, info.namespace)),
                esc(info.name),
                esc(f"{info.distribution or '?'} {info.version or ''}".strip()),
                "[green]ok[/]" if info.error is None else f"[red]broken[/]: {esc(info.error)}",
            )
        console.print(view)
