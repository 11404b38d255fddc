"""What every command shares: settings, plugins, errors to exit codes, output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lrtkit.errors import ConfigError, InvalidJob, LrtError

if TYPE_CHECKING:
    from lrtkit.broker import Broker
    from lrtkit.config import Settings
    from lrtkit.records import JobStore
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

    def store(self) -> JobStore:
        """The job records, in the storage named by ``LRT_STORAGE``."""
        from lrtkit.records import JobStore

        return JobStore(self.storage())


def state() -> CliState:
    obj = click.get_current_context().find_root().obj
    if not isinstance(obj, CliState):
        obj = CliState()
        click.get_current_context().find_root().obj = obj
    return obj


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``message`` on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
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
        except OSError as exc:  # a local file or socket: still one line, not a traceback
            fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
        except KeyboardInterrupt:
            fail("interrupted", 130)

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


def table(
    *columns: str,
    title: str | None = None,
    wrap: tuple[str, ...] = (),
    widths: dict[str, int] | None = None,
) -> Table:
    """A plain rich table with the look every command shares.

    Columns stay on one line (cut with an ellipsis when the terminal is too narrow), except
    those named in ``wrap``, which fold: reasons, details and advice must be read whole.
    ``widths`` gives columns a minimum width (never cut below it).
    """
    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for name in columns:
        if name in wrap:
            t.add_column(name, overflow="fold", min_width=12)
        else:
            least = (widths or {}).get(name, len(name))
            t.add_column(name, no_wrap=True, overflow="ellipsis", min_width=least)
    return t


def show_progress(progress: Any, *, metrics: bool = True) -> str:
    """A job record's progress as ``done/total (pct) key=value ...``; empty if none."""
    if not progress:
        return ""
    done, total = progress.get("done"), progress.get("total")
    text = ""
    if done is not None:
        text = f"{_num(done)}/{_num(total)}" if total else _num(done)
        if total:
            text += f" ({100 * done / total:.0f}%)"
    shown = (progress.get("metrics") or {}) if metrics else {}
    extra = " ".join(f"{k}={_num(v)}" for k, v in shown.items())
    return esc(f"{text} {extra}".strip())


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if not value.is_integer() else str(int(value))
    return str(value)


def short(value: Any, width: int = 60) -> str:
    """One line of at most ``width`` characters (JSON for anything that is not text).

    Escaped for rich: data such as ``[/x]`` in a job's error prints as it is.
    """
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return esc(text if len(text) <= width else text[: width - 1] + "…")


def esc(text: object) -> str:
    """``text`` escaped for rich markup (anything that comes from users, brokers or files)."""
    return escape(str(text))
