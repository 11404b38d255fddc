"""``lrtkit autoscale``: size the fleet from the queue depth, once or in a loop."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

from lrtkit.cli.common import handle_errors, print_json, state

POLICY_CHOICES = ("proportional", "steps")


@click.command()
@click.option("--once", is_flag=True, help="Make one decision and exit (cron, Lambda, Cloud Run).")
@click.option(
    "--interval",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    help="Seconds between decisions in the loop.",
)
@click.option(
    "--policy",
    type=click.Choice(POLICY_CHOICES, case_sensitive=False),
    default=None,
    help="proportional or steps [env LRT_AUTOSCALE_POLICY, default proportional].",
)
@click.option(
    "--provider",
    default=None,
    help="Scaler plugin: salad, dry-run, or any installed one [env LRT_AUTOSCALE_PROVIDER].",
)
@click.option(
    "--min",
    "min_replicas",
    type=click.IntRange(min=0),
    default=None,
    help="Fewest replicas [env LRT_AUTOSCALE_MIN, default 0].",
)
@click.option(
    "--max",
    "max_replicas",
    type=click.IntRange(min=0),
    default=None,
    help="Most replicas [env LRT_AUTOSCALE_MAX, default 10].",
)
@click.option(
    "--cooldown",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds before a scale-down [env LRT_AUTOSCALE_COOLDOWN, default 300].",
)
@click.option(
    "--jobs-per-replica",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs one replica runs at once [env LRT_AUTOSCALE_JOBS_PER_REPLICA, default 1].",
)
@click.option(
    "--steps",
    default=None,
    help='Threshold table for the steps policy, e.g. "1:1,50:2,100:3" [env LRT_AUTOSCALE_STEPS].',
)
@click.option("--json", "as_json", is_flag=True, help="Print each decision as JSON on stdout.")
@handle_errors
def autoscale(
    *,
    once: bool,
    interval: float,
    policy: str | None,
    provider: str | None,
    min_replicas: int | None,
    max_replicas: int | None,
    cooldown: float | None,
    jobs_per_replica: int | None,
    steps: str | None,
    as_json: bool,
) -> None:
    """Scale the worker fleet from the queue depth (waiting + in flight).

    Scale-up is immediate; scale-down waits for the cool-down and never goes below the jobs
    in flight; with nothing waiting or running (and --min 0) the group is stopped. Every
    decision is logged as one line on stderr. The cool-down memory lives in LRT_STORAGE, so
    --once from cron behaves like the loop.
    """
    from lrtkit.autoscale.autoscaler import Autoscaler
    from lrtkit.autoscale.decision import Decision

    flags: dict[str, Any] = {
        "autoscale_policy": policy,
        "autoscale_provider": provider,
        "autoscale_min": min_replicas,
        "autoscale_max": max_replicas,
        "autoscale_cooldown": cooldown,
        "autoscale_jobs_per_replica": jobs_per_replica,
        "autoscale_steps": steps,
    }
    settings = (
        state().settings().with_overrides(**{k: v for k, v in flags.items() if v is not None})
    )

    def show(decision: Decision) -> None:
        if as_json:
            print_json(decision.to_dict())

    with _decision_log(settings.log_level), Autoscaler.from_settings(settings) as autoscaler:
        if once:
            show(autoscaler.run_once())
            return
        stop = threading.Event()
        with _stop_on_signals(stop):
            autoscaler.run(interval, stop=stop, on_decision=show)


@contextmanager
def _decision_log(level: str) -> Iterator[None]:
    """Autoscale log lines on stderr for this command (removed afterwards)."""
    logger = logging.getLogger("lrtkit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    numeric = logging.getLevelName(level.upper())
    old_level = logger.level
    logger.setLevel(numeric if isinstance(numeric, int) else logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT end the loop after the current decision."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("lrtkit.autoscale").info(
            "autoscaler stopping (%s)", signal.Signals(signum).name
        )
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
