"""``lrtkit doctor``: check settings, broker, queues, storage and the handler; say what to fix.

Every check ends up as a row of ``ok``, ``warn`` or ``fail``; doctor itself never stops at the
first problem (except that nothing can be checked without valid settings) and never prints a
traceback. Exit 1 when any check fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click
from pydantic import AliasChoices, SecretStr

from lrtkit.broker import Check
from lrtkit.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    console,
    esc,
    handle_errors,
    print_json,
    state,
    table,
)
from lrtkit.errors import LrtError, PluginLoadError, PluginNotFound

if TYPE_CHECKING:
    from lrtkit.config import Settings

STYLE = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]fail[/]"}
ALWAYS_SHOWN = ("broker", "queue", "storage", "lease_seconds", "max_failures", "max_deliveries")
# Variables of the SaladCloud guides and the broker they belong to.
GUIDE_BROKER_VARIABLES = {
    "SQS_QUEUE_URL": "sqs",
    "SQS_DLQ_URL": "sqs",
    "SQS_AWS_REGION": "sqs",
    "AMQP_URL": "rabbitmq",
    "LRT_SQS_QUEUE_URL": "sqs",
    "LRT_RABBITMQ_URL": "rabbitmq",
    "LRT_REDIS_URL": "redis",
}


@click.command()
@click.option(
    "--handler",
    metavar="MOD:FN",
    default=None,
    help="Also check that this handler imports and has a usable payload model.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the settings and checks as JSON.")
@handle_errors
def doctor(*, handler: str | None, as_json: bool) -> None:
    """Check broker, queues, storage and settings end to end; say what to fix.

    Exit 0 when nothing failed (warnings are allowed), 1 otherwise.
    """
    checks: list[Check] = []
    shown: list[tuple[str, str, str]] = []
    settings = _settings(checks)
    if settings is not None:
        shown = settings_summary(settings)
        checks.extend(_guide_variables(settings))
        checks.extend(_scope(settings))
        checks.extend(_run("broker", lambda: _broker_checks(settings)))
        checks.extend(_run("storage", lambda: _storage_checks(settings)))
    if handler is not None:
        checks.extend(_run("handler", lambda: _handler_checks(handler)))
    failed = [c for c in checks if c.status == "fail"]
    if as_json:
        print_json(
            {
                "settings": [{"variable": v, "value": val, "source": s} for v, val, s in shown],
                "checks": [
                    {"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix}
                    for c in checks
                ],
                "ok": not failed,
            }
        )
    else:
        _print(shown, checks)
    raise SystemExit(EXIT_FAILED if failed else EXIT_OK)


def _settings(checks: list[Check]) -> Settings | None:
    from lrtkit.config import load_settings

    env_file = state().env_file
    try:
        settings = load_settings(env_file=env_file)
    except LrtError as exc:
        checks.append(
            Check(
                "settings",
                "fail",
                str(exc),
                "fix the variable(s) named above (environment or --env-file); "
                "see docs/configuration.md",
            )
        )
        return None
    where = f"environment and {env_file}" if env_file else "environment"
    checks.append(Check("settings", "ok", f"read from the {where}"))
    return settings


def settings_summary(settings: Settings) -> list[tuple[str, str, str]]:
    """``(variable, value, source)`` for the main settings and every one set; secrets hidden."""
    rows = []
    for name, info in type(settings).model_fields.items():
        if name not in ALWAYS_SHOWN and name not in settings.model_fields_set:
            continue
        alias = info.validation_alias
        variable = str(alias.choices[0]) if isinstance(alias, AliasChoices) else name.upper()
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            text = "set (hidden)" if value.get_secret_value() else "empty"
        else:
            text = str(value)
        source = "set" if name in settings.model_fields_set else "default"
        rows.append((variable, text, source))
    return rows


def _guide_variables(settings: Settings) -> list[Check]:
    environ = settings.environ
    checks = []
    for variable, broker in GUIDE_BROKER_VARIABLES.items():
        if environ.get(variable) and settings.broker != broker:
            checks.append(
                Check(
                    "broker choice",
                    "warn",
                    f"{variable} is set but LRT_BROKER={settings.broker}",
                    f"set LRT_BROKER={broker} to use it",
                )
            )
            break
    return checks


def _scope(settings: Settings) -> list[Check]:
    """A shared queue with a folder for storage: each machine would see only its own records."""
    try:
        scheme = settings.storage_scheme
    except LrtError:
        return []  # the storage checks report it
    if settings.broker != "local" and scheme == "file":
        return [
            Check(
                "storage scope",
                "warn",
                f"LRT_BROKER={settings.broker} serves many machines but LRT_STORAGE="
                f"{settings.storage} is a local folder: checkpoints, results and job records "
                "stay on each machine, so a job resumed elsewhere starts over",
                "set LRT_STORAGE=s3://BUCKET/PREFIX (or the guides' R2_BUCKET_NAME)",
            )
        ]
    return []


def _load_failure(kind: str, exc: LrtError, settings_fix: str) -> list[Check]:
    """The one check to show when the broker or storage plugin could not even be built."""
    if isinstance(exc, PluginNotFound):
        return [Check(f"{kind} plugin", "fail", str(exc), _install_hint(kind, exc.name))]
    if isinstance(exc, PluginLoadError):
        return [Check(f"{kind} plugin", "fail", str(exc), _load_hint(exc))]
    return [Check(kind, "fail", str(exc), settings_fix)]


def _broker_checks(settings: Settings) -> list[Check]:
    from lrtkit.plugins import load_broker

    try:
        broker = load_broker(settings)
    except LrtError as exc:
        return _load_failure("broker", exc, "fix the broker settings named above")
    try:
        ok = Check("broker plugin", "ok", f"{settings.broker} ({type(broker).__name__})")
        return [ok, *broker.diagnose()]
    finally:
        broker.close()


def _storage_checks(settings: Settings) -> list[Check]:
    from lrtkit.plugins import load_storage

    try:
        storage = load_storage(settings)
    except LrtError as exc:
        return _load_failure("storage", exc, "fix LRT_STORAGE or the storage settings")
    return [Check("storage plugin", "ok", storage.url), *storage.diagnose()]


def _handler_checks(spec: str) -> list[Check]:
    from lrtkit.worker import load_handler

    try:
        _, model = load_handler(spec)
    except LrtError as exc:
        return [Check("handler", "fail", str(exc), "check the MOD:FN spelling and PYTHONPATH")]
    what = f"payload model {model.__name__}" if model is not None else "takes the body as a dict"
    return [Check("handler", "ok", f"{spec} imports; {what}")]


def _run(name: str, build: Callable[[], list[Check]]) -> list[Check]:
    """Run a group of checks; an unexpected exception becomes a failed check, not a traceback."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - doctor reports everything
        return [Check(name, "fail", f"{type(exc).__name__}: {exc}", "")]


