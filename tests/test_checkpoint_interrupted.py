"""A holder SIGKILLed in the middle of a checkpoint never leaves a half-written one behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from lrtkit.checkpoint import Checkpoint
from lrtkit.storage import layout
from lrtkit.testing.storage_contract import read_tree
from lrtkit.testing.target import StorageTarget, unique_name

FILES = 24
FILE_SIZE = 256 * 1024

_DOOMED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from lrtkit.checkpoint import Checkpoint
    from lrtkit.config import load_settings
    from lrtkit.plugins import load_storage
    from lrtkit.testing.storage_contract import CountingStorage

    job_id, folder, marker = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    stall_after, files, size = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])

    class StallingStorage(CountingStorage):
        # Signals the parent half-way through the uploads and waits there to be killed.
        stall = False
        def upload_file(self, key, path):
            etag = super().upload_file(key, path)
            if self.stall and self.calls["upload_file"] == stall_after:
                Path(marker).write_text("half-way")
                time.sleep(60)
            return etag

    def fill(version):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            head = f"version {version} file {i}\\n".encode()
            body = head + bytes([version]) * (size - len(head))
            (folder / f"shard-{i:02d}.bin").write_bytes(body)

    storage = StallingStorage(load_storage(load_settings()))
    cp = Checkpoint(storage, job_id, "doomed-worker")
    cp.claim()
    fill(1)
    cp.save_dir(folder)
    cp.save({"version": 1})
    fill(2)
    storage.reset()
    storage.stall = True
    cp.save_dir(folder)
    print("finished without being killed", flush=True)
    """
)

_LOOPER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lrtkit.checkpoint import Checkpoint
    from lrtkit.config import load_settings
    from lrtkit.plugins import load_storage

    job_id, folder, files, size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cp = Checkpoint(load_storage(load_settings()), job_id, "looping-worker")
    cp.claim()
    version = 0
    while True:
        version += 1
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            head = f"version {version} file {i}\\n".encode()
            body = head + bytes([version % 256]) * (size - len(head))
            (folder / f"shard-{i:02d}.bin").write_bytes(body)
        cp.save_dir(folder)
        cp.save({"version": version})
        print(version, flush=True)
    """
)


def _version_of(files: dict[str, bytes]) -> set[int]:
    return {int(data.split(b" ", 2)[1]) for data in files.values()}


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the worker exited early ({proc.returncode})"
        assert time.monotonic() < deadline, "the worker never got half-way"
        time.sleep(0.02)


def test_an_interrupted_checkpoint_leaves_the_previous_checkpoint_loadable(
    lrt_storage_target: StorageTarget, tmp_path: Path
) -> None:
    """SIGKILL half-way through a big save_dir: the next holder gets generation 1, whole."""
    job_id = unique_name("job")
    folder = tmp_path / "ck"
    marker = tmp_path / "half-way"
    script = tmp_path / "doomed.py"
    script.write_text(_DOOMED)
    args = [job_id, str(folder), str(marker), str(FILES // 2), str(FILES), str(FILE_SIZE)]
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=lrt_storage_target.subprocess_env(),
    )
    try:
        _wait_for(marker, proc)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    storage = lrt_storage_target.storage()
    doomed_blobs = f"{layout.blobs_prefix(job_id)}{layout.owner_tag('doomed-worker')}/"
    assert len(list(storage.list_keys(doomed_blobs))) == FILES + FILES // 2  # v1 + half of v2

    nxt = Checkpoint(storage, job_id, "next-worker")
    nxt.claim()
    assert nxt.load() == {"version": 1}
    restored = tmp_path / "restored"
    assert nxt.restore_dir(restored)
    files, _ = read_tree(restored)
    assert len(files) == FILES
    assert _version_of(files) == {1}
    # The claim swept what the killed save had uploaded; generation 1's blobs stay.
    assert len(list(storage.list_keys(doomed_blobs))) == FILES
    # The next holder checkpoints the new version from where the old one stopped.
    (folder / "shard-00.bin").write_bytes(b"version 3 file 0\n")
    nxt.save_dir(folder)
    again = tmp_path / "again"
    assert Checkpoint(storage, job_id, "reader").restore_dir(again)
    assert _version_of(read_tree(again)[0]) == {2, 3}


def test_a_kill_at_any_moment_leaves_one_whole_generation(
    lrt_storage_target: StorageTarget, tmp_path: Path
) -> None:
    """A worker checkpointing in a loop is SIGKILLed at arbitrary moments, several times."""
    job_id = unique_name("job")
    script = tmp_path / "looper.py"
    script.write_text(_LOOPER)
    delays = [0.35, 0.6, 0.9]
    for round_no, delay in enumerate(delays):
        folder = tmp_path / f"work-{round_no}"
        proc = subprocess.Popen(
            [sys.executable, str(script), job_id, str(folder), "12", str(64 * 1024)],
            stdout=subprocess.PIPE,
            text=True,
            env=lrt_storage_target.subprocess_env(),
        )
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # at least one complete generation exists
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader = Checkpoint(lrt_storage_target.storage(), job_id, f"reader-{round_no}")
        restored = tmp_path / f"restored-{round_no}"
        assert reader.restore_dir(restored)
        files, _ = read_tree(restored)
        assert len(files) == 12
        versions = _version_of(files)
        assert len(versions) == 1, f"a mix of generations was restored: {versions}"
        [version] = versions
        state = reader.load()
        assert state is not None
        # save_dir comes first, then save: the state is the folder's version or one behind.
        assert state["version"] in (version, version - 1)
