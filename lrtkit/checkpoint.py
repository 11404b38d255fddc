"""Fenced, generational checkpoints over any :class:`~lrtkit.storage.base.Storage`.

This object is ``ctx.checkpoint``. A checkpoint holds JSON state (:meth:`Checkpoint.save`), a
folder (:meth:`Checkpoint.save_dir`), or both: the two are independent slots of one generation.

Layout under ``jobs/{job_id}/checkpoint/`` (keys from :mod:`lrtkit.storage.layout`)::

    manifest.json                      the pointer: epoch, owner, newest generations
    state/{gen}-{owner}.json           JSON state of a generation
    tree/{gen}-{owner}.json            file listing of a folder generation: relpath -> sha256, size
    blobs/{owner}/{sha256}             folder file contents, content-addressed

Fencing. :meth:`Checkpoint.claim` bumps the manifest's ``epoch`` and names this holder the
owner with a conditional write (``If-None-Match`` for the first ever write, else ``If-Match``
on the etag just read; a lost race re-reads and retries, so the newest claimer wins). Every
save first writes its data under keys unique to (owner, generation), then writes the manifest
with ``If-Match`` = the etag of the manifest this holder last wrote. If anyone claimed since,
that write fails, nothing the newer holder wrote is touched, and the save raises
:class:`~lrtkit.errors.LeaseLost`. Readers follow the manifest only, and the manifest only ever
names generations whose data was completely written, so a half-written generation (a holder
killed mid-save) is never loaded.

Pruning. After a successful manifest write, the generations beyond the newest ``keep`` are
dropped from the manifest and the keys only they referenced are deleted. Each claim also sweeps
keys left by earlier holders' interrupted saves. Keys of a holder that claimed later are never
swept (their owner tag is unknown to the sweeper), so a slow sweep cannot delete a newer
holder's fresh data. Pruning failures are logged, never raised.

Moving folder files (hashing, parallel uploads and downloads, exact restores) is the job of
:mod:`lrtkit.checkpoint_folder`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from lrtkit.checkpoint_folder import FolderUpload, HashCache, Tree, restore
from lrtkit.errors import (
    CorruptCheckpoint,
    LeaseLost,
    LrtError,
    NotFound,
    PreconditionFailed,
    StorageError,
)
from lrtkit.jobs import utcnow, validate_job_id
from lrtkit.storage import layout
from lrtkit.storage.base import Storage

log = logging.getLogger("lrtkit.checkpoint")

MANIFEST_FORMAT = 1
HOLDER_HISTORY = 64
CLAIM_ATTEMPTS = 50


class CheckpointStateError(LrtError, TypeError):
    """The object given to :meth:`Checkpoint.save` cannot be stored as JSON."""


class Checkpoint:
    """The checkpoint of one job, as seen by one holder (one delivery attempt).

    Thread-safe: the worker's heartbeat thread may save while the handler thread saves.
    """

    def __init__(self, storage: Storage, job_id: str, owner: str, *, keep: int = 2) -> None:
        if keep < 1:
            raise LrtError(f"checkpoint keep must be at least 1, got {keep}")
        self.storage = storage
        self.job_id = validate_job_id(job_id)
        self.owner = owner
        self.keep = keep
        self._tag = layout.owner_tag(owner)
        self._manifest_key = layout.manifest_key(job_id)
        self._lock = threading.RLock()
        self._manifest: dict[str, Any] | None = None  # what this holder last claimed/wrote
        self._etag: str | None = None
        self._epoch = 0
        self._uncertain = False  # a manifest write failed without a clear answer
        self._revoked: str | None = None
        self._seen_generation = 0
        self._trees: dict[str, Tree] = {}
        self._hashes = HashCache()

    # -- public -----------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The newest generation this holder has seen or written (0: none yet)."""
        return self._seen_generation

    @property
    def revoked(self) -> str | None:
        """Why this holder may no longer save, or None."""
        return self._revoked

    def claim(self) -> None:
        """Become the current writer; every earlier holder's saves fail from now on."""
        with self._lock:
            self._raise_if_revoked()
            for attempt in range(CLAIM_ATTEMPTS):
                current, etag = self._read_manifest()
                new = self._claimed_manifest(current)
                data = _dump(new)
                try:
                    if etag is None:
                        new_etag = self.storage.put(self._manifest_key, data, if_none_match=True)
                    else:
                        new_etag = self.storage.put(self._manifest_key, data, if_match=etag)
                except PreconditionFailed:
                    time.sleep(random.uniform(0.005, 0.05) * min(attempt + 1, 5))
                    continue
                self._adopt(new, new_etag)
                log.debug("job %s: checkpoint claimed, epoch %s", self.job_id, self._epoch)
                self._sweep()
                return
            raise StorageError(
                f"job {self.job_id}: could not claim the checkpoint at {self._manifest_key!r} "
                f"in {self.storage.url}: {CLAIM_ATTEMPTS} conditional writes in a row lost a race"
            )

    def revoke(self, reason: str) -> None:
        """From now on every save raises LeaseLost (the worker calls this on lease loss)."""
        self._revoked = reason or "revoked"

    def load(self) -> Any | None:
        """The newest JSON state, or None when no generation has any."""
        for attempt in range(3):
            manifest, _ = self._read_manifest()
            entry = _newest_with(manifest, "state")
            if manifest is None or entry is None:
                return None
            try:
                data, _ = self.storage.get(entry["state"])
            except NotFound:
                if attempt < 2:
                    continue  # pruned between the two reads: a newer manifest points elsewhere
                raise CorruptCheckpoint(
                    f"job {self.job_id}: checkpoint state {entry['state']!r} of generation "
                    f"{entry['generation']} is missing from {self.storage.url}"
                ) from None
            digest = hashlib.sha256(data).hexdigest()
            if entry.get("state_sha256") not in (None, digest):
                raise CorruptCheckpoint(
                    f"job {self.job_id}: checkpoint state {entry['state']!r} does not match "
                    f"its recorded sha256 (expected {entry['state_sha256']}, got {digest})"
                )
            try:
                return json.loads(data)
            except ValueError as exc:
                raise CorruptCheckpoint(
                    f"job {self.job_id}: checkpoint state {entry['state']!r} is not JSON: {exc}"
                ) from None
        return None  # pragma: no cover - the loop returns or raises

    def save(self, obj: Any) -> None:
        """Store ``obj`` (JSON-serialisable) as a new generation; LeaseLost if fenced out."""
        data = encode_state(obj)
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            for attempt in range(2):
                base = self._prepare()
                gen = int(base["generation"]) + 1
                key = layout.state_key(self.job_id, gen, self.owner)
                self.storage.put(key, data)
                newest = base["generations"][0] if base["generations"] else {}
                entry = self._entry(gen, state=key, state_sha256=digest, tree=newest.get("tree"))
                if self._commit(base, entry, new_keys=[key], retry=attempt == 0):
                    return
            raise LeaseLost(f"job {self.job_id}: checkpoint save kept losing to retries")

    def save_dir(self, path: str | Path) -> None:
        """Store the folder as a new generation, uploading only files not already stored.

        Returns without writing anything when the folder is unchanged since the newest
        generation. LeaseLost if fenced out.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise LrtError(f"job {self.job_id}: cannot checkpoint {folder}: not a folder")
        with self._lock:
            for attempt in range(2):
                base = self._prepare()
                newest = base["generations"][0] if base["generations"] else {}
                upload = FolderUpload(
                    self.storage,
                    blob_prefix=f"{layout.blobs_prefix(self.job_id)}{self._tag}/",
                    known=self._known_blobs(base),
                    cache=self._hashes,
                    where=f"job {self.job_id}",
                )
                tree = upload.run(folder)
                uploaded = upload.uploaded
                if newest.get("tree"):
                    previous = self._tree(newest["tree"])
                    if previous is not None and previous.same_content(tree):
                        return
                gen = int(base["generation"]) + 1
                key = layout.tree_key(self.job_id, gen, self.owner)
                self.storage.put(key, tree.to_bytes())
                self._trees[key] = tree
                entry = self._entry(
                    gen,
                    state=newest.get("state"),
                    state_sha256=newest.get("state_sha256"),
                    tree=key,
                )
                if self._commit(base, entry, new_keys=[key, *uploaded], retry=attempt == 0):
                    return
            raise LeaseLost(f"job {self.job_id}: checkpoint save kept losing to retries")

    def restore_dir(self, path: str | Path) -> bool:
        """Make ``path`` exactly the newest folder checkpoint; False when there is none.

        Every downloaded file is checked against its recorded sha256 before anything in the
        folder changes (:class:`~lrtkit.errors.CorruptCheckpoint` naming the file if not); files
        not in the checkpoint are removed.
        """
        with self._lock:
            return self._restore_dir(Path(path))

    def _restore_dir(self, folder: Path) -> bool:
        manifest, _ = self._read_manifest()
        entry = _newest_with(manifest, "tree")
        if manifest is None or entry is None:
            return False
        tree = self._tree(entry["tree"])
        if tree is None:
            raise CorruptCheckpoint(
                f"job {self.job_id}: the file listing {entry['tree']!r} of checkpoint generation "
                f"{entry['generation']} is missing from {self.storage.url}"
            )
        where = f"job {self.job_id}, checkpoint generation {entry['generation']}"
        restore(self.storage, folder, tree, self._hashes, where)
        return True

    # -- manifest -----------------------------------------------------------------------------

    def _read_manifest(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            data, etag = self.storage.get(self._manifest_key)
        except NotFound:
            return None, None
        try:
            manifest = json.loads(data)
            if not isinstance(manifest, dict) or not isinstance(manifest.get("generations"), list):
                raise ValueError("not a manifest object")
            int(manifest["generation"])
            int(manifest["epoch"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptCheckpoint(
                f"job {self.job_id}: checkpoint manifest {self._manifest_key!r} in "
                f"{self.storage.url} is unreadable ({exc}); to start the job over from "
                f"scratch, delete everything under {layout.checkpoint_prefix(self.job_id)!r}"
            ) from None
        self._seen_generation = max(self._seen_generation, int(manifest["generation"]))
        return manifest, etag

    def _claimed_manifest(self, current: dict[str, Any] | None) -> dict[str, Any]:
        epoch = int(current["epoch"]) + 1 if current else 1
        holders = list(current.get("holders", [])) if current else []
        holders.append({"owner": self.owner, "tag": self._tag, "epoch": epoch})
        return {
            "format": MANIFEST_FORMAT,
            "job_id": self.job_id,
            "epoch": epoch,
            "owner": self.owner,
            "claimed_at": utcnow().isoformat(),
            "generation": int(current["generation"]) if current else 0,
            "generations": list(current["generations"]) if current else [],
            "holders": holders[-HOLDER_HISTORY:],
        }

    def _adopt(self, manifest: dict[str, Any], etag: str) -> None:
        self._manifest = manifest
        self._etag = etag
        self._epoch = int(manifest["epoch"])
        self._uncertain = False
        self._seen_generation = max(self._seen_generation, int(manifest["generation"]))

    def _prepare(self) -> dict[str, Any]:
        """The manifest to build the next generation on (claims on the first save)."""
        self._raise_if_revoked()
        if self._manifest is None:
            self.claim()
        elif self._uncertain:
            self._resync()
        assert self._manifest is not None
        return self._manifest

    def _resync(self) -> None:
        """After an unclear manifest write: adopt what is stored if it is still ours."""
        current, etag = self._read_manifest()
        if current is None or etag is None or not self._is_mine(current):
            self._fenced(current)
        self._adopt(current, etag)

    def _is_mine(self, manifest: dict[str, Any]) -> bool:
        return manifest.get("owner") == self.owner and int(manifest["epoch"]) == self._epoch

    def _fenced(self, current: dict[str, Any] | None) -> NoReturn:
        if current is None:
            who = "the manifest is gone"
        else:
            who = f"owner {current.get('owner')!r} claimed epoch {current.get('epoch')}"
        self._revoked = f"a newer holder took over the checkpoint ({who})"
        raise LeaseLost(
            f"job {self.job_id}: checkpoint save refused: {self._revoked}; this holder "
            f"(epoch {self._epoch}) must stop writing"
        )

    def _raise_if_revoked(self) -> None:
        if self._revoked is not None:
            raise LeaseLost(f"job {self.job_id}: checkpoint save refused: {self._revoked}")

    def _entry(self, gen: int, **slots: Any) -> dict[str, Any]:
        return {
            "generation": gen,
            "owner": self.owner,
            "epoch": self._epoch,
            "saved_at": utcnow().isoformat(),
            **slots,
        }

    def _commit(
        self, base: dict[str, Any], entry: dict[str, Any], *, new_keys: list[str], retry: bool
    ) -> bool:
        """Write the manifest naming ``entry`` as newest; True on success.

        False means the stored manifest had moved on but is still ours (an earlier unclear
        write landed): it has been adopted and the caller builds the generation again.
        """
        generations = [entry, *base["generations"]]
        kept, dropped = generations[: self.keep], generations[self.keep :]
        new = {**base, "generation": entry["generation"], "generations": kept}
        try:
            self._raise_if_revoked()
            etag = self.storage.put(self._manifest_key, _dump(new), if_match=self._etag)
        except PreconditionFailed:
            current, current_etag = self._read_manifest()
            if retry and current is not None and current_etag and self._is_mine(current):
                self._adopt(current, current_etag)
                self._discard(new_keys, current)
                return False
            self._discard(new_keys, current)
            self._fenced(current)
        except LeaseLost:
            self._discard(new_keys, self._manifest)
            raise
        except BaseException:
            self._uncertain = True  # it may or may not have landed; re-read before the next save
            raise
        self._adopt(new, etag)
        self._prune(dropped, kept)
        return True

    # -- folders ------------------------------------------------------------------------------

    def _known_blobs(self, manifest: dict[str, Any]) -> dict[str, str]:
        """sha256 -> blob key for every file the kept generations reference."""
        known: dict[str, str] = {}
        for gen in manifest["generations"]:
            if gen.get("tree"):
                tree = self._tree(gen["tree"])
                if tree is not None:
                    for file_entry in tree.files.values():
                        known.setdefault(file_entry.sha256, file_entry.key)
        return known

    def _tree(self, key: str) -> Tree | None:
        if key in self._trees:
            return self._trees[key]
        try:
            data, _ = self.storage.get(key)
        except NotFound:
            return None
        tree = Tree.parse(data, f"job {self.job_id}: checkpoint file listing {key!r}")
        self._trees[key] = tree
        return tree

    # -- pruning ------------------------------------------------------------------------------

    def _refs(self, generations: list[dict[str, Any]]) -> set[str]:
        refs: set[str] = set()
        for gen in generations:
            if gen.get("state"):
                refs.add(gen["state"])
            if gen.get("tree"):
                refs.add(gen["tree"])
                tree = self._tree(gen["tree"])
                if tree is not None:
                    refs.update(tree.blob_keys())
        return refs

    def _prune(self, dropped: list[dict[str, Any]], kept: list[dict[str, Any]]) -> None:
        """Delete what only the dropped generations referenced. Logged, never raised."""
        if not dropped or self._revoked is not None:
            return
        try:
            doomed = self._refs(dropped) - self._refs(kept)
            for key in sorted(doomed):
                self.storage.delete(key)
            for gen in dropped:
                self._trees.pop(gen.get("tree") or "", None)
        except Exception as exc:  # noqa: BLE001 - pruning is housekeeping
            log.warning("job %s: pruning old checkpoint generations failed: %s", self.job_id, exc)

    def _discard(self, keys: list[str], manifest: dict[str, Any] | None) -> None:
        """Delete keys this holder wrote for a save that did not land (never referenced ones)."""
        try:
            referenced = self._refs(manifest["generations"]) if manifest else set()
            for key in keys:
                if key not in referenced:
                    self.storage.delete(key)
        except Exception as exc:  # noqa: BLE001 - housekeeping
            log.warning("job %s: cleaning up a refused checkpoint failed: %s", self.job_id, exc)

    def _sweep(self) -> None:
        """After a claim: delete keys of this and earlier holders that nothing references."""
        assert self._manifest is not None
        tags = {h.get("tag") for h in self._manifest.get("holders", [])} | {self._tag}
        try:
            referenced = self._refs(self._manifest["generations"])
            for key in list(self.storage.list_keys(layout.checkpoint_prefix(self.job_id))):
                if key == self._manifest_key or key in referenced:
                    continue
                if _tag_of(self.job_id, key) in tags:
                    self.storage.delete(key)
        except Exception as exc:  # noqa: BLE001 - housekeeping
            log.warning("job %s: sweeping old checkpoint data failed: %s", self.job_id, exc)


# -- helpers -----------------------------------------------------------------------------------


def _dump(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()


def _newest_with(manifest: dict[str, Any] | None, slot: str) -> dict[str, Any] | None:
    if manifest is None:
        return None
    for gen in manifest["generations"]:
        if isinstance(gen, dict) and gen.get(slot):
            return gen
    return None


def _tag_of(job_id: str, key: str) -> str | None:
    """The owner tag inside a state, tree or blob key (None for anything else)."""
    for prefix in (layout.state_prefix(job_id), layout.tree_prefix(job_id)):
        if key.startswith(prefix):
            name = key[len(prefix) :]
            gen, sep, rest = name.partition("-")
            return rest.removesuffix(".json") if sep and gen.isdigit() else None
    blobs = layout.blobs_prefix(job_id)
    if key.startswith(blobs):
        tag, sep, _ = key[len(blobs) :].partition("/")
        return tag if sep else None
    return None


def encode_state(obj: Any) -> bytes:
    """``obj`` as JSON bytes, or :class:`CheckpointStateError` naming the offending value."""
    try:
        return json.dumps(obj, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        where, bad = _first_unserialisable(obj, "state", set())
        detail = f"{where} is of type {type(bad).__name__}" if where else str(exc)
        raise CheckpointStateError(
            f"checkpoint state must be JSON-serialisable: {detail}; convert it to plain dicts, "
            "lists, strings, numbers, booleans or None (or save files with save_dir)"
        ) from None


def _first_unserialisable(obj: Any, where: str, seen: set[int]) -> tuple[str | None, Any]:
    if obj is None or isinstance(obj, str | int | float | bool):
        return None, None
    if id(obj) in seen:
        return f"{where} (a circular reference)", obj
    seen = seen | {id(obj)}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str | int | float | bool) and k is not None:
                return f"{where} key {k!r}", k
            found = _first_unserialisable(v, f"{where}[{k!r}]", seen)
            if found[0]:
                return found
        return None, None
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            found = _first_unserialisable(v, f"{where}[{i}]", seen)
            if found[0]:
                return found
        return None, None
    return where, obj
