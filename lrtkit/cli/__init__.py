"""The ``lrtkit`` console script.

Commands are imported only when used (click's lazy-group pattern): ``lrtkit status`` does not
pay for importing boto3 or pika, and each command lives in a small module of its own.
Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad input.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from lrtkit import __version__

# name -> "module:attribute"; each module holds one command (or one group).
COMMANDS: dict[str, str] = {
    "setup": "lrtkit.cli.admin_cmd:setup",
    "submit": "lrtkit.cli.submit_cmd:submit",
    "run": "lrtkit.cli.run_cmd:run",
    "status": "lrtkit.cli.admin_cmd:status",
    "jobs": "lrtkit.cli.admin_cmd:jobs",
    "cancel": "lrtkit.cli.admin_cmd:cancel",
    "dlq": "lrtkit.cli.dlq_cmd:dlq",
    "autoscale": "lrtkit.cli.autoscale_cmd:autoscale",
    "doctor": "lrtkit.cli.doctor_cmd:doctor",
    "plugins": "lrtkit.cli.plugins_cmd:plugins",
    "demo": "lrtkit.cli.demo_cmd:demo",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="Read settings from this .env file too (environment variables win).",
)
@click.version_option(__version__, prog_name="lrtkit")
@click.pass_context
def cli(ctx: click.Context, env_file: str | None) -> None:
    """Long, interruptible jobs on machines that can vanish.

    The broker is chosen by LRT_BROKER (local, sqs, rabbitmq, ...), the storage by LRT_STORAGE.
    """
    from lrtkit.cli.common import CliState

    ctx.obj = CliState(env_file=env_file)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lrtkit")
