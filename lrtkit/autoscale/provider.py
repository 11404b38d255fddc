"""The scaling provider protocol: what the autoscaler needs from a fleet.

A provider is a plugin in the ``lrtkit.scalers`` entry-point namespace: a class with a
``from_settings(settings)`` classmethod whose instances have the methods of
:class:`ScalingProvider`. A third party publishes, for example::

    [project.entry-points."lrtkit.scalers"]
    my-cloud = "my_package.scaler:MyCloudScaler"

and ``lrtkit autoscale --provider my-cloud`` drives it. Nothing needs to subclass anything:
the protocol is structural. ``replica_limit`` (the provider's own maximum per group, or
``None``) and ``persist_state`` (False for providers that must change nothing, like
``dry-run``) are optional attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from lrtkit.errors import ConfigError

REQUIRED_METHODS = ("get_state", "set_replicas", "start", "stop")


@dataclass(frozen=True)
class GroupState:
    """A fleet as the provider sees it.

    ``replicas`` is the configured replica count; ``running`` is False when the group is
    stopped (then no replica runs whatever ``replicas`` says); ``status`` is the provider's
    own word for it (SaladCloud: pending, running, stopped, failed, deploying).
    """

    replicas: int
    running: bool
    status: str

    @property
    def current(self) -> int:
        """Replicas that count as running now: ``replicas``, or 0 when stopped."""
        return self.replicas if self.running else 0


@runtime_checkable
class ScalingProvider(Protocol):
    """What the autoscaler calls. Methods raise :class:`~lrtkit.errors.ScalerError`."""

    def describe(self) -> str:
        """The fleet this provider drives, for log lines (no secrets)."""
        ...

    def get_state(self) -> GroupState:
        """The current replica count and whether the group runs."""
        ...

    def set_replicas(self, replicas: int) -> None:
        """Set the replica count (the group may be stopped: it keeps the number)."""
        ...

    def start(self) -> None:
        """Start a stopped group."""
        ...

    def stop(self) -> None:
        """Stop the group: no replica runs, nothing is billed."""
        ...


def replica_limit(provider: object) -> int | None:
    """The provider's maximum replicas per group, if it declares one."""
    limit = getattr(provider, "replica_limit", None)
    return int(limit) if isinstance(limit, int) else None


def persists_state(provider: object) -> bool:
    """False for providers that must change nothing, not even the autoscaler's memory."""
    return bool(getattr(provider, "persist_state", True))


def check_provider(name: str, provider: Any) -> ScalingProvider:
    """Return ``provider`` if it has the protocol's methods, else a ConfigError naming them."""
    missing = [
        m for m in (*REQUIRED_METHODS, "describe") if not callable(getattr(provider, m, None))
    ]
    if missing:
        raise ConfigError(
            f"the scaler plugin {name!r} ({type(provider).__name__}) lacks "
            f"{', '.join(missing)}: see lrtkit.autoscale.provider.ScalingProvider"
        )
    return provider  # type: ignore[no-any-return]
