"""lrtkit: long, interruptible jobs on machines that can vanish.

The public names a handler needs: :class:`JobContext` (its second argument), :class:`Stop`
(raised by ``ctx.check()``), and the error tree rooted at :class:`LrtError`.
"""

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

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "ConfigError",
    "ConnectionLost",
    "InvalidJob",
    "InvalidJobId",
    "LeaseLost",
    "LrtError",
    "PluginNotFound",
    "Stop",
    "StorageError",
    "__version__",
]
