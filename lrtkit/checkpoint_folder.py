"""Folder checkpoints: file listings, content hashes, parallel transfers and exact restores.

:class:`~lrtkit.checkpoint.Checkpoint` decides *when* a folder becomes a generation and keeps it
fenced; this module moves the files. A folder is stored as one blob per distinct content
(named by its sha256) plus a :class:`Tree` listing ``relpath -> sha256, size, blob key, mode``
and every sub-folder. Files go up and down on a few threads at once (the storage is
thread-safe; S3 also splits each large file into parts on its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lrtkit.errors import CorruptCheckpoint, LrtError, NotFound, StorageError
from lrtkit.storage.base import Storage, check_key

TREE_FORMAT = 1
TRANSFER_THREADS = 4
CHUNK = 1024 * 1024
RESTORE_TMP = ".lrtkit-restore-"
UPLOAD_TRIES = 3
_RECENT_NS = 2_000_000_000  # a file modified this recently may still change within one mtime tick

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class FileEntry:
    """One file of a folder checkpoint."""

    sha256: str
    size: int
    key: str
    mode: int = 0o644

    def to_json(self) -> dict[str, object]:
        return {"sha256": self.sha256, "size": self.size, "key": self.key, "mode": self.mode}


@dataclass(frozen=True)
class Tree:
    """The file listing of a folder generation (``dirs`` keeps empty folders too)."""

    files: dict[str, FileEntry]
    dirs: tuple[str, ...]

    def to_bytes(self) -> bytes:
        body = {
            "format": TREE_FORMAT,
            "files": {rel: entry.to_json() for rel, entry in sorted(self.files.items())},
            "dirs": sorted(self.dirs),
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> Tree:
        """Read a stored listing; :class:`CorruptCheckpoint` naming ``where`` if it is bad."""
        try:
            body = json.loads(data)
            files = {}
            for rel, raw in body["files"].items():
                check_key(rel)  # a listing can never lead a restore outside its folder
                files[rel] = FileEntry(
                    sha256=str(raw["sha256"]),
                    size=int(raw["size"]),
                    key=str(raw["key"]),
                    mode=int(raw.get("mode", 0o644)) & 0o777,
                )
            dirs = tuple(check_key(d) for d in body.get("dirs", []))
        except (ValueError, KeyError, TypeError, AttributeError, StorageError) as exc:
            raise CorruptCheckpoint(f"{where} is unreadable: {exc}") from None
        return cls(files=files, dirs=dirs)

    def same_content(self, other: Tree) -> bool:
        mine = {rel: (e.sha256, e.mode) for rel, e in self.files.items()}
        theirs = {rel: (e.sha256, e.mode) for rel, e in other.files.items()}
        return mine == theirs and set(self.dirs) == set(other.dirs)

    def blob_keys(self) -> set[str]:
        return {e.key for e in self.files.values()}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """sha256 of files by relpath, trusted while size, mtime and inode are unchanged.

    Saves of one holder do not re-read gigabytes that did not change. A file modified in the
    last two seconds is always hashed again (it could change again within one mtime tick).
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, int, int, str]] = {}
        self._lock = threading.Lock()

    def digest(self, rel: str, path: Path) -> tuple[str, os.stat_result]:
        st = path.stat()
        with self._lock:
            cached = self._entries.get(rel)
        fresh = time.time_ns() - st.st_mtime_ns < _RECENT_NS
        if cached and not fresh and cached[:3] == (st.st_size, st.st_mtime_ns, st.st_ino):
            return cached[3], st
        digest = sha256_file(path)
        self.remember(rel, st, digest)
        return digest, st

    def remember(self, rel: str, st: os.stat_result, digest: str) -> None:
        with self._lock:
            self._entries[rel] = (st.st_size, st.st_mtime_ns, st.st_ino, digest)

    def forget(self, rel: str) -> None:
        with self._lock:
            self._entries.pop(rel, None)


def _parallel(fn: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    todo = list(items)
    if len(todo) <= 1:
        return [fn(item) for item in todo]
    with ThreadPoolExecutor(min(TRANSFER_THREADS, len(todo))) as pool:
        return list(pool.map(fn, todo))


def scan(folder: Path, where: str) -> tuple[dict[str, Path], list[str]]:
    """Files (relpath -> path) and sub-folders of ``folder``; symlinked folders are skipped,
    symlinked files are stored as the files they point to."""
    files: dict[str, Path] = {}
    dirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(RESTORE_TMP))
        base = Path(dirpath)
        dirs.extend(
            (base / n).relative_to(folder).as_posix()
            for n in dirnames
            if not (base / n).is_symlink()
        )
        for name in sorted(filenames):
            path = base / name
            if name.startswith(RESTORE_TMP) or not path.is_file():
                continue
            rel = path.relative_to(folder).as_posix()
            try:
                check_key(rel)
            except StorageError as exc:
                raise LrtError(f"{where}: cannot checkpoint {path}: {exc}") from None
            files[rel] = path
    return files, dirs


