"""The storage contract suite: what every ``lrtkit.storage`` plugin must do.

A storage plugin's tests provide a fixture ``lrt_storage_target`` yielding a
:class:`~lrtkit.testing.target.StorageTarget` for a fresh, unique prefix (cleaned up after),
and subclass the suite::

    from lrtkit.testing.storage_contract import StorageContract

    class TestMyStorageContract(StorageContract):
        pass

The suite talks to the storage only through the :class:`~lrtkit.storage.base.Storage` methods
(never the local filesystem behind it), so it runs unchanged on S3, R2, MinIO or moto. It covers
the object protocol (whole writes, etags, conditional writes under contention, listing,
deletes, streamed files, key checks) and the checkpoints built on it (fencing of stale holders,
folder checkpoints with checksums, incremental uploads, pruning, corruption detection).

Knobs (class attributes): ``large_file_mb`` for the streamed file round trip,
``racing_threads`` and ``racing_rounds`` for the conditional-write race.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from lrtkit.checkpoint import Checkpoint, CheckpointStateError
from lrtkit.errors import (
    CorruptCheckpoint,
    LeaseLost,
    NotFound,
    PreconditionFailed,
    StorageError,
)
from lrtkit.storage import layout
from lrtkit.storage.base import Storage
from lrtkit.testing.target import StorageTarget, unique_name

if TYPE_CHECKING:
    from lrtkit.config import Settings


class CountingStorage(Storage):
    """A storage that forwards every call to another and counts them by method name.

    Tests use it to prove what a component sent (only changed files uploaded...).
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.uploaded: list[str] = []
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        from lrtkit.plugins import load_storage

        return cls(load_storage(settings))

    @property
    def url(self) -> str:
        return self.inner.url

    def get(self, key: str) -> tuple[bytes, str]:
        self._count("get")
        return self.inner.get(key)

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        self._count("put")
        return self.inner.put(key, data, if_match=if_match, if_none_match=if_none_match)

    def delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)

    def list_keys(self, prefix: str) -> Iterator[str]:
        self._count("list_keys")
        return self.inner.list_keys(prefix)

    def exists(self, key: str) -> bool:
        self._count("exists")
        return self.inner.exists(key)

    def upload_file(self, key: str, path: Path) -> str:
        self._count("upload_file")
        with self._lock:
            self.uploaded.append(key)
        return self.inner.upload_file(key, path)

    def download_file(self, key: str, path: Path) -> None:
        self._count("download_file")
        self.inner.download_file(key, path)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.uploaded.clear()


