"""lrtkit: long, interruptible jobs on machines that can vanish.

The public names a handler needs: :class:`JobContext` (its second argument), :class:`Stop`
(raised by ``ctx.check()``), and the error tree rooted at :class:`LrtError`.
"""

from typing import TYPE_CHECKING, Any

from lrtkit.errors import (
    BrokerError,
    ConfigError,
    ConnectionLost,
    InvalidJob,
    InvalidJobId,
    LeaseLost,
    LrtError,
    PluginNotFound,
    Stop,
    StorageError,
)

if TYPE_CHECKING:
    from lrtkit.worker.context import JobContext

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "ConfigError",
    "ConnectionLost",
    "InvalidJob",
    "InvalidJobId",
    "JobContext",
    "LeaseLost",
    "LrtError",
    "PluginNotFound",
    "Stop",
    "StorageError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # JobContext is imported on first use, so ``import lrtkit`` stays light for the CLI.
    if name == "JobContext":
        from lrtkit.worker.context import JobContext

        return JobContext
    raise AttributeError(f"module 'lrtkit' has no attribute {name!r}")
