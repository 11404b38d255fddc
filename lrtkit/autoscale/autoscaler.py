"""The autoscaler: read the depth, ask the provider, decide, apply, remember, log one line.

``run_once`` is what cron, a Lambda function or a Cloud Run job calls; ``run`` repeats it
every ``interval`` seconds. Every decision is logged as one line on the ``lrtkit.autoscale``
logger, e.g.::

    autoscale queue=jobs waiting=12 in_flight=3 policy=proportional current=2 desired=15
    action=scale_up
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from lrtkit.autoscale.decision import (
    SCALE_DOWN,
    SCALE_UP,
    START,
    STOP,
    AutoscaleConfig,
    Decision,
    Memory,
    decide,
)
from lrtkit.autoscale.provider import (
    GroupState,
    ScalingProvider,
    check_provider,
    persists_state,
    replica_limit,
)
from lrtkit.autoscale.state import StateStore
from lrtkit.errors import ConfigError, LrtError, ScalerConfigError

if TYPE_CHECKING:
    from lrtkit.broker import Broker
    from lrtkit.config import Settings

log = logging.getLogger("lrtkit.autoscale")


class Autoscaler:
    """Sizes one provider's fleet from one queue's depth."""

    def __init__(
        self,
        *,
        broker: Broker,
        provider: ScalingProvider,
        config: AutoscaleConfig,
        queue: str,
        store: StateStore | None = None,
        provider_name: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.provider = provider
        self.queue = queue
        self.store = store
        self.provider_name = provider_name
        self.clock = clock
        self.config, warning = config.limited(replica_limit(provider))
        self.warnings: tuple[str, ...] = (warning,) if warning else ()
        if warning:
            log.warning(warning)
        self._persist = persists_state(provider) and store is not None
        self._memory: Memory | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, provider: str | None = None) -> Autoscaler:
        """Broker from ``LRT_BROKER``, provider from ``provider`` or ``LRT_AUTOSCALE_PROVIDER``,
        memory in the storage of ``LRT_STORAGE``."""
        from lrtkit.plugins import load_broker, load_scaler, load_storage

        config = AutoscaleConfig.from_settings(settings)
        name = provider or settings.autoscale_provider
        scaler = check_provider(name, load_scaler(name, settings))
        store = StateStore(load_storage(settings), settings.queue)
        broker = load_broker(settings)
        if not broker.counts_in_flight:
            broker.close()
            raise ScalerConfigError(
                f"the {settings.broker} broker cannot count in-flight jobs as configured: it "
                "would see idle workers as busy and never scale the fleet in; for RabbitMQ set "
                "LRT_RABBITMQ_MANAGEMENT_URL (the management API gives the unacked count)"
            )
        return cls(
            broker=broker,
            provider=scaler,
            config=config,
            queue=settings.queue,
            store=store,
            provider_name=name,
        )

    def close(self) -> None:
        self.broker.close()
        close = getattr(self.provider, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> Autoscaler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one decision ----------------------------------------------------------------------

    def run_once(self) -> Decision:
        """Decide and apply once; return the decision (also logged as one line)."""
        depth = self.broker.depth()
        group = self.provider.get_state()
        memory = self._load_memory()
        decision, new_memory = decide(
            queue=self.queue,
            waiting=depth.waiting,
            in_flight=depth.in_flight,
            group=group,
            config=self.config,
            memory=memory,
            now=self.clock(),
        )
        decision = replace(decision, provider=self.provider_name, warnings=self.warnings)
        try:
            self._apply(decision, group)
        except LrtError as exc:
            log.error("%s failed: %s", decision.line(), exc)
            raise
        self._memory = new_memory
        if self._persist and self.store is not None:
            self.store.save(new_memory)
        decision = replace(decision, applied=decision.action in (SCALE_UP, SCALE_DOWN, START, STOP))
        log.info(decision.line())
        return decision

    def _load_memory(self) -> Memory:
        if self._memory is None or self._persist:
            self._memory = self.store.load() if self.store is not None else Memory()
        return self._memory

    def _apply(self, decision: Decision, group: GroupState) -> None:
        if decision.action == STOP:
            self.provider.stop()
        elif decision.action in (SCALE_UP, SCALE_DOWN, START):
            if group.replicas != decision.target:
                self.provider.set_replicas(decision.target)
            if not group.running:
                self.provider.start()

    # -- the loop --------------------------------------------------------------------------

    def run(
        self,
        interval: float,
        *,
        stop: threading.Event | None = None,
        max_runs: int | None = None,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> int:
        """Decide every ``interval`` seconds until ``stop`` is set; return the runs made.

        Configuration errors (bad key, missing group, bad settings) end the loop; anything
        else lrtkit raises (a broker blip, an API outage after retries) is logged and the
        next run tries again.
        """
        stop = stop or threading.Event()
        runs = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                decision = self.run_once()
            except ConfigError:
                raise
            except LrtError as exc:
                log.error("autoscale run failed: %s (retrying in %.0fs)", exc, interval)
            else:
                if on_decision is not None:
                    on_decision(decision)
            runs += 1
            if max_runs is not None and runs >= max_runs:
                break
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
        return runs
