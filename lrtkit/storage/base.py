"""The storage protocol: a flat key space of objects, with conditional writes.

Checkpoints, results, artifacts, job records and cancel markers all live in one storage,
so a user needs nothing beyond a queue and a bucket. Keys are ``/``-separated relative paths
(``jobs/JOB_ID/record.json``); a backend maps them under its root or prefix and rejects any key
that would escape it.

Conditional writes are what fencing stands on: ``put(..., if_match=etag)`` succeeds only if the
object still has that etag, ``put(..., if_none_match=True)`` only if it does not exist yet;
otherwise :class:`~lrtkit.errors.PreconditionFailed`. ``supports_conditional_writes`` is False
for a backend that cannot do that atomically (``lrtkit doctor`` says what guarantee remains).

Plugins subclass :class:`Storage` and register in the ``lrtkit.storage`` namespace under the
URL scheme they serve.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from lrtkit.errors import StorageError

if TYPE_CHECKING:
    from lrtkit.broker import Check
    from lrtkit.config import Settings


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``StorageError`` saying why."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise StorageError(f"storage key {key!r} is not a relative /-separated path")
    if any(part in {"", ".", ".."} for part in key.split("/")):
        raise StorageError(f"storage key {key!r} has an empty, '.' or '..' part")
    return key


class Storage(ABC):
    """An object store. Safe to call from several threads at once."""

    scheme: ClassVar[str] = ""
    supports_conditional_writes: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Storage:
        """Build the storage from ``LRT_STORAGE`` and the storage settings."""

    @property
    @abstractmethod
    def url(self) -> str:
        """Where this storage points, for messages (never includes credentials)."""

    # -- objects -------------------------------------------------------------------------------

    @abstractmethod
    def get(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and etag; :class:`~lrtkit.errors.NotFound` if absent."""

    @abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Write the object whole (readers never see half of it); return its new etag.

        With ``if_match`` or ``if_none_match`` the write is conditional and raises
        :class:`~lrtkit.errors.PreconditionFailed` when the condition does not hold.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; no error if it is already gone."""

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys starting with ``prefix`` (a key prefix, not necessarily a folder), sorted."""

    def list_children(self, prefix: str) -> Iterator[str]:
        """Names directly under the folder ``prefix`` (which ends with ``/``), sorted, unique.

        ``list_children("jobs/")`` yields job ids without walking every checkpoint blob
        beneath them. The default derives it from :meth:`list_keys`; backends with a
        delimiter listing (S3's ``Delimiter="/"``) override it to read only one level.
        """
        seen: set[str] = set()
        for key in self.list_keys(prefix):
            name = key[len(prefix) :].split("/", 1)[0]
            if name and name not in seen:
                seen.add(name)
                yield name

    def exists(self, key: str) -> bool:
        from lrtkit.errors import NotFound

        try:
            self.get(key)
        except NotFound:
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; return how many."""
        keys = list(self.list_keys(prefix))
        for key in keys:
            self.delete(key)
        return len(keys)

    # -- files (large objects) ---------------------------------------------------------------

    @abstractmethod
    def upload_file(self, key: str, path: Path) -> str:
        """Upload a local file (streamed; multipart where the backend has it); return etag."""

    @abstractmethod
    def download_file(self, key: str, path: Path) -> None:
        """Download an object to a local file, written whole (via a temporary name)."""

    # -- doctor --------------------------------------------------------------------------------

    def diagnose(self) -> list[Check]:
        """Checks for ``lrtkit doctor``: write, read, conditional write, delete a probe."""
        from lrtkit.broker import Check
        from lrtkit.errors import PreconditionFailed

        key = "_lrtkit/doctor-probe"
        try:
            etag = self.put(key, b"probe")
            data, _ = self.get(key)
            if data != b"probe":
                return [Check("storage", "fail", f"{self.url}: read back different bytes")]
        except Exception as exc:  # noqa: BLE001 - doctor reports, never raises
            return [Check("storage", "fail", f"{self.url}: {type(exc).__name__}: {exc}")]
        checks = [Check("storage", "ok", f"{self.url}: write, read")]
        try:
            self.put(key, b"stale", if_match=etag + "x" if etag else "stale")
            checks.append(
                Check(
                    "conditional writes",
                    "warn",
                    f"{self.url} ignored If-Match: a stale worker could overwrite a newer "
                    "checkpoint; fencing then rests on the broker lease alone",
                    "use a store with conditional writes (S3, R2, MinIO >= 2024)",
                )
            )
        except PreconditionFailed:
            checks.append(Check("conditional writes", "ok", "If-Match is enforced (fencing on)"))
        except Exception as exc:  # noqa: BLE001
            checks.append(Check("conditional writes", "warn", f"{type(exc).__name__}: {exc}"))
        finally:
            with contextlib.suppress(Exception):  # best effort cleanup of the probe
                self.delete(key)
        return checks
