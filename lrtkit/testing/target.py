"""What a plugin hands the contract suites: an environment that selects a fresh queue/prefix."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lrtkit.broker import Broker
from lrtkit.config import Settings, load_settings
from lrtkit.plugins import load_broker, load_storage
from lrtkit.storage.base import Storage


def unique_name(prefix: str = "lrt-test") -> str:
    """A queue, stream or prefix name no other test (or test run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class BrokerTarget:
    """A fresh queue on a real broker, described by environment variables.

    ``env`` holds every variable that selects and configures it (``LRT_BROKER``, ``LRT_QUEUE``
    and the plugin's own, credentials included), so the same target serves in-process brokers
    (:meth:`broker`) and worker subprocesses (:meth:`subprocess_env`). ``cleanup`` deletes the
    queue and everything made for it; the fixture that yields the target calls it.
    """

    env: dict[str, str]
    cleanup: Callable[[], None] = lambda: None
    brokers: list[Broker] = field(default_factory=list)

    def settings(self, **overrides: Any) -> Settings:
        """Settings read from ``env`` only (not ``os.environ``), with field overrides."""
        return load_settings(environ=self.env).with_overrides(**overrides)

    def broker(self, **overrides: Any) -> Broker:
        """A new broker client for this queue; closed at teardown."""
        broker = load_broker(self.settings(**overrides))
        self.brokers.append(broker)
        return broker

    def subprocess_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """``os.environ`` plus this target's variables plus ``extra``, for a child process."""
        return {**os.environ, **self.env, **(extra or {})}

    def close(self) -> None:
        for broker in self.brokers:
            with contextlib.suppress(Exception):  # teardown goes on
                broker.close()
        self.brokers.clear()
        self.cleanup()


@dataclass
class StorageTarget:
    """A fresh prefix in a real storage, described by environment variables (``LRT_STORAGE``...)."""

    env: dict[str, str]
    cleanup: Callable[[], None] = lambda: None

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(environ=self.env).with_overrides(**overrides)

    def storage(self, **overrides: Any) -> Storage:
        return load_storage(self.settings(**overrides))

    def subprocess_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **self.env, **(extra or {})}
