"""The ``dry-run`` scaler: prints what would change and changes nothing.

With the SaladCloud settings present it reads the real container group (read-only) so the
decision is the one the ``salad`` scaler would make now; without them it simulates a group
that starts stopped at 0 replicas and follows its own (printed) changes, which is enough to
watch a policy at work against a real queue. It never writes the autoscaler's memory either:
a dry run next to a real autoscaler does not disturb its cool-down.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, ClassVar, TextIO

from lrtkit.autoscale.provider import GroupState, ScalingProvider, replica_limit

if TYPE_CHECKING:
    from lrtkit.config import Settings


class DryRunScaler:
    """Prints ``dry-run: would ...`` on stderr for every change; keeps a simulated group.

    stderr, next to the decision log line, so ``--json`` output on stdout stays pure JSON.
    """

    name: ClassVar[str] = "dry-run"
    persist_state: ClassVar[bool] = False

    def __init__(self, *, source: ScalingProvider | None = None, out: TextIO | None = None) -> None:
        self.source = source
        self.replica_limit = replica_limit(source) if source is not None else None
        self._out = out
        self._simulated = GroupState(replicas=0, running=False, status="stopped")
        self._read = False
        self.changes: list[str] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> DryRunScaler:
        source: ScalingProvider | None = None
        if (
            settings.salad_api_key
            and settings.salad_org
            and settings.salad_project
            and settings.salad_container_group
        ):
            from lrtkit.autoscale.salad import SaladScaler

            source = SaladScaler.from_settings(settings)
        return cls(source=source)

    def describe(self) -> str:
        what = self.source.describe() if self.source is not None else "a simulated group"
        return f"dry run on {what}"

    def get_state(self) -> GroupState:
        # Read the real group once; afterwards follow the simulated changes.
        if self.source is not None and not self._read:
            self._simulated = self.source.get_state()
            self._read = True
        return self._simulated

    def set_replicas(self, replicas: int) -> None:
        s = self._simulated
        self._simulated = GroupState(replicas=replicas, running=s.running, status=s.status)
        self._say(f"would set replicas to {replicas}")

    def start(self) -> None:
        self._simulated = GroupState(self._simulated.replicas, running=True, status="running")
        self._say("would start the group")

    def stop(self) -> None:
        self._simulated = GroupState(self._simulated.replicas, running=False, status="stopped")
        self._say("would stop the group")

    def _say(self, text: str) -> None:
        self.changes.append(text)
        out = self._out or sys.stderr
        out.write(f"dry-run: {text} ({self.describe()})\n")
        out.flush()
