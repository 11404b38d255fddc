"""Checkpoints: fencing between real processes, folders, and the details a handler relies on."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lrtkit.checkpoint import Checkpoint, CheckpointStateError
from lrtkit.errors import CorruptCheckpoint, LeaseLost, LrtError
from lrtkit.storage import layout
from lrtkit.storage.file import FileStorage
from lrtkit.testing.storage_contract import CountingStorage, read_tree, write_tree
from lrtkit.testing.target import StorageTarget, unique_name

_STALE_HOLDER = textwrap.dedent(
    """
    import sys
    from lrtkit.checkpoint import Checkpoint
    from lrtkit.config import load_settings
    from lrtkit.errors import LeaseLost
    from lrtkit.plugins import load_storage

    job_id = sys.argv[1]
    cp = Checkpoint(load_storage(load_settings()), job_id, "old-worker")
    cp.claim()
    cp.save({"step": 1, "by": "old"})
    print("saved", flush=True)
    sys.stdin.readline()  # the parent claims as a newer holder meanwhile
    try:
        cp.save({"step": 2, "by": "old"})
    except LeaseLost as exc:
        print("lease-lost", exc, flush=True)
    else:
        print("wrote", flush=True)
    """
)


def test_a_checkpoint_written_by_a_stale_lease_holder_is_refused_and_the_newer_survives(
    lrt_storage_target: StorageTarget, tmp_path: Path
) -> None:
    """The old worker is a separate, still-running process that thinks it holds the job."""
    job_id = unique_name("job")
    script = tmp_path / "stale.py"
    script.write_text(_STALE_HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), job_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=lrt_storage_target.subprocess_env(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline().strip() == "saved"
        new = Checkpoint(lrt_storage_target.storage(), job_id, "new-worker")
        new.claim()
        assert new.load() == {"step": 1, "by": "old"}  # resumes from the old worker's progress
        new.save({"step": 5, "by": "new"})
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = proc.stdout.read()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.startswith("lease-lost"), out
    assert "new-worker" in out  # the message says who holds it now
    assert Checkpoint(lrt_storage_target.storage(), job_id, "reader").load() == {
        "step": 5,
        "by": "new",
    }
    new.save({"step": 6, "by": "new"})  # and the newer holder is not disturbed
    assert new.load() == {"step": 6, "by": "new"}


def test_save_without_claim_claims_first(lrt_storage_target: StorageTarget) -> None:
    job_id = unique_name("job")
    old = Checkpoint(lrt_storage_target.storage(), job_id, "old")
    old.save({"a": 1})  # implicit claim
    new = Checkpoint(lrt_storage_target.storage(), job_id, "new")
    new.save({"a": 2})  # implicit claim fences `old`
    with pytest.raises(LeaseLost):
        old.save({"a": 3})
    assert new.load() == {"a": 2}


def test_claim_after_revoke_is_refused(lrt_storage_target: StorageTarget) -> None:
    cp = Checkpoint(lrt_storage_target.storage(), unique_name("job"), "w")
    cp.revoke("shutdown")
    with pytest.raises(LeaseLost, match="shutdown"):
        cp.claim()


def test_manifest_records_epochs_and_holders(lrt_storage_target: StorageTarget) -> None:
    storage = lrt_storage_target.storage()
    job_id = unique_name("job")
    for owner in ("a", "b", "c"):
        cp = Checkpoint(storage, job_id, owner)
        cp.claim()
        cp.save({"owner": owner})
    manifest = json.loads(storage.get(layout.manifest_key(job_id))[0])
    assert manifest["epoch"] == 3
    assert manifest["owner"] == "c"
    assert [h["owner"] for h in manifest["holders"]] == ["a", "b", "c"]
    assert manifest["generation"] == 3
    assert [g["generation"] for g in manifest["generations"]] == [3, 2]  # keep=2


def test_owner_tokens_with_any_characters(lrt_storage_target: StorageTarget) -> None:
    job_id = unique_name("job")
    cp = Checkpoint(lrt_storage_target.storage(), job_id, "host:42/attempt 3 ✓")
    cp.claim()
    cp.save({"ok": True})
    assert Checkpoint(lrt_storage_target.storage(), job_id, "r").load() == {"ok": True}


def test_bad_arguments(lrt_storage_target: StorageTarget, tmp_path: Path) -> None:
    storage = lrt_storage_target.storage()
    with pytest.raises(LrtError, match="keep"):
        Checkpoint(storage, "j", "w", keep=0)
    with pytest.raises(LrtError, match="job_id"):
        Checkpoint(storage, "../j", "w")
    cp = Checkpoint(storage, "j", "w")
    with pytest.raises(LrtError, match="not a folder"):
        cp.save_dir(tmp_path / "missing")


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"w": {1, 2}}, r"state\['w'\] is of type set"),
        ([1, 2, object()], r"state\[2\] is of type object"),
        ({"nested": {"deep": [Path("/x")]}}, r"state\['nested'\]\['deep'\]\[0\] is of type"),
    ],
)
def test_non_json_state_names_the_value(
    lrt_storage_target: StorageTarget, state: object, where: str
) -> None:
    cp = Checkpoint(lrt_storage_target.storage(), unique_name("job"), "w")
    with pytest.raises(CheckpointStateError, match=where) as info:
        cp.save(state)
    assert isinstance(info.value, LrtError)
    assert isinstance(info.value, TypeError)


def test_circular_state_is_refused(lrt_storage_target: StorageTarget) -> None:
    state: dict[str, object] = {}
    state["self"] = state
    cp = Checkpoint(lrt_storage_target.storage(), unique_name("job"), "w")
    with pytest.raises(CheckpointStateError, match="circular"):
        cp.save(state)


def test_restore_replaces_conflicting_files_and_folders(
    lrt_storage_target: StorageTarget, tmp_path: Path
) -> None:
    job_id = unique_name("job")
    src = tmp_path / "src"
    write_tree(src, {"a/b.txt": b"file in folder a", "c": b"c is a file"})
    cp = Checkpoint(lrt_storage_target.storage(), job_id, "w")
    cp.save_dir(src)
    dst = tmp_path / "dst"
    write_tree(dst, {"a": b"a is a file here", "c/d.txt": b"c is a folder here"})
    assert cp.restore_dir(dst)
    assert read_tree(dst) == ({"a/b.txt": b"file in folder a", "c": b"c is a file"}, {"a"})


def test_restore_keeps_file_modes(lrt_storage_target: StorageTarget, tmp_path: Path) -> None:
    job_id = unique_name("job")
    src = tmp_path / "src"
    write_tree(src, {"run.sh": b"#!/bin/sh\necho hi\n", "data": b"x"})
    (src / "run.sh").chmod(0o755)
    (src / "data").chmod(0o600)
    cp = Checkpoint(lrt_storage_target.storage(), job_id, "w")
    cp.save_dir(src)
    dst = tmp_path / "dst"
    assert cp.restore_dir(dst)
    assert (dst / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (dst / "data").stat().st_mode & 0o777 == 0o600


def test_restore_into_current_folder_downloads_only_differences(
    lrt_storage_target: StorageTarget, tmp_path: Path
) -> None:
    job_id = unique_name("job")
    folder = tmp_path / "ck"
    write_tree(folder, {f"f{i}": f"content {i}".encode() for i in range(6)})
    counting = CountingStorage(lrt_storage_target.storage())
    cp = Checkpoint(counting, job_id, "w")
    cp.save_dir(folder)
    (folder / "f2").write_bytes(b"local change")
    (folder / "extra").write_bytes(b"not in checkpoint")
    counting.reset()
    assert cp.restore_dir(folder)
    assert counting.calls["download_file"] == 1
    assert read_tree(folder)[0] == {f"f{i}": f"content {i}".encode() for i in range(6)}


def test_folder_and_state_slots_are_independent(
    lrt_storage_target: StorageTarget, tmp_path: Path
) -> None:
    job_id = unique_name("job")
    storage = lrt_storage_target.storage()
    cp = Checkpoint(storage, job_id, "w", keep=1)
    folder = tmp_path / "ck"
    write_tree(folder, {"weights": b"w1"})
    cp.save_dir(folder)
    for step in range(4):  # many state saves with keep=1 never drop the folder
        cp.save({"step": step})
    dst = tmp_path / "dst"
    assert Checkpoint(storage, job_id, "r").restore_dir(dst)
    assert read_tree(dst)[0] == {"weights": b"w1"}
    write_tree(folder, {"weights": b"w2"})
    cp.save_dir(folder)
    assert Checkpoint(storage, job_id, "r").load() == {"step": 3}


def test_file_checkpoint_layout_on_disk(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "store")
    cp = Checkpoint(storage, "job-1", "w")
    cp.save({"x": 1})
    assert (tmp_path / "store/jobs/job-1/checkpoint/manifest.json").is_file()
    assert len(list((tmp_path / "store/jobs/job-1/checkpoint/state").iterdir())) == 1


def test_restore_into_a_file_is_a_clear_error(
    lrt_storage_target: StorageTarget, tmp_path: Path
) -> None:
    cp = Checkpoint(lrt_storage_target.storage(), unique_name("job"), "w")
    write_tree(tmp_path / "src", {"f": b"x"})
    cp.save_dir(tmp_path / "src")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LrtError, match="not a folder"):
        cp.restore_dir(tmp_path / "file")


def test_unreadable_manifest_says_how_to_start_over(lrt_storage_target: StorageTarget) -> None:
    storage = lrt_storage_target.storage()
    job_id = unique_name("job")
    storage.put(layout.manifest_key(job_id), b"garbage")
    with pytest.raises(CorruptCheckpoint, match="delete everything under"):
        Checkpoint(storage, job_id, "w").claim()


def test_identical_files_are_uploaded_once(
    lrt_storage_target: StorageTarget, tmp_path: Path
) -> None:
    counting = CountingStorage(lrt_storage_target.storage())
    src = tmp_path / "src"
    write_tree(src, {f"copy-{i}.bin": b"same bytes" * 1000 for i in range(5)} | {"x": b"other"})
    Checkpoint(counting, unique_name("job"), "w").save_dir(src)
    assert counting.calls["upload_file"] == 2


def test_many_files_round_trip_in_parallel(
    lrt_storage_target: StorageTarget, tmp_path: Path
) -> None:
    files = {f"d{i % 7}/sub{i % 3}/f{i:03d}.bin": f"file {i}".encode() * (i + 1) for i in range(60)}
    src = tmp_path / "src"
    write_tree(src, files)
    job_id = unique_name("job")
    Checkpoint(lrt_storage_target.storage(), job_id, "w").save_dir(src)
    dst = tmp_path / "dst"
    write_tree(dst, {"d1/sub1/f001.bin": b"stale", "zzz/extra.bin": b"gone after restore"})
    assert Checkpoint(lrt_storage_target.storage(), job_id, "r").restore_dir(dst)
    assert read_tree(dst)[0] == files


def test_failed_restore_changes_nothing_in_the_folder(
    lrt_storage_target: StorageTarget, tmp_path: Path
) -> None:
    storage = lrt_storage_target.storage()
    job_id = unique_name("job")
    src = tmp_path / "src"
    write_tree(src, {"a/b.txt": b"needs folder a", "z.bin": b"will be corrupted"})
    Checkpoint(storage, job_id, "w").save_dir(src)
    [blob] = [
        k
        for k in storage.list_keys(layout.blobs_prefix(job_id))
        if k.endswith(hashlib.sha256(b"will be corrupted").hexdigest())
    ]
    storage.put(blob, b"rot")
    dst = tmp_path / "dst"
    write_tree(dst, {"a": b"a is my file", "keep.txt": b"mine"})
    with pytest.raises(CorruptCheckpoint, match=r"z\.bin"):
        Checkpoint(storage, job_id, "r").restore_dir(dst)
    assert read_tree(dst) == ({"a": b"a is my file", "keep.txt": b"mine"}, set())
