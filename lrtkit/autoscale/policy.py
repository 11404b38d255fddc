"""How many replicas a queue depth asks for.

Two policies, both counting every job that still needs a machine (waiting + in flight):

* ``proportional``: ``ceil((waiting + in_flight) / jobs_per_replica)``; with one job per
  replica, one replica per job (what the SaladCloud guides do).
* ``steps``: a threshold table like ``"1:1,50:2,100:3,500:5,1000:8,5000:10"`` (at least 1 job:
  1 replica, at least 50: 2, ...), the shape of the CloudWatch-alarm thresholds users of
  serverless SQS workers know. Below the first threshold: 0 replicas.

A policy only answers "how many for this depth"; clamping to min/max, the in-flight floor and
the cool-down belong to :mod:`lrtkit.autoscale.decision`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from lrtkit.errors import ConfigError

POLICIES = ("proportional", "steps")


class Policy(Protocol):
    """Replicas wanted for a depth, before clamping."""

    @property
    def name(self) -> str: ...

    def replicas_for(self, waiting: int, in_flight: int) -> int: ...


@dataclass(frozen=True)
class Proportional:
    """One replica per ``jobs_per_replica`` jobs waiting or running, rounded up."""

    jobs_per_replica: int = 1
    name: str = "proportional"

    def __post_init__(self) -> None:
        if self.jobs_per_replica < 1:
            raise ConfigError(
                f"LRT_AUTOSCALE_JOBS_PER_REPLICA must be at least 1 (got {self.jobs_per_replica})"
            )

    def replicas_for(self, waiting: int, in_flight: int) -> int:
        return math.ceil(max(0, waiting + in_flight) / self.jobs_per_replica)


@dataclass(frozen=True)
class Step:
    """At least ``threshold`` jobs (waiting + in flight) ask for ``replicas`` replicas."""

    threshold: int
    replicas: int


@dataclass(frozen=True)
class Steps:
    """The replicas of the highest step whose threshold the job count reaches; else 0."""

    steps: tuple[Step, ...]
    name: str = "steps"

    def replicas_for(self, waiting: int, in_flight: int) -> int:
        total = max(0, waiting + in_flight)
        replicas = 0
        for step in self.steps:
            if total >= step.threshold:
                replicas = step.replicas
        return replicas

    def describe(self) -> str:
        return ",".join(f"{s.threshold}:{s.replicas}" for s in self.steps)


def parse_steps(text: str, *, variable: str = "LRT_AUTOSCALE_STEPS") -> tuple[Step, ...]:
    """Parse ``"THRESHOLD:REPLICAS,..."``; :class:`ConfigError` names the bad entry.

    Thresholds must be at least 1 and strictly increasing; replicas must be at least 0 and
    never decrease as the threshold grows (more work never asks for fewer machines).
    """
    entries = [e.strip() for e in text.split(",")]
    if not text.strip() or not any(entries):
        raise ConfigError(
            f'{variable} is empty: give "THRESHOLD:REPLICAS" pairs, e.g. "1:1,50:2,100:3"'
        )
    steps: list[Step] = []
    for position, entry in enumerate(entries, start=1):
        where = f"{variable} entry {position} ({entry!r})"
        threshold_text, sep, replicas_text = entry.partition(":")
        if not sep:
            raise ConfigError(f'{where} is not "THRESHOLD:REPLICAS", e.g. "50:2"')
        try:
            threshold = int(threshold_text.strip())
            replicas = int(replicas_text.strip())
        except ValueError:
            raise ConfigError(f"{where}: threshold and replicas must be whole numbers") from None
        if threshold < 1:
            raise ConfigError(f"{where}: the threshold must be at least 1 job")
        if replicas < 0:
            raise ConfigError(f"{where}: replicas cannot be negative")
        if steps and threshold <= steps[-1].threshold:
            raise ConfigError(f"{where}: thresholds must increase (after {steps[-1].threshold})")
        if steps and replicas < steps[-1].replicas:
            raise ConfigError(
                f"{where}: replicas must not decrease as the threshold grows "
                f"(after {steps[-1].threshold}:{steps[-1].replicas})"
            )
        steps.append(Step(threshold, replicas))
    return tuple(steps)


def make_policy(name: str, *, jobs_per_replica: int = 1, steps: str = "") -> Policy:
    """Build the policy ``name`` (``proportional`` or ``steps``)."""
    key = name.strip().lower()
    if key == "proportional":
        return Proportional(jobs_per_replica)
    if key == "steps":
        return Steps(parse_steps(steps))
    raise ConfigError(
        f"LRT_AUTOSCALE_POLICY={name!r} is not a policy: choose one of {', '.join(POLICIES)}"
    )
