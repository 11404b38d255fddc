"""Checkpoints when the storage misbehaves: unclear writes, failing deletes, files that change."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from lrtkit.checkpoint import Checkpoint
from lrtkit.errors import LrtError, StorageError
from lrtkit.storage import layout
from lrtkit.storage.base import Storage
from lrtkit.testing.storage_contract import CountingStorage, read_tree, write_tree
from lrtkit.testing.target import StorageTarget, unique_name


class FaultyStorage(CountingStorage):
    """Runs a hook before or after chosen calls (the hook may raise, like a dropped connection)."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.after_put: Callable[[str], None] | None = None
        self.before_put: Callable[[str], None] | None = None
        self.before_delete: Callable[[str], None] | None = None
        self.after_upload: Callable[[str, Path], None] | None = None

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        if self.before_put:
            self.before_put(key)
        etag = super().put(key, data, if_match=if_match, if_none_match=if_none_match)
        if self.after_put:
            self.after_put(key)
        return etag

    def delete(self, key: str) -> None:
        if self.before_delete:
            self.before_delete(key)
        super().delete(key)

    def upload_file(self, key: str, path: Path) -> str:
        etag = super().upload_file(key, path)
        if self.after_upload:
            self.after_upload(key, path)
        return etag


def _once(key: str, exc: Exception) -> Callable[[str], None]:
    fired: list[str] = []

    def hook(k: str) -> None:
        if k == key and not fired:
            fired.append(k)
            raise exc

    return hook


@pytest.fixture
def faulty(lrt_storage_target: StorageTarget) -> FaultyStorage:
    return FaultyStorage(lrt_storage_target.storage())


def test_manifest_write_that_landed_but_reported_an_error(faulty: FaultyStorage) -> None:
    """The response was lost after the write landed: the next save adopts it and goes on."""
    job_id = unique_name("job")
    cp = Checkpoint(faulty, job_id, "w")
    cp.claim()
    cp.save({"step": 1})
    faulty.after_put = _once(layout.manifest_key(job_id), StorageError("connection reset"))
    with pytest.raises(StorageError):
        cp.save({"step": 2})
    cp.save({"step": 3})
    assert cp.generation == 3
    reader = Checkpoint(faulty.inner, job_id, "r")
    assert reader.load() == {"step": 3}
    # nothing it wrote was overwritten under the manifest's feet: every kept state verifies
    states = list(faulty.inner.list_keys(layout.state_prefix(job_id)))
    assert len(states) == 2


def test_manifest_write_that_failed_before_landing(faulty: FaultyStorage) -> None:
    job_id = unique_name("job")
    cp = Checkpoint(faulty, job_id, "w")
    cp.claim()
    cp.save({"step": 1})
    faulty.before_put = _once(layout.manifest_key(job_id), StorageError("timed out"))
    with pytest.raises(StorageError):
        cp.save({"step": 2})
    assert Checkpoint(faulty.inner, job_id, "r").load() == {"step": 1}
    cp.save({"step": 3})
    assert Checkpoint(faulty.inner, job_id, "r").load() == {"step": 3}


def test_unclear_write_then_a_newer_claim_is_lease_lost(faulty: FaultyStorage) -> None:
    from lrtkit.errors import LeaseLost

    job_id = unique_name("job")
    cp = Checkpoint(faulty, job_id, "old")
    cp.claim()
    faulty.before_put = _once(layout.manifest_key(job_id), StorageError("timed out"))
    with pytest.raises(StorageError):
        cp.save({"step": 1})
    Checkpoint(faulty.inner, job_id, "new").claim()
    with pytest.raises(LeaseLost):
        cp.save({"step": 2})


def test_pruning_failures_are_logged_not_raised(
    faulty: FaultyStorage, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = unique_name("job")
    cp = Checkpoint(faulty, job_id, "w", keep=1)
    cp.claim()

    def refuse(key: str) -> None:
        raise StorageError(f"access denied deleting {key}")

    faulty.before_delete = refuse
    with caplog.at_level(logging.WARNING, logger="lrtkit.checkpoint"):
        for step in range(3):
            cp.save({"step": step})
    assert "pruning" in caplog.text
    assert cp.load() == {"step": 2}
    faulty.before_delete = None
    cp.save({"step": 3})  # pruning works again for what this save drops
    assert cp.load() == {"step": 3}


def test_file_changed_during_upload_is_uploaded_again(
    faulty: FaultyStorage, tmp_path: Path
) -> None:
    job_id = unique_name("job")
    folder = tmp_path / "ck"
    write_tree(folder, {"weights.bin": b"first content", "other": b"o"})
    changed: list[str] = []

    def change_once(key: str, path: Path) -> None:
        if path.name == "weights.bin" and not changed:
            changed.append(key)
            path.write_bytes(b"second, longer content")

    faulty.after_upload = change_once
    cp = Checkpoint(faulty, job_id, "w")
    cp.save_dir(folder)
    restored = tmp_path / "restored"
    assert Checkpoint(faulty.inner, job_id, "r").restore_dir(restored)
    assert read_tree(restored)[0] == {"weights.bin": b"second, longer content", "other": b"o"}
    blobs = list(faulty.inner.list_keys(layout.blobs_prefix(job_id)))
    first = hashlib.sha256(b"first content").hexdigest()
    assert not any(k.endswith(first) for k in blobs)  # the torn upload was removed


def test_file_that_never_stops_changing_is_named(faulty: FaultyStorage, tmp_path: Path) -> None:
    job_id = unique_name("job")
    folder = tmp_path / "ck"
    write_tree(folder, {"log.txt": b"line\n"})

    def append(key: str, path: Path) -> None:
        with open(path, "ab") as f:
            f.write(b"more\n")

    faulty.after_upload = append
    cp = Checkpoint(faulty, job_id, "w")
    with pytest.raises(LrtError, match=r"log\.txt kept changing"):
        cp.save_dir(folder)
    assert Checkpoint(faulty.inner, job_id, "r").restore_dir(tmp_path / "r") is False
