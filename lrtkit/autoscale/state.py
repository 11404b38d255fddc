"""The autoscaler's memory between runs, kept in lrtkit's storage.

``lrtkit autoscale --once`` from cron, Lambda or a Cloud Run job starts fresh each time; the
cool-down needs to know when the desired count first dropped and when the fleet last changed.
That :class:`~lrtkit.autoscale.decision.Memory` lives at ``_lrtkit/autoscale/<queue>.json`` in
the same storage as checkpoints and job records (a bucket, or the local folder), so nothing
beyond what a worker already needs is required.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING

from lrtkit.autoscale.decision import Memory
from lrtkit.errors import NotFound

if TYPE_CHECKING:
    from lrtkit.storage.base import Storage

log = logging.getLogger("lrtkit.autoscale")

PREFIX = "_lrtkit/autoscale/"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def state_key(queue: str) -> str:
    """The storage key of a queue's autoscaler memory (unsafe characters replaced)."""
    name = _UNSAFE.sub("_", queue).strip(".") or "queue"
    return f"{PREFIX}{name}.json"


class StateStore:
    """Reads and writes one queue's :class:`Memory`."""

    def __init__(self, storage: Storage, queue: str) -> None:
        self.storage = storage
        self.key = state_key(queue)

    def load(self) -> Memory:
        """The stored memory; a fresh one when none is stored or it is unreadable."""
        try:
            data, _ = self.storage.get(self.key)
        except NotFound:
            return Memory()
        try:
            return Memory.from_dict(json.loads(data))
        except ValueError:
            log.warning("autoscaler state at %s is not JSON; starting afresh", self.key)
            return Memory()

    def save(self, memory: Memory) -> None:
        self.storage.put(self.key, json.dumps(memory.to_dict(), sort_keys=True).encode())
