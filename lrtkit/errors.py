"""lrtkit's one exception tree.

Every error lrtkit raises on purpose is an :class:`LrtError`; callers catch that one name
to handle anything of ours and let programming errors through. :class:`Stop` is not an
error: it is the signal a handler gets from ``ctx.check()`` and derives from
``BaseException`` so that a handler's ``except Exception`` cannot swallow it by accident
(the same choice as ``KeyboardInterrupt`` and ``SystemExit``).
"""

from __future__ import annotations

from collections.abc import Mapping


class LrtError(Exception):
    """Base of every error lrtkit raises on purpose."""


# --- configuration and plugins -------------------------------------------------------------


class ConfigError(LrtError):
    """A setting is missing, malformed or inconsistent; the message names the variable."""


class PluginError(ConfigError):
    """A plugin could not be used."""


class PluginNotFound(PluginError):
    """No plugin of that name is installed in the namespace."""

    def __init__(self, namespace: str, name: str, installed: list[str]) -> None:
        self.namespace = namespace
        self.name = name
        self.installed = installed
        have = ", ".join(sorted(installed)) or "none"
        super().__init__(f"no {namespace!r} plugin named {name!r} is installed (installed: {have})")


class PluginLoadError(PluginError):
    """The plugin is installed but importing or constructing it failed."""

    def __init__(self, namespace: str, name: str, cause: BaseException) -> None:
        self.namespace = namespace
        self.name = name
        self.cause = cause
        super().__init__(
            f"the {namespace!r} plugin {name!r} is installed but failed to load: "
            f"{type(cause).__name__}: {cause}"
        )


# --- jobs and input ---------------------------------------------------------------------------


class InvalidJob(LrtError):
    """A job body, job id or payload is not acceptable; the message says what and where."""


class InvalidJobId(InvalidJob):
    """A job id is empty, too long, or has characters outside ``[A-Za-z0-9._-]``."""


class SubmitError(LrtError):
    """Submitting jobs failed; nothing or only part was submitted (the message says which)."""


# --- brokers ----------------------------------------------------------------------------------


class BrokerError(LrtError):
    """The broker refused or failed an operation."""


class BrokerConfigError(BrokerError, ConfigError):
    """The broker is reachable but the queue, region, credentials or permissions are wrong.

    Not retried: the message says what to fix.
    """


class ConnectionLost(BrokerError):
    """The connection to the broker dropped; it may come back."""


class LeaseLost(BrokerError):
    """This holder no longer owns the job: the broker gave it away or a newer holder wrote.

    From then on the holder must write nothing for the job: no checkpoint, result or ack.
    """


class PayloadTooLarge(BrokerError, InvalidJob):
    """A message is bigger than the queue accepts; raised before anything is sent."""


class PublishError(BrokerError):
    """Some messages were not accepted by the broker. ``failed`` maps job id to the reason."""

    def __init__(self, failed: Mapping[str, str], published: int = 0) -> None:
        self.failed = dict(failed)
        self.published = published
        sample = "; ".join(f"{k}: {v}" for k, v in list(self.failed.items())[:5])
        more = f" (and {len(self.failed) - 5} more)" if len(self.failed) > 5 else ""
        super().__init__(
            f"{len(self.failed)} job(s) were not published, {published} were: {sample}{more}"
        )


# --- storage ----------------------------------------------------------------------------------


class StorageError(LrtError):
    """The storage refused or failed an operation."""


class StorageConfigError(StorageError, ConfigError):
    """Missing bucket, denied access, bad endpoint: the message names the bucket and action."""


class NotFound(StorageError):
    """No object at that key."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no object at {key!r}")


class PreconditionFailed(StorageError):
    """A conditional write lost: the object changed (or exists) since it was read."""


class CorruptCheckpoint(StorageError):
    """A checkpoint file does not match the checksum its manifest recorded."""


# --- autoscaling --------------------------------------------------------------------------


class ScalerError(LrtError):
    """The scaling provider refused or failed an operation."""


class ScalerConfigError(ScalerError, ConfigError):
    """Bad API key, organisation, project or container group: the message says which."""


# --- control flow, not an error -----------------------------------------------------------


class Stop(BaseException):
    """Raised by ``ctx.check()`` when the job must stop; ``reason`` is why.

    Reasons: ``"shutdown"`` (the worker got SIGTERM/SIGINT), ``"lease_lost"`` (another worker
    owns the job now), ``"cancelled"`` (``lrtkit cancel``).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"job must stop: {reason}")
