"""Command mode: run any program for each job, like a container's CMD.

The child gets, in its environment:

``LRT_JOB_ID``         the job id
``LRT_JOB_FILE``       a JSON file with the job (``job_id`` plus the payload fields)
``LRT_CHECKPOINT_DIR`` a folder restored from the last checkpoint before start, uploaded
                       (changed files only) every ``checkpoint_interval`` seconds and at exit
``LRT_OUTPUT_DIR``     a folder uploaded as the job's artifacts after success
``LRT_RESULT_FILE``    if the child writes JSON there, that is the job's result
``LRT_ATTEMPT``        the delivery number (1 on the first delivery)

Exit codes: 0 success; 75 (``EX_TEMPFAIL``) interrupted, run again later (not a failure);
65 (``EX_DATAERR``) bad job, dead-letter at once; anything else is a failure. When the job must
stop (shutdown, cancel, lease lost) the child gets SIGTERM, then SIGKILL after the grace period.
The child dies with the worker (Linux parent-death signal), so a killed worker leaves no orphan.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lrtkit.errors import ConfigError, LeaseLost, LrtError, Stop
from lrtkit.worker.context import SHUTDOWN
from lrtkit.worker.outcome import BadJob, CommandFailed, RetryLater, clip

if TYPE_CHECKING:
    from lrtkit.worker.attempt import Attempt
    from lrtkit.worker.context import JobContext

EX_OK = 0
EX_DATAERR = 65
EX_TEMPFAIL = 75
TAIL_LINES = 20
POLL = 0.1


def _parent_death_hook() -> Any:
    """A preexec function that makes the child get SIGKILL when the worker dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)

    return hook


_PDEATHSIG = _parent_death_hook()


class _StderrTail:
    """Copies the child's stderr to ours and keeps its last lines for error reasons."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._stream = stream
        self._thread = threading.Thread(target=self._pump, name="command-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
        for raw in iter(self._stream.readline, b""):
            if out is not None:
                with contextlib.suppress(OSError, ValueError):
                    out.write(raw)
                    out.flush()
            text = raw.decode("utf-8", "replace").rstrip()
            if text:
                self.lines.append(text)

    def join(self) -> None:
        self._thread.join(timeout=5)

    def last(self, n: int = 3) -> str:
        return " | ".join(list(self.lines)[-n:])


class CommandTask:
    """Runs ``command`` (split like a shell would, without a shell) for each job."""

    def __init__(self, command: str, *, checkpoint_interval: float, grace_seconds: float) -> None:
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(
                f"--command {command!r} cannot be split into arguments: {exc}"
            ) from None
        if not self.argv:
            raise ConfigError("--command is empty")
        if shutil.which(self.argv[0]) is None:
            raise ConfigError(
                f"--command {command!r}: {self.argv[0]!r} is not an executable program "
                "(not found on PATH, or not executable)"
            )
        self.name = command
        self.checkpoint_interval = checkpoint_interval
        self.grace_seconds = grace_seconds

    def validate(self, job_id: str, payload: dict[str, Any]) -> Any:
        return payload

    def run(self, attempt: Attempt, ctx: JobContext, job: Any) -> Any:
        base = ctx.output_dir.parent
        ckdir = base / "checkpoint"
        ckdir.mkdir(parents=True, exist_ok=True)
        job_file = base / "job.json"
        result_file = base / "result.json"
        job_file.write_text(json.dumps({"job_id": ctx.job_id, **job}))
        if ctx.checkpoint.restore_dir(ckdir):
            ctx.log.event(
                logging.INFO, "command.checkpoint_restored", generation=ctx.checkpoint.generation
            )
        env = {
            **os.environ,
            "LRT_JOB_ID": ctx.job_id,
            "LRT_JOB_FILE": str(job_file),
            "LRT_CHECKPOINT_DIR": str(ckdir),
            "LRT_OUTPUT_DIR": str(ctx.output_dir),
            "LRT_RESULT_FILE": str(result_file),
            "LRT_ATTEMPT": str(ctx.attempt),
        }
        ctx.check()
        try:
            proc = subprocess.Popen(
                self.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_PDEATHSIG,  # noqa: PLW1509 - only calls prctl, no locks
            )
        except OSError as exc:
            raise CommandFailed(f"cannot start {self.argv[0]!r}: {exc}") from None
        attempt.child = proc
        assert proc.stderr is not None
        tail = _StderrTail(proc.stderr)
        ctx.log.event(logging.INFO, "command.started", pid=proc.pid)
        try:
            code = self._wait(attempt, ctx, proc, ckdir)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            tail.join()
            attempt.child = None
        self._save(attempt, ctx, ckdir)
        return self._outcome(ctx, code, result_file, tail)

    def _wait(
        self, attempt: Attempt, ctx: JobContext, proc: subprocess.Popen[bytes], ckdir: Path
    ) -> int:
        next_save = time.monotonic() + self.checkpoint_interval
        terminated_at: float | None = None
        while True:
            try:
                return proc.wait(timeout=POLL)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if ctx.stopping.is_set() and terminated_at is None:
                ctx.log.event(logging.INFO, "command.terminate", reason=ctx.stop_reason)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                terminated_at = now
            elif terminated_at is not None and now - terminated_at > self.grace_seconds:
                ctx.log.event(logging.WARNING, "command.kill", reason="grace period over")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            if now >= next_save and terminated_at is None:
                self._save(attempt, ctx, ckdir)
                next_save = time.monotonic() + self.checkpoint_interval

    @staticmethod
    def _save(attempt: Attempt, ctx: JobContext, ckdir: Path) -> None:
        if attempt.lost.is_set():
            return
        try:
            ctx.checkpoint.save_dir(ckdir)
        except LeaseLost as exc:
            attempt.lose(f"checkpoint fenced out: {exc}")
        except (LrtError, OSError) as exc:
            ctx.log.event(logging.WARNING, "command.checkpoint_failed", error=str(exc))

    def _outcome(self, ctx: JobContext, code: int, result_file: Path, tail: _StderrTail) -> Any:
        if code == EX_OK:
            return self._read_result(result_file)
        if ctx.stopping.is_set():
            raise Stop(ctx.stop_reason or SHUTDOWN)
        said = f": {tail.last()}" if tail.lines else ""
        if code == EX_TEMPFAIL:
            raise RetryLater(f"command exited with {EX_TEMPFAIL} (EX_TEMPFAIL){said}")
        if code == EX_DATAERR:
            raise BadJob(clip(f"bad job: command exited with {EX_DATAERR} (EX_DATAERR){said}"))
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise CommandFailed(clip(f"command {self.argv[0]!r} {how}{said}"))

    @staticmethod
    def _read_result(result_file: Path) -> Any:
        if not result_file.exists():
            return None
        text = result_file.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise CommandFailed(f"LRT_RESULT_FILE is not valid JSON: {exc}") from None
