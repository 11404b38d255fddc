"""What every command shares: settings, plugins, errors to exit codes, output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
from rich.console import Console

from lrtkit.errors import ConfigError, InvalidJob, LrtError

if TYPE_CHECKING:
    from lrtkit.broker import Broker
    from lrtkit.config import Settings
    from lrtkit.storage.base import Storage

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

console = Console()
err_console = Console(stderr=True)


@dataclass
class CliState:
    """Per-invocation state held on the click context."""

    env_file: str | None = None
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        if self._settings is None:
            from lrtkit.config import load_settings

            self._settings = load_settings(env_file=self.env_file)
        return self._settings

    def broker(self) -> Broker:
        from lrtkit.plugins import load_broker

        return load_broker(self.settings())

    def storage(self) -> Storage:
        from lrtkit.plugins import load_storage

        return load_storage(self.settings())


def state() -> CliState:
    obj = click.get_current_context().find_root().obj
    if not isinstance(obj, CliState):
        obj = CliState()
        click.get_current_context().find_root().obj = obj
    return obj


def fail(message: str, code: int = EXIT_FAILED) -> None:
    """Print ``message`` on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


P = ParamSpec("P")
R = TypeVar("R")


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn lrtkit errors into one clear line and the documented exit code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (ConfigError, InvalidJob) as exc:
            fail(str(exc), EXIT_USAGE)
        except LrtError as exc:
            fail(str(exc), EXIT_FAILED)
        raise AssertionError("unreachable")

    return wrapper


def print_json(data: Any) -> None:
    """Stable JSON on stdout (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def opened_broker() -> Iterator[Broker]:
    broker = state().broker()
    try:
        yield broker
    finally:
        broker.close()
