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
from lrtkit.testing.storage_contract import (
    check_kill_half_way_through_save_dir,
    read_tree,
    version_of,
)
from lrtkit.testing.target import StorageTarget, unique_name

_LOOPER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lrtkit.checkpoint import Checkpoint
    from lrtkit.config import load_settings
    from lrtkit.plugins import load_storage
    from lrtkit.testing.storage_contract import versioned_files, write_tree

    job_id, folder, files, size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cp = Checkpoint(load_storage(load_settings()), job_id, "looping-worker")
    cp.claim()
    version = 0
    while True:
        version += 1
        write_tree(folder, versioned_files(version, files, size))
        cp.save_dir(folder)
        cp.save({"version": version})
        print(version, flush=True)
    """
)


def test_an_interrupted_checkpoint_leaves_the_previous_checkpoint_loadable(
    lrt_storage_target: StorageTarget, tmp_path: Path
) -> None:
    """SIGKILL half-way through a big save_dir: the next holder gets the previous one, whole."""
    check_kill_half_way_through_save_dir(lrt_storage_target, tmp_path, files=24, size=256 * 1024)


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
            stderr=subprocess.PIPE,
            text=True,
            env=lrt_storage_target.subprocess_env(),
        )
        try:
            assert proc.stdout is not None
            # at least one complete generation exists
            assert proc.stdout.readline(), proc.stderr.read() if proc.stderr else ""

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
        versions = version_of(files)
        assert len(versions) == 1, f"a mix of generations was restored: {versions}"
        [version] = versions
        state = reader.load()
        assert state is not None
        # save_dir comes first, then save: the state is the folder's version or one behind.
        assert state["version"] in (version, version - 1)
