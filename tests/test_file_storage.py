"""The file storage: the storage contract, plus what only a local folder can show."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lrtkit.config import load_settings
from lrtkit.errors import NotFound, StorageConfigError, StorageError
from lrtkit.plugins import load_storage
from lrtkit.storage.file import FileStorage, parse_file_url
from lrtkit.testing.storage_contract import StorageContract


class TestFileStorageContract(StorageContract):
    pass


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_file_url("file://./.lrtkit") == Path("./.lrtkit")
    assert parse_file_url("file:///abs/path") == Path("/abs/path")
    assert parse_file_url("file://rel/x") == Path("rel/x")
    relative = FileStorage(parse_file_url("file://./.lrtkit"))
    assert relative.root == tmp_path / ".lrtkit"
    assert relative.url == f"file://{tmp_path / '.lrtkit'}"
    with pytest.raises(StorageConfigError):
        parse_file_url("s3://bucket")
    with pytest.raises(StorageConfigError):
        parse_file_url("file://")


def test_loaded_from_settings_by_scheme(tmp_path: Path) -> None:
    storage = load_storage(load_settings(environ={"LRT_STORAGE": f"file://{tmp_path}/s"}))
    assert isinstance(storage, FileStorage)
    assert storage.root == tmp_path / "s"


def test_relative_root_does_not_move_with_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = FileStorage("store")
    storage.put("k", b"v")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert storage.get("k")[0] == b"v"
    assert (tmp_path / "store" / "k").read_bytes() == b"v"


def test_missing_parent_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    root = tmp_path / "no" / "such" / "place"
    with pytest.raises(StorageConfigError, match=str(root)):
        FileStorage(root)


def test_root_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageConfigError, match="not a folder"):
        FileStorage(tmp_path / "f")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_root_is_a_config_error(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(StorageConfigError, match=str(root)):
            FileStorage(root)
    finally:
        root.chmod(0o700)


def test_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("top secret")
    storage = FileStorage(tmp_path / "store")
    os.symlink(outside, tmp_path / "store" / "link")
    with pytest.raises(StorageError, match="outside"):
        storage.get("link/secret")
    with pytest.raises(StorageError, match="outside"):
        storage.put("link/new", b"x")
    assert not (outside / "new").exists()


def test_reserved_names_refused_and_hidden(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "store")
    with pytest.raises(StorageError, match="reserved"):
        storage.put(".lrtkit-locks/00.lock", b"x")
    storage.put("a/b", b"x")
    (tmp_path / "store" / "a" / ".lrtkit-tmp-leftover").write_bytes(b"half")
    assert list(storage.list_keys("")) == ["a/b"]


def test_keys_are_files_under_the_root(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "store")
    storage.put("jobs/j/record.json", b"{}")
    assert (tmp_path / "store" / "jobs" / "j" / "record.json").read_bytes() == b"{}"
    storage.delete("jobs/j/record.json")
    assert not (tmp_path / "store" / "jobs").exists()  # empty folders tidied away


def test_object_and_folder_of_same_name(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "store")
    storage.put("a", b"object")
    with pytest.raises(StorageError, match="'a/b'"):
        storage.put("a/b", b"x")
    storage.put("c/d", b"x")
    with pytest.raises(NotFound):
        storage.get("c")


_RACER = textwrap.dedent(
    """
    import sys, time
    from lrtkit.errors import PreconditionFailed
    from lrtkit.storage.file import FileStorage

    root, name, rounds, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    storage = FileStorage(root)
    while time.time() < start:
        time.sleep(0.001)
    wins = 0
    for r in range(rounds):
        # Every process reads the counter and tries to bump it conditionally; losers re-read.
        while True:
            data, etag = storage.get("counter")
            value = int(data)
            try:
                storage.put("counter", str(value + 1).encode(), if_match=etag)
            except PreconditionFailed:
                continue
            storage.put(f"log/{value + 1:05d}", name.encode(), if_none_match=True)
            wins += 1
            break
    print(wins)
    """
)


def test_conditional_writes_from_four_processes(tmp_path: Path) -> None:
    """Four processes bump one counter with If-Match: no update is ever lost or doubled."""
    import time

    root = tmp_path / "store"
    storage = FileStorage(root)
    storage.put("counter", b"0")
    script = tmp_path / "racer.py"
    script.write_text(_RACER)
    rounds = 40
    start = time.time() + 1.0
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(root), f"p{i}", str(rounds), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert sum(int(o) for o in outs) == 4 * rounds
    assert storage.get("counter")[0] == str(4 * rounds).encode()
    log = list(storage.list_keys("log/"))
    assert log == [f"log/{n:05d}" for n in range(1, 4 * rounds + 1)]  # each value won exactly once
    writers = {storage.get(k)[0] for k in log}
    assert len(writers) > 1  # the processes really raced


def test_listing_does_not_follow_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    storage = FileStorage(tmp_path / "store")
    os.symlink(outside, tmp_path / "store" / "link")
    assert list(storage.list_keys("link/")) == []
    assert list(storage.list_keys("")) == []


def test_doctor_sees_conditional_writes_enforced(tmp_path: Path) -> None:
    checks = FileStorage(tmp_path / "store").diagnose()
    assert [(c.name, c.status) for c in checks] == [
        ("storage", "ok"),
        ("conditional writes", "ok"),
    ]
    assert list(FileStorage(tmp_path / "store").list_keys("")) == []  # the probe is gone