def write_tree(root: Path, files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> None:
    """Create ``files`` (relpath -> bytes) and empty ``dirs`` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel in dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)


def read_tree(root: Path) -> tuple[dict[str, bytes], set[str]]:
    """Every file (relpath -> bytes) and every folder (relpath) under ``root``."""
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    dirs = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}
    return files, dirs


def _pseudo_random(size: int, seed: str) -> bytes:
    """Incompressible, reproducible bytes (fast enough for a few MB)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


_DOOMED_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from lrtkit.checkpoint import Checkpoint
    from lrtkit.config import load_settings
    from lrtkit.plugins import load_storage
    from lrtkit.testing.storage_contract import CountingStorage, versioned_files, write_tree

    job_id, folder, marker = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    stall_after, files, size = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])

    class StallingStorage(CountingStorage):
        # Tells the parent it is half-way through the uploads, and waits there to be killed.
        stall = False

        def upload_file(self, key, path):
            etag = super().upload_file(key, path)
            if self.stall and self.calls["upload_file"] >= stall_after:
                Path(marker).write_text("half-way")
                time.sleep(120)
            return etag

    storage = StallingStorage(load_storage(load_settings()))
    cp = Checkpoint(storage, job_id, "doomed-worker")
    cp.claim()
    write_tree(folder, versioned_files(1, files, size))
    cp.save_dir(folder)
    cp.save({"version": 1})
    write_tree(folder, versioned_files(2, files, size))
    storage.reset()
    storage.stall = True
    cp.save_dir(folder)
    print("finished without being killed", flush=True)
    """
)


def versioned_files(version: int, count: int, size: int) -> dict[str, bytes]:
    """``count`` files of ``size`` bytes whose first line names ``version`` (see version_of)."""
    out = {}
    for i in range(count):
        head = f"version {version} file {i}\n".encode()
        out[f"shard-{i:02d}.bin"] = head + bytes([version % 256]) * (size - len(head))
    return out


def version_of(files: dict[str, bytes]) -> set[int]:
    """The versions found in files made by :func:`versioned_files` (one if consistent)."""
    return {int(data.split(b" ", 2)[1]) for data in files.values()}


def check_kill_half_way_through_save_dir(
    target: StorageTarget, tmp_path: Path, *, files: int = 24, size: int = 256 * 1024
) -> None:
    """A holder process SIGKILLed half-way through a big save_dir leaves the previous
    generation loadable and restorable, whole; the next claim sweeps the dead save's uploads.
    """
    job_id = unique_name("job")
    folder = tmp_path / "doomed-folder"
    marker = tmp_path / "half-way"
    script = tmp_path / "doomed.py"
    script.write_text(_DOOMED_HOLDER)
    args = [job_id, str(folder), str(marker), str(files // 2), str(files), str(size)]
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=target.subprocess_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the holder exited early ({proc.returncode}): {proc.stderr.read()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the holder never got half-way"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    storage = target.storage()
    doomed = f"{layout.blobs_prefix(job_id)}{layout.owner_tag('doomed-worker')}/"
    # v1, and part of v2 (uploads run on several threads: at least the one that signalled)
    assert files < len(list(storage.list_keys(doomed))) < 2 * files
    nxt = Checkpoint(storage, job_id, "next-worker")
    nxt.claim()
    assert nxt.load() == {"version": 1}
    restored = tmp_path / "restored"
    assert nxt.restore_dir(restored)
    got, _ = read_tree(restored)
    assert got == versioned_files(1, files, size)
    assert len(list(storage.list_keys(doomed))) == files  # the dead save's uploads are swept
    # The next holder checkpoints from where the killed one stopped.
    nxt.save_dir(folder)
    again = tmp_path / "again"
    assert Checkpoint(storage, job_id, "reader").restore_dir(again)
    assert read_tree(again)[0] == versioned_files(2, files, size)


class StorageContract:
    """Plain pytest class; subclass it in a module that provides ``lrt_storage_target``."""

    large_file_mb: ClassVar[int] = 9
    racing_threads: ClassVar[int] = 6
    racing_rounds: ClassVar[int] = 4

    @pytest.fixture
    def storage(self, lrt_storage_target: StorageTarget) -> Storage:
        return lrt_storage_target.storage()

    @pytest.fixture
    def job_id(self) -> str:
        return unique_name("job")

    # -- objects ------------------------------------------------------------------------------

    def test_put_get_etag(self, storage: Storage) -> None:
        etag = storage.put("contract/a.json", b'{"a": 1}')
        data, got_etag = storage.get("contract/a.json")
        assert data == b'{"a": 1}'
        assert etag
        assert got_etag == etag
        other = storage.put("contract/b.json", b'{"a": 2}')
        assert other != etag

    def test_empty_object(self, storage: Storage) -> None:
        storage.put("contract/empty", b"")
        assert storage.get("contract/empty")[0] == b""
        assert storage.exists("contract/empty")

    def test_overwrite_replaces_whole_object(self, storage: Storage) -> None:
        first = storage.put("contract/o", b"x" * 1000)
        second = storage.put("contract/o", b"short")
        assert first != second
        assert storage.get("contract/o") == (b"short", second)

    def test_missing_key_is_not_found(self, storage: Storage) -> None:
        with pytest.raises(NotFound) as info:
            storage.get("contract/missing")
        assert info.value.key == "contract/missing"
        assert not storage.exists("contract/missing")

    def test_if_none_match_creates_only_once(self, storage: Storage) -> None:
        etag = storage.put("contract/once", b"first", if_none_match=True)
        with pytest.raises(PreconditionFailed):
            storage.put("contract/once", b"second", if_none_match=True)
        assert storage.get("contract/once") == (b"first", etag)

    def test_if_match_succeeds_on_current_etag_only(self, storage: Storage) -> None:
        v1 = storage.put("contract/m", b"v1")
        v2 = storage.put("contract/m", b"v2", if_match=v1)
        assert storage.get("contract/m") == (b"v2", v2)
        with pytest.raises(PreconditionFailed):
            storage.put("contract/m", b"stale", if_match=v1)
        assert storage.get("contract/m")[0] == b"v2"
        v3 = storage.put("contract/m", b"v3", if_match=v2)
        assert storage.get("contract/m") == (b"v3", v3)

    def test_if_match_on_missing_key_fails(self, storage: Storage) -> None:
        etag = storage.put("contract/gone", b"x")
        storage.delete("contract/gone")
        with pytest.raises(PreconditionFailed):
            storage.put("contract/gone", b"y", if_match=etag)
        assert not storage.exists("contract/gone")

    def test_concurrent_conditional_writers_one_wins_per_round(
        self, lrt_storage_target: StorageTarget
    ) -> None:
        clients = [lrt_storage_target.storage() for _ in range(self.racing_threads)]
        key = "contract/race"
        barrier = threading.Barrier(self.racing_threads)

        def attempt(index: int, etag: str | None, round_no: int) -> bool:
            barrier.wait(timeout=30)
            # Bodies differ every round: etags are content hashes (S3's too), so rewriting the
            # same bytes would give the same etag back.
            body = f"writer-{index}-round-{round_no}".encode()
            try:
                if etag is None:
                    clients[index].put(key, body, if_none_match=True)
                else:
                    clients[index].put(key, body, if_match=etag)
            except PreconditionFailed:
                return False
            return True

        etag: str | None = None
        with ThreadPoolExecutor(self.racing_threads) as pool:
            for round_no in range(self.racing_rounds):
                n = self.racing_threads
                wins = list(pool.map(attempt, range(n), [etag] * n, [round_no] * n))
                assert wins.count(True) == 1, f"round {round_no}: {wins.count(True)} writers won"
                data, etag = clients[0].get(key)
                assert data == f"writer-{wins.index(True)}-round-{round_no}".encode()

    def test_list_keys_by_prefix_sorted(self, storage: Storage) -> None:
        for key in ["lst/b", "lst/a/2", "lst/a/1", "lst/a/sub/3", "lst/ab/4", "lst/c.txt"]:
            storage.put(key, key.encode())
        assert list(storage.list_keys("lst/a/")) == ["lst/a/1", "lst/a/2", "lst/a/sub/3"]
        assert list(storage.list_keys("lst/a")) == [
            "lst/a/1",
            "lst/a/2",
            "lst/a/sub/3",
            "lst/ab/4",
        ]
        assert list(storage.list_keys("lst/")) == [
            "lst/a/1",
            "lst/a/2",
            "lst/a/sub/3",
            "lst/ab/4",
            "lst/b",
            "lst/c.txt",
        ]
        assert list(storage.list_keys("lst/c")) == ["lst/c.txt"]
        assert list(storage.list_keys("lst/zzz")) == []
        assert list(storage.list_keys("nothing-here/")) == []

    def test_list_children_reads_one_level(self, storage: Storage) -> None:
        for key in ["kids/b/x", "kids/a/1", "kids/a/deep/2", "kids/ab", "kids/c/y/z"]:
            storage.put(key, b".")
        assert list(storage.list_children("kids/")) == ["a", "ab", "b", "c"]
        assert list(storage.list_children("kids/a/")) == ["1", "deep"]
        assert list(storage.list_children("none/")) == []

    def test_delete_is_idempotent(self, storage: Storage) -> None:
        storage.put("del/x", b"x")
        storage.put("del/y/z", b"z")
        storage.delete("del/x")
        storage.delete("del/x")
        storage.delete("del/never-was")
        with pytest.raises(NotFound):
            storage.get("del/x")
        assert list(storage.list_keys("del/")) == ["del/y/z"]
        assert storage.delete_prefix("del/") == 1
        assert list(storage.list_keys("del/")) == []

    @pytest.mark.parametrize(
        "key", ["", "/abs", "../up", "a/../../b", "a//b", "a/./b", "a\\b", "trailing/", "nul\x00"]
    )
    def test_bad_keys_refused(self, storage: Storage, key: str, tmp_path: Path) -> None:
        with pytest.raises(StorageError):
            storage.put(key, b"x")
        with pytest.raises(StorageError):
            storage.get(key)
        with pytest.raises(StorageError):
            storage.delete(key)
        source = tmp_path / "f"
        source.write_bytes(b"x")
        with pytest.raises(StorageError):
            storage.upload_file(key, source)

    def test_upload_download_large_file(self, storage: Storage, tmp_path: Path) -> None:
        size = self.large_file_mb * 1024 * 1024 + 12345
        data = _pseudo_random(size, "large")
        source = tmp_path / "big.bin"
        source.write_bytes(data)
        etag = storage.upload_file("files/big.bin", source)
        assert etag
        dest = tmp_path / "out" / "nested" / "big.bin"
        storage.download_file("files/big.bin", dest)
        assert dest.stat().st_size == size
        assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()
        got, got_etag = storage.get("files/big.bin")
        assert got == data
        assert got_etag == etag
        # the etag of an uploaded file fences like any other
        storage.put("files/big.bin", b"replaced", if_match=etag)
        assert storage.get("files/big.bin")[0] == b"replaced"
        assert sorted(p.name for p in dest.parent.iterdir()) == ["big.bin"]  # no temp files left

    def test_download_missing_is_not_found(self, storage: Storage, tmp_path: Path) -> None:
        dest = tmp_path / "never.bin"
        with pytest.raises(NotFound):
            storage.download_file("files/missing.bin", dest)
        assert not dest.exists()

    def test_upload_missing_local_file_is_an_error(self, storage: Storage, tmp_path: Path) -> None:
        with pytest.raises(StorageError, match="no-such-file"):
            storage.upload_file("files/x", tmp_path / "no-such-file")
        assert not storage.exists("files/x")

    # -- checkpoints: fencing -------------------------------------------------------------------

    def test_stale_holder_save_refused_and_newer_checkpoint_survives(
        self, lrt_storage_target: StorageTarget, job_id: str
    ) -> None:
        old = Checkpoint(lrt_storage_target.storage(), job_id, "worker-old")
        old.claim()
        old.save({"step": 1, "by": "old"})
        new = Checkpoint(lrt_storage_target.storage(), job_id, "worker-new")
        new.claim()
        assert new.load() == {"step": 1, "by": "old"}
        new.save({"step": 2, "by": "new"})
        with pytest.raises(LeaseLost):
            old.save({"step": 99, "by": "old"})
        with pytest.raises(LeaseLost):
            old.save({"step": 100, "by": "old"})  # stays fenced out
        reader = Checkpoint(lrt_storage_target.storage(), job_id, "reader")
        assert reader.load() == {"step": 2, "by": "new"}
        new.save({"step": 3, "by": "new"})  # the newer holder goes on undisturbed
        assert reader.load() == {"step": 3, "by": "new"}

    def test_stale_holder_folder_save_refused(
        self, lrt_storage_target: StorageTarget, job_id: str, tmp_path: Path
    ) -> None:
        folder = tmp_path / "ck"
        write_tree(folder, {"a.txt": b"one"})
        old = Checkpoint(lrt_storage_target.storage(), job_id, "worker-old")
        old.claim()
        old.save_dir(folder)
        new = Checkpoint(lrt_storage_target.storage(), job_id, "worker-new")
        new.claim()
        write_tree(folder, {"a.txt": b"stale write"})
        with pytest.raises(LeaseLost):
            old.save_dir(folder)
        restored = tmp_path / "restored"
        assert new.restore_dir(restored)
        assert read_tree(restored)[0] == {"a.txt": b"one"}

    def test_stale_save_started_before_claim_refused(
        self, lrt_storage_target: StorageTarget, job_id: str
    ) -> None:
        """A holder that never saw the newer claim (it had claimed earlier) is refused."""
        old = Checkpoint(lrt_storage_target.storage(), job_id, "a")
        old.claim()
        new = Checkpoint(lrt_storage_target.storage(), job_id, "b")
        new.claim()
        with pytest.raises(LeaseLost):
            old.save({"first save": "after being fenced"})
        assert new.load() is None
        assert old.revoked is not None

    def test_newest_of_racing_claimers_wins(
        self, lrt_storage_target: StorageTarget, job_id: str
    ) -> None:
        holders = [
            Checkpoint(lrt_storage_target.storage(), job_id, f"racer-{i}")
            for i in range(self.racing_threads)
        ]
        barrier = threading.Barrier(len(holders))

        def claim(cp: Checkpoint) -> None:
            barrier.wait(timeout=30)
            cp.claim()

        with ThreadPoolExecutor(len(holders)) as pool:
            list(pool.map(claim, holders))
        winners = []
        for cp in holders:
            try:
                cp.save({"owner": cp.owner})
            except LeaseLost:
                continue
            winners.append(cp.owner)
        assert len(winners) == 1
        assert holders[0].load() == {"owner": winners[0]}

    def test_load_after_new_claim_gives_newest_state(
        self, lrt_storage_target: StorageTarget, job_id: str
    ) -> None:
        first = Checkpoint(lrt_storage_target.storage(), job_id, "attempt-1")
        assert first.load() is None
        first.claim()
        for step in range(1, 6):
            first.save({"step": step})
        assert first.generation == 5
        second = Checkpoint(lrt_storage_target.storage(), job_id, "attempt-2")
        second.claim()
        assert second.load() == {"step": 5}
        assert second.generation == 5
        second.save({"step": 6})
        assert second.generation == 6
        third = Checkpoint(lrt_storage_target.storage(), job_id, "attempt-3")
        assert third.load() == {"step": 6}

    def test_revoke_refuses_every_later_save(
        self, lrt_storage_target: StorageTarget, job_id: str, tmp_path: Path
    ) -> None:
        cp = Checkpoint(lrt_storage_target.storage(), job_id, "w")
        cp.claim()
        cp.save({"step": 1})
        cp.revoke("lease_lost")
        with pytest.raises(LeaseLost, match="lease_lost"):
            cp.save({"step": 2})
        write_tree(tmp_path / "d", {"f": b"x"})
        with pytest.raises(LeaseLost):
            cp.save_dir(tmp_path / "d")
        assert cp.load() == {"step": 1}

    def test_saves_from_two_threads_of_one_holder(
        self, lrt_storage_target: StorageTarget, job_id: str
    ) -> None:
        cp = Checkpoint(lrt_storage_target.storage(), job_id, "w")
        cp.claim()
        per_thread = 8

        def run(name: str) -> None:
            for i in range(per_thread):
                cp.save({"thread": name, "i": i})

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(run, ["handler", "heartbeat"]))
        assert cp.generation == 2 * per_thread
        state = cp.load()
        assert state is not None
        assert state["i"] == per_thread - 1

    def test_state_must_be_json(self, lrt_storage_target: StorageTarget, job_id: str) -> None:
        cp = Checkpoint(lrt_storage_target.storage(), job_id, "w")
        cp.claim()
        with pytest.raises(CheckpointStateError, match=r"state\['weights'\] is of type bytes"):
            cp.save({"step": 1, "weights": b"\x00"})
        assert cp.load() is None
        assert cp.generation == 0

    # -- checkpoints: folders ----------------------------------------------------------------

    def test_save_dir_restore_dir_round_trip(
        self, lrt_storage_target: StorageTarget, job_id: str, tmp_path: Path
    ) -> None:
        files = {
            "model.safetensors": _pseudo_random(300_000, "model"),
            "optimizer/state.pt": _pseudo_random(50_000, "opt"),
            "optimizer/deep/er/x.json": b'{"lr": 0.001}',
            "same-a.txt": b"identical",
            "same-b.txt": b"identical",
            "empty.txt": b"",
        }
        source = tmp_path / "src"
        write_tree(source, files, dirs=("logs/empty",))
        writer = Checkpoint(lrt_storage_target.storage(), job_id, "writer")
        writer.claim()
        writer.save({"step": 7})
        writer.save_dir(source)
        target = tmp_path / "dst"
        write_tree(target, {"stale.txt": b"remove me", "optimizer/old.bin": b"old"})
        reader = Checkpoint(lrt_storage_target.storage(), job_id, "reader")
        assert reader.restore_dir(target) is True
        got_files, got_dirs = read_tree(target)
        assert got_files == files
        assert got_dirs == {
            "optimizer",
            "optimizer/deep",
            "optimizer/deep/er",
            "logs",
            "logs/empty",
        }
        assert reader.load() == {"step": 7}  # the two slots live side by side

    def test_restore_dir_without_checkpoint(
        self, lrt_storage_target: StorageTarget, job_id: str, tmp_path: Path
    ) -> None:
        target = tmp_path / "dst"
        write_tree(target, {"keep.txt": b"mine"})
        cp = Checkpoint(lrt_storage_target.storage(), job_id, "w")
        assert cp.restore_dir(target) is False
        cp.claim()
        cp.save({"only": "state"})
        assert cp.restore_dir(target) is False
        assert read_tree(target)[0] == {"keep.txt": b"mine"}

    def test_only_changed_files_uploaded(
        self, lrt_storage_target: StorageTarget, job_id: str, tmp_path: Path
    ) -> None:
        counting = CountingStorage(lrt_storage_target.storage())
        source = tmp_path / "src"
        write_tree(source, {f"shard-{i}.bin": _pseudo_random(20_000, str(i)) for i in range(5)})
        cp = Checkpoint(counting, job_id, "w")
        cp.claim()
        cp.save_dir(source)
        assert counting.calls["upload_file"] == 5
        gen = cp.generation
        counting.reset()
        write_tree(source, {"shard-3.bin": b"changed"})
        cp.save_dir(source)
        assert counting.calls["upload_file"] == 1
        assert counting.uploaded[0].endswith(hashlib.sha256(b"changed").hexdigest())
        assert cp.generation == gen + 1
        counting.reset()
        cp.save_dir(source)  # nothing changed: nothing uploaded, no new generation
        assert counting.calls["upload_file"] == 0
        assert cp.generation == gen + 1
        # The next holder restores, then saves the unchanged folder: still nothing to upload.
        counting2 = CountingStorage(lrt_storage_target.storage())
        nxt = Checkpoint(counting2, job_id, "w2")
        nxt.claim()
        restored = tmp_path / "restored"
        assert nxt.restore_dir(restored)
        write_tree(restored, {"new.bin": b"new file"})
        nxt.save_dir(restored)
        assert counting2.uploaded == [
            f"{layout.blobs_prefix(job_id)}{layout.owner_tag('w2')}/"
            + hashlib.sha256(b"new file").hexdigest()
        ]
        assert read_tree(restored)[0]["shard-3.bin"] == b"changed"

    def test_pruning_keeps_newest_generations_and_deletes_unreferenced_blobs(
        self, lrt_storage_target: StorageTarget, job_id: str, tmp_path: Path
    ) -> None:
        storage = lrt_storage_target.storage()
        source = tmp_path / "src"
        cp = Checkpoint(storage, job_id, "w", keep=2)
        cp.claim()
        for i in range(5):
            write_tree(source, {"constant.bin": b"same always", "moving.bin": f"v{i}".encode()})
            cp.save_dir(source)
            cp.save({"i": i})
        blobs = list(storage.list_keys(layout.blobs_prefix(job_id)))
        digests = {key.rsplit("/", 1)[1] for key in blobs}
        expect = {hashlib.sha256(b).hexdigest() for b in (b"same always", b"v4")}
        assert digests == expect
        assert len(blobs) == 2
        trees = list(storage.list_keys(layout.tree_prefix(job_id)))
        states = list(storage.list_keys(layout.state_prefix(job_id)))
        assert len(trees) + len(states) <= 2 * 2
        assert len(states) == 2
        assert cp.load() == {"i": 4}
        restored = tmp_path / "restored"
        assert Checkpoint(storage, job_id, "r").restore_dir(restored)
        assert read_tree(restored)[0]["moving.bin"] == b"v4"

    def test_claim_sweeps_data_of_interrupted_earlier_saves(
        self, lrt_storage_target: StorageTarget, job_id: str, tmp_path: Path
    ) -> None:
        storage = lrt_storage_target.storage()
        old = Checkpoint(storage, job_id, "old")
        old.claim()
        old.save({"step": 1})
        # What a holder killed mid-save leaves: data nothing references.
        orphan_state = layout.state_key(job_id, 2, "old")
        orphan_blob = f"{layout.blobs_prefix(job_id)}{layout.owner_tag('old')}/" + "0" * 64
        storage.put(orphan_state, b'{"step": 2}')
        storage.put(orphan_blob, b"half")
        new = Checkpoint(storage, job_id, "new")
        new.claim()
        assert not storage.exists(orphan_state)
        assert not storage.exists(orphan_blob)
        assert new.load() == {"step": 1}

    def test_corrupted_blob_detected_on_restore(
        self, lrt_storage_target: StorageTarget, job_id: str, tmp_path: Path
    ) -> None:
        storage = lrt_storage_target.storage()
        source = tmp_path / "src"
        write_tree(source, {"ok.txt": b"fine", "sub/weights.bin": _pseudo_random(10_000, "w")})
        cp = Checkpoint(storage, job_id, "w")
        cp.claim()
        cp.save_dir(source)
        bad = hashlib.sha256((source / "sub/weights.bin").read_bytes()).hexdigest()
        [blob] = [k for k in storage.list_keys(layout.blobs_prefix(job_id)) if k.endswith(bad)]
        storage.put(blob, b"bit rot")
        target = tmp_path / "dst"
        write_tree(target, {"mine.txt": b"untouched"})
        with pytest.raises(CorruptCheckpoint, match=r"sub/weights\.bin"):
            Checkpoint(storage, job_id, "r").restore_dir(target)
        assert read_tree(target)[0] == {"mine.txt": b"untouched"}  # nothing half-restored

    def test_missing_blob_detected_on_restore(
        self, lrt_storage_target: StorageTarget, job_id: str, tmp_path: Path
    ) -> None:
        storage = lrt_storage_target.storage()
        source = tmp_path / "src"
        write_tree(source, {"gone.bin": b"soon missing"})
        cp = Checkpoint(storage, job_id, "w")
        cp.claim()
        cp.save_dir(source)
        for key in list(storage.list_keys(layout.blobs_prefix(job_id))):
            storage.delete(key)
        with pytest.raises(CorruptCheckpoint, match=r"gone\.bin"):
            Checkpoint(storage, job_id, "r").restore_dir(tmp_path / "dst")

    def test_corrupted_state_detected_on_load(
        self, lrt_storage_target: StorageTarget, job_id: str
    ) -> None:
        storage = lrt_storage_target.storage()
        cp = Checkpoint(storage, job_id, "w")
        cp.claim()
        cp.save({"step": 1})
        [key] = list(storage.list_keys(layout.state_prefix(job_id)))
        storage.put(key, b'{"step": 1000}')
        with pytest.raises(CorruptCheckpoint, match="sha256"):
            Checkpoint(storage, job_id, "r").load()

    def test_checkpoint_keys_follow_the_layout(
        self, lrt_storage_target: StorageTarget, job_id: str, tmp_path: Path
    ) -> None:
        storage = lrt_storage_target.storage()
        cp = Checkpoint(storage, job_id, "w")
        cp.claim()
        cp.save({"a": 1})
        write_tree(tmp_path / "d", {"f": b"x"})
        cp.save_dir(tmp_path / "d")
        keys: list[Any] = list(storage.list_keys(layout.job_prefix(job_id)))
        assert layout.manifest_key(job_id) in keys
        assert all(k.startswith(layout.checkpoint_prefix(job_id)) for k in keys)

    def test_holder_killed_half_way_through_save_dir(
        self, lrt_storage_target: StorageTarget, tmp_path: Path
    ) -> None:
        check_kill_half_way_through_save_dir(lrt_storage_target, tmp_path, files=12, size=96_000)