class FolderUpload:
    """Uploads a folder's files that are not stored yet; builds its :class:`Tree`.

    ``known`` maps sha256 -> blob key for content already stored (the kept generations);
    new content goes to ``blob_prefix + sha256``. ``uploaded`` lists the new blob keys.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        blob_prefix: str,
        known: dict[str, str],
        cache: HashCache,
        where: str,
    ) -> None:
        self.storage = storage
        self.blob_prefix = blob_prefix
        self.known = dict(known)
        self.cache = cache
        self.where = where
        self.uploaded: list[str] = []
        self._lock = threading.Lock()

    def run(self, folder: Path) -> Tree:
        files, dirs = scan(folder, self.where)
        digests = _parallel(lambda r: self.cache.digest(r, files[r]), files)
        hashed = dict(zip(files, digests, strict=True))
        # One upload per new content, however many files share it.
        first_of: dict[str, str] = {}
        for rel, (digest, _) in hashed.items():
            if digest not in self.known:
                first_of.setdefault(digest, rel)
        done = _parallel(
            lambda rel: self._try_upload(rel, files[rel], hashed[rel]), first_of.values()
        )
        entries: dict[str, FileEntry] = {}
        torn = {digest for digest, ok in zip(first_of, done, strict=True) if not ok}
        for rel, (digest, st) in hashed.items():
            if digest in torn or digest not in self.known:
                entries[rel] = self._upload_retrying(rel, files[rel])  # changed meanwhile
            else:
                entries[rel] = FileEntry(digest, st.st_size, self.known[digest], st.st_mode & 0o777)
        return Tree(files=entries, dirs=tuple(dirs))

    def _try_upload(self, rel: str, path: Path, hashed: tuple[str, os.stat_result]) -> bool:
        """Upload ``path`` as the blob of its digest; False if it changed while uploading."""
        digest, st = hashed
        key = self.blob_prefix + digest
        self.storage.upload_file(key, path)
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            # The blob may hold something else than `digest`: never reference it.
            self.cache.forget(rel)
            with contextlib.suppress(Exception):
                self.storage.delete(key)
            return False
        with self._lock:
            self.known[digest] = key
            self.uploaded.append(key)
        return True

    def _upload_retrying(self, rel: str, path: Path) -> FileEntry:
        for _ in range(UPLOAD_TRIES):
            digest, st = self.cache.digest(rel, path)
            if digest in self.known or self._try_upload(rel, path, (digest, st)):
                return FileEntry(digest, st.st_size, self.known[digest], st.st_mode & 0o777)
        raise LrtError(
            f"{self.where}: {path} kept changing while it was checkpointed; save the folder "
            "when the files in it are complete"
        )


def restore(storage: Storage, folder: Path, tree: Tree, cache: HashCache, where: str) -> None:
    """Make ``folder`` exactly ``tree``. Everything that differs is downloaded and verified
    first; only then does anything in the folder change (CorruptCheckpoint leaves it as is)."""
    if folder.exists() and not folder.is_dir():
        raise LrtError(f"{where}: cannot restore into {folder}: it is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    rels = sorted(tree.files)
    same = _parallel(lambda rel: _locally_same(folder / rel, tree.files[rel]), rels)
    needed = [rel for rel, ok in zip(rels, same, strict=True) if not ok]
    # Downloads land in a hidden staging folder inside `folder` (same filesystem, so the final
    # moves are renames) and are all verified before anything in `folder` changes.
    staging = folder / f"{RESTORE_TMP}{uuid.uuid4().hex}"
    staged = {rel: staging / str(i) for i, rel in enumerate(needed)}
    try:
        if staged:
            staging.mkdir()
        _parallel(lambda rel: _fetch(storage, tree.files[rel], rel, staged[rel], where), needed)
        for rel in sorted(tree.dirs):
            _make_dir(folder, rel)
        for rel, tmp in staged.items():
            target = folder / rel
            _make_dir(folder, Path(rel).parent.as_posix())
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(tmp, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for rel, entry in tree.files.items():
        target = folder / rel
        with contextlib.suppress(OSError):
            os.chmod(target, entry.mode)
            cache.remember(rel, target.stat(), entry.sha256)
    _remove_extra(folder, tree)


def _locally_same(path: Path, entry: FileEntry) -> bool:
    if not path.is_file() or path.is_symlink():
        return False
    return path.stat().st_size == entry.size and sha256_file(path) == entry.sha256


def _fetch(storage: Storage, entry: FileEntry, rel: str, tmp: Path, where: str) -> None:
    try:
        storage.download_file(entry.key, tmp)
    except NotFound:
        raise CorruptCheckpoint(
            f"{where}: checkpoint file {rel!r} is missing from {storage.url} (blob {entry.key!r})"
        ) from None
    digest = sha256_file(tmp)
    if digest != entry.sha256:
        raise CorruptCheckpoint(
            f"{where}: checkpoint file {rel!r} does not match its recorded sha256: expected "
            f"{entry.sha256}, got {digest} (blob {entry.key!r})"
        )


def _make_dir(folder: Path, rel: str) -> None:
    if rel in ("", "."):
        return
    current = folder
    for part in rel.split("/"):
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            current.unlink()
        current.mkdir(exist_ok=True)


def _remove_extra(folder: Path, tree: Tree) -> None:
    """Remove files and folders under ``folder`` that the tree does not list."""
    keep_dirs = set(tree.dirs)
    for rel in tree.files:
        parts = rel.split("/")[:-1]
        keep_dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        base = Path(dirpath)
        for name in filenames:
            if (base / name).relative_to(folder).as_posix() not in tree.files:
                (base / name).unlink()
        for name in dirnames:
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                if rel not in tree.files:
                    path.unlink()
            elif rel not in keep_dirs:
                shutil.rmtree(path, ignore_errors=True)
