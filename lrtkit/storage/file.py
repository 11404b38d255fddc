"""``file://PATH``: the storage in a local folder (the embedded default, ``file://./.lrtkit``).

Each key is a file under the root. Writes are whole: the bytes go to a temporary file in the
same folder, are fsynced, and replace the target with ``os.replace`` (atomic on POSIX), so a
reader sees the old object or the new one, never half of either, even if the writer is killed.

Every write and delete of a key runs under an ``fcntl.flock`` on a lock file chosen by the key
(one of a fixed set of stripes under ``.lrtkit-locks/``). ``flock`` excludes other processes
and other open file descriptions in this process alike, so a conditional write (compare the
etag, then replace) is atomic across threads and processes on one machine. The etag is the
sha256 of the content, so (as with S3's MD5 etags) writing the same bytes again gives the same
etag: conditional writers must write content that differs (the checkpoint manifest always does,
it carries the epoch and generation).

Names starting with ``.lrtkit-`` are reserved for temporary and lock files: keys may not use
them and :meth:`FileStorage.list_keys` never shows them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, ClassVar

from lrtkit.errors import NotFound, PreconditionFailed, StorageConfigError, StorageError
from lrtkit.storage.base import Storage, check_key

if TYPE_CHECKING:
    from lrtkit.config import Settings

RESERVED = ".lrtkit-"
LOCK_DIR = ".lrtkit-locks"
LOCK_STRIPES = 64
CHUNK = 1024 * 1024


def parse_file_url(url: str) -> Path:
    """The folder of a ``file://`` URL: ``file://./x`` and ``file://x`` are relative to the
    current directory, ``file:///abs`` is absolute, ``file://~/x`` is under the home folder."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "file":
        raise StorageConfigError(f"LRT_STORAGE={url!r} is not a file:// URL (file://PATH)")
    if not rest:
        raise StorageConfigError(f"LRT_STORAGE={url!r} names no folder: use file://PATH")
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    return Path(rest).expanduser()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileStorage(Storage):
    """Objects as files under a root folder. Safe across threads and processes."""

    scheme: ClassVar[str] = "file"
    supports_conditional_writes: ClassVar[bool] = True

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        path = Path(root).expanduser()
        self._root = Path(os.path.abspath(path))
        if not self._root.is_dir():
            if self._root.exists():
                raise StorageConfigError(f"storage root {self._root} exists but is not a folder")
            if not create or not self._root.parent.is_dir():
                raise StorageConfigError(
                    f"storage root {self._root} does not exist (nor does its parent folder "
                    f"{self._root.parent}): create it or fix LRT_STORAGE"
                )
            try:
                self._root.mkdir(exist_ok=True)
            except OSError as exc:
                raise StorageConfigError(
                    f"cannot create storage root {self._root}: {exc.strerror}"
                ) from None
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise StorageConfigError(
                f"storage root {self._root} is not writable by this user (uid {os.getuid()})"
            )
        self._real_root = os.path.realpath(self._root)
        self._lock_dir = self._root / LOCK_DIR
        try:
            self._lock_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise StorageConfigError(
                f"cannot create {self._lock_dir} in the storage root: {exc.strerror}"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> FileStorage:
        return cls(parse_file_url(settings.storage))

    @property
    def url(self) -> str:
        return f"file://{self._root}"

    @property
    def root(self) -> Path:
        return self._root

    # -- paths and locks ----------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        check_key(key)
        if any(part.startswith(RESERVED) for part in key.split("/")):
            raise StorageError(f"storage key {key!r} uses a reserved name ({RESERVED}...)")
        path = self._root / key
        # A symlink planted inside the root must not lead a key outside it.
        real = os.path.realpath(path)
        if real != self._real_root and not real.startswith(self._real_root + os.sep):
            raise StorageError(f"storage key {key!r} leads outside the storage root {self._root}")
        return path

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        stripe = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % LOCK_STRIPES
        lock_path = self._lock_dir / f"{stripe:02d}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open lock file {lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _error(self, action: str, key: str, exc: OSError) -> StorageError:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StorageConfigError(
                f"cannot {action} {key!r} under {self._root}: {exc.strerror} (check permissions)"
            )
        if exc.errno == errno.ENOSPC:
            return StorageError(f"cannot {action} {key!r}: no space left under {self._root}")
        if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
            return StorageError(
                f"cannot {action} {key!r}: a part of it is an object, or it is a folder of "
                f"other keys ({exc.strerror})"
            )
        return StorageError(f"cannot {action} {key!r} under {self._root}: {exc}")

    # -- objects ---------------------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None
        except OSError as exc:
            raise self._error("read", key, exc) from None
        return data, _digest(data)

    def _current_etag(self, path: Path) -> str | None:
        try:
            return _digest(path.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _check(self, key: str, path: Path, if_match: str | None, if_none_match: bool) -> None:
        if if_match is None and not if_none_match:
            return
        current = self._current_etag(path)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"{key!r} already exists (If-None-Match)")
        if if_match is not None and current != if_match:
            found = "it does not exist" if current is None else "it has changed"
            raise PreconditionFailed(f"{key!r} does not have etag {if_match!r}: {found}")

    def _write_temp(self, path: Path, source: IO[bytes] | bytes) -> tuple[Path, str]:
        """Write a fsynced temporary file next to ``path``; return it and the content's etag."""
        for attempt in range(5):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f"{RESERVED}tmp-{uuid.uuid4().hex}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                if attempt == 4:
                    raise
                continue  # a concurrent delete removed the empty folder just now: make it again
            break
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(source, bytes):
                    out.write(source)
                    digest.update(source)
                else:
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return tmp, digest.hexdigest()

    def _commit(
        self,
        key: str,
        path: Path,
        source: IO[bytes] | bytes,
        if_match: str | None,
        if_none_match: bool,
    ) -> str:
        tmp: Path | None = None
        try:
            if if_match is None and not if_none_match:
                # Unconditional: write outside the lock, only the replace is serialised.
                tmp, etag = self._write_temp(path, source)
                with self._locked(key):
                    os.replace(tmp, path)
            else:
                with self._locked(key):
                    self._check(key, path, if_match, if_none_match)
                    tmp, etag = self._write_temp(path, source)
                    os.replace(tmp, path)
            tmp = None
            _fsync_dir(path.parent)
        except OSError as exc:
            raise self._error("write", key, exc) from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        return etag

    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        path = self._path(key)
        return self._commit(key, path, bytes(data), if_match, if_none_match)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._locked(key):
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return
            except IsADirectoryError:
                return  # a folder of other keys, not an object
            except OSError as exc:
                raise self._error("delete", key, exc) from None
        self._prune_empty_dirs(path.parent)

    def _prune_empty_dirs(self, folder: Path) -> None:
        """Remove folders left empty by a delete, up to the root (keeps listings fast)."""
        while folder != self._root and self._root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or already gone, or raced with a writer): stop
            folder = folder.parent

    def list_keys(self, prefix: str) -> Iterator[str]:
        if prefix.startswith("/") or "\\" in prefix or "\x00" in prefix:
            raise StorageError(f"storage prefix {prefix!r} is not a relative /-separated path")
        if any(part in {".", ".."} for part in prefix.split("/")[:-1]):
            raise StorageError(f"storage prefix {prefix!r} has a '.' or '..' part")
        folder_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._root / folder_part if folder_part else self._root
        real = os.path.realpath(start)
        if real != self._real_root and not real.startswith(self._real_root + os.sep):
            return  # a symlink planted in the root: nothing outside it is listed
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(RESERVED)]
            rel = os.path.relpath(dirpath, self._root)
            base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for name in filenames:
                if name.startswith(RESERVED):
                    continue
                key = base + name
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        yield from keys

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    # -- files -------------------------------------------------------------------------------------

    def upload_file(self, key: str, path: Path) -> str:
        target = self._path(key)
        try:
            source = open(path, "rb")  # noqa: SIM115 - closed below, errors mapped first
        except FileNotFoundError:
            raise StorageError(f"cannot upload {path} to {key!r}: no such file") from None
        except OSError as exc:
            raise StorageError(f"cannot upload {path} to {key!r}: {exc.strerror}") from None
        with source:
            return self._commit(key, target, source, None, False)

    def download_file(self, key: str, path: Path) -> None:
        source_path = self._path(key)
        try:
            source = open(source_path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None
        except OSError as exc:
            raise self._error("read", key, exc) from None
        dest = Path(path)
        tmp = dest.parent / f".{dest.name}.{RESERVED}tmp-{uuid.uuid4().hex}"
        with source:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as out:
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, dest)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise StorageError(f"cannot download {key!r} to {dest}: {exc}") from None


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: some filesystems refuse fsync on folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