def _install_hint(kind: str, name: str) -> str:
    known = {"sqs": "lrtkit-sqs", "rabbitmq": "lrtkit-rabbitmq", "redis": "lrtkit-redis"}
    if kind == "broker" and name in known:
        return f"pip install {known[name]} (or pick another LRT_BROKER)"
    if kind == "storage" and name == "s3":
        return 'pip install "lrtkit[s3]"'
    variable = "LRT_BROKER" if kind == "broker" else "the scheme of LRT_STORAGE"
    return f"check {variable}, or install the package that provides {name!r}"


def _load_hint(exc: PluginLoadError) -> str:
    if isinstance(exc.cause, ModuleNotFoundError):
        return f"install the missing module {exc.cause.name!r}"
    return "reinstall the plugin; the error above says what failed"


def _print(shown: list[tuple[str, str, str]], checks: list[Check]) -> None:
    if shown:
        view = table("variable", "value", "source", title="settings", wrap=("value",))
        for variable, value, source in shown:
            view.add_row(variable, esc(value), source if source == "set" else f"[dim]{source}[/]")
        console.print(view)
    results = table("", "check", "detail", title="checks", wrap=("detail",))
    for check in checks:
        detail = esc(check.detail)
        if check.fix:
            detail += f"\n[bold]fix:[/] {esc(check.fix)}"
        results.add_row(STYLE.get(check.status, esc(check.status)), esc(check.name), detail)
    console.print(results, highlight=False)
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    if failed:
        console.print(f"[bold red]{failed} check(s) failed[/], {warned} warning(s)")
    else:
        console.print(f"[green]all checks passed[/] ({warned} warning(s))")
