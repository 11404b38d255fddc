"""One autoscaling decision: clamp, in-flight floor, cool-down, and what to do.

Rules, in order:

1. The policy gives a replica count for ``waiting + in_flight``; it is clamped to
   ``[min, max]`` (``max`` also capped by the provider's own replica limit).
2. Never below the jobs in flight: at least ``ceil(in_flight / jobs_per_replica)`` replicas
   (capped by ``max``), so a scale-in never has to take a machine that holds a job.
3. Scale-up (and starting a stopped group) is immediate.
4. Scale-down waits for the cool-down: ``LRT_AUTOSCALE_COOLDOWN`` seconds since the desired
   count first dropped below the current one, and since the last change. The instants are
   kept in :class:`Memory`, stored between runs, so ``--once`` from cron behaves like the loop.
5. Desired 0 stops the group (after the cool-down); work for a stopped group starts it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from lrtkit.autoscale.policy import Policy, make_policy
from lrtkit.autoscale.provider import GroupState
from lrtkit.errors import ConfigError

if TYPE_CHECKING:
    from lrtkit.config import Settings

SCALE_UP = "scale_up"
SCALE_DOWN = "scale_down"
START = "start"
STOP = "stop"
COOLDOWN = "cooldown"
NONE = "none"
ACTIONS = (SCALE_UP, SCALE_DOWN, START, STOP, COOLDOWN, NONE)


@dataclass(frozen=True)
class AutoscaleConfig:
    """Validated autoscaling settings (from ``LRT_AUTOSCALE_*`` and the command's flags)."""

    policy: Policy
    min_replicas: int = 0
    max_replicas: int = 10
    cooldown: float = 300.0
    jobs_per_replica: int = 1

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ConfigError(f"LRT_AUTOSCALE_MIN must be 0 or more (got {self.min_replicas})")
        if self.max_replicas < 0:
            raise ConfigError(f"LRT_AUTOSCALE_MAX must be 0 or more (got {self.max_replicas})")
        if self.min_replicas > self.max_replicas:
            raise ConfigError(
                f"LRT_AUTOSCALE_MIN ({self.min_replicas}) is above "
                f"LRT_AUTOSCALE_MAX ({self.max_replicas})"
            )
        if self.cooldown < 0:
            raise ConfigError(f"LRT_AUTOSCALE_COOLDOWN must be 0 or more (got {self.cooldown})")
        if self.jobs_per_replica < 1:
            raise ConfigError(
                f"LRT_AUTOSCALE_JOBS_PER_REPLICA must be at least 1 (got {self.jobs_per_replica})"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> AutoscaleConfig:
        policy = make_policy(
            settings.autoscale_policy,
            jobs_per_replica=settings.autoscale_jobs_per_replica,
            steps=settings.autoscale_steps,
        )
        return cls(
            policy=policy,
            min_replicas=settings.autoscale_min,
            max_replicas=settings.autoscale_max,
            cooldown=settings.autoscale_cooldown,
            jobs_per_replica=settings.autoscale_jobs_per_replica,
        )

    def limited(self, limit: int | None) -> tuple[AutoscaleConfig, str | None]:
        """This config with min/max capped to a provider's replica limit, and a warning."""
        if limit is None or self.max_replicas <= limit:
            return self, None
        warning = (
            f"LRT_AUTOSCALE_MAX={self.max_replicas} is above the provider's limit of "
            f"{limit} replicas per group: using {limit}"
        )
        return replace(
            self, max_replicas=limit, min_replicas=min(self.min_replicas, limit)
        ), warning


@dataclass
class Memory:
    """What the autoscaler remembers between runs (wall-clock seconds since the epoch)."""

    below_since: float | None = None
    last_change: float | None = None
    last_desired: int | None = None
    last_action: str | None = None
    updated_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Memory:
        """Tolerant reader: unknown or malformed fields are dropped, not fatal."""
        if not isinstance(data, dict):
            return cls()

        def num(key: str) -> float | None:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value) if math.isfinite(value) else None

        desired = data.get("last_desired")
        action = data.get("last_action")
        return cls(
            below_since=num("below_since"),
            last_change=num("last_change"),
            last_desired=desired if type(desired) is int else None,
            last_action=action if isinstance(action, str) else None,
            updated_at=num("updated_at"),
        )


@dataclass(frozen=True)
class Decision:
    """The outcome of one run; ``line()`` is the log line, ``to_dict()`` the JSON form."""

    queue: str
    waiting: int
    in_flight: int
    policy: str
    current: int
    desired: int
    target: int
    action: str
    status: str
    reason: str = ""
    provider: str = ""
    cooldown_remaining: float = 0.0
    applied: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def line(self) -> str:
        parts = [
            "autoscale",
            f"queue={self.queue}",
            f"waiting={self.waiting}",
            f"in_flight={self.in_flight}",
            f"policy={self.policy}",
            f"current={self.current}",
            f"desired={self.desired}",
            f"action={self.action}",
        ]
        if self.target != self.desired:
            parts.append(f"target={self.target}")
        if self.action == COOLDOWN:
            parts.append(f"cooldown_remaining={self.cooldown_remaining:.0f}s")
        if self.provider:
            parts.append(f"provider={self.provider}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        return data


def desired_replicas(config: AutoscaleConfig, waiting: int, in_flight: int) -> int:
    """Rules 1 and 2: the policy's count, clamped, never below the jobs in flight."""
    wanted = config.policy.replicas_for(waiting, in_flight)
    clamped = min(max(wanted, config.min_replicas), config.max_replicas)
    floor = min(math.ceil(max(0, in_flight) / config.jobs_per_replica), config.max_replicas)
    return max(clamped, floor)


def decide(
    *,
    queue: str,
    waiting: int,
    in_flight: int,
    group: GroupState,
    config: AutoscaleConfig,
    memory: Memory,
    now: float,
) -> tuple[Decision, Memory]:
    """The decision for this depth and group, and the memory to store after applying it."""
    desired = desired_replicas(config, waiting, in_flight)
    current = group.current
    new = replace(memory, last_desired=desired, updated_at=now)
    remaining = 0.0
    reason = ""

    if desired > current or (desired > 0 and not group.running):
        action = START if not group.running else SCALE_UP
        target = desired
        reason = "work waiting" if current == 0 else "more work than replicas"
        new.below_since = None
    elif desired == current:
        if desired == 0 and group.running:
            action, target, reason = STOP, 0, "nothing waits or runs"
        else:
            action, target = NONE, current
        new.below_since = None
    else:
        below_since = memory.below_since if memory.below_since is not None else now
        new.below_since = below_since
        start = max(below_since, memory.last_change or below_since)
        remaining = max(0.0, start + config.cooldown - now)
        if remaining > 0:
            action, target = COOLDOWN, current
            reason = f"scale-down to {desired} after the {config.cooldown:g}s cool-down"
        else:
            action = STOP if desired == 0 else SCALE_DOWN
            target = desired
            reason = "nothing waits or runs" if desired == 0 else "fewer jobs than replicas"
            new.below_since = None

    if action in (SCALE_UP, SCALE_DOWN, START, STOP):
        new.last_change = now
    new.last_action = action
    decision = Decision(
        queue=queue,
        waiting=waiting,
        in_flight=in_flight,
        policy=config.policy.name,
        current=current,
        desired=desired,
        target=target,
        action=action,
        status=group.status,
        reason=reason,
        cooldown_remaining=remaining,
    )
    return decision, new
