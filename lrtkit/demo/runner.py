"""``lrtkit demo``: submit, two workers, one SIGKILLed mid-job, the other resumes it.

Everything runs on the embedded default (the local SQLite broker and file storage) in one
folder, with the settings of the caller's environment left out, so it needs no configuration
and touches nothing else. The workers are real ``python -m lrtkit run`` processes; the kill is
a real ``SIGKILL``. The demo watches them through the events the demo handler appends to a
file (:mod:`lrtkit.demo.handler`) and, at the end, checks every result against n(n+1)/2 from
the job records.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from lrtkit.demo.handler import EVENTS_VARIABLE
from lrtkit.jobs import JobState

HANDLER = "lrtkit.demo.handler:sum_job"
QUEUE = "lrtkit-demo"
LEASE_SECONDS = 3
WORKERS = 2
# Variables that would point the demo somewhere else: lrtkit's own and the guides' aliases.
_FOREIGN_PREFIXES = ("LRT_", "SQS_", "R2_", "AWS_")
_FOREIGN_NAMES = ("JOB_QUEUE", "AMQP_URL", "SALAD_API_KEY", "min_replicas", "max_replicas")


@dataclass
class JobView:
    """What the demo knows of one job, from the handler's events."""

    job_id: str
    steps: int
    worker: str = ""
    attempt: int = 0
    step: int = 0
    state: str = "queued"
    resumed_from: int = 0
    steps_by_attempt: dict[int, int] = field(default_factory=dict)

    @property
    def expected(self) -> int:
        return self.steps * (self.steps + 1) // 2


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False


@dataclass
class Outcome:
    job_id: str
    steps: int
    result: Any
    attempts: int
    resumed_from: int
    redone: int

    @property
    def expected(self) -> int:
        return self.steps * (self.steps + 1) // 2

    @property
    def ok(self) -> bool:
        return isinstance(self.result, dict) and self.result.get("sum") == self.expected


class Demo:
    """One run of the demo; :meth:`run` returns the exit code."""

    def __init__(
        self,
        folder: Path,
        *,
        jobs: int = 6,
        step_seconds: float = 0.25,
        timeout: float = 90.0,
        console: Console | None = None,
    ) -> None:
        self.folder = folder
        self.step_seconds = step_seconds
        self.timeout = timeout
        self.console = console or Console()
        self.views = {
            f"demo-{i + 1}": JobView(f"demo-{i + 1}", steps=10 + 2 * i) for i in range(jobs)
        }
        self.events_path = folder / "events.jsonl"
        self.env = _demo_env(folder, self.events_path)
        self.workers: list[Worker] = []
        self.messages: list[str] = []
        self.highlights: list[str] = []  # the kill and the resume stay on screen
        self.kill: tuple[str, str, int] | None = None  # worker, job, step at the kill
        self._offset = 0
        self._live: Live | None = None

    # -- the story -----------------------------------------------------------------------------

    def run(self) -> int:
        from lrtkit.config import load_settings
        from lrtkit.plugins import load_broker, load_storage
        from lrtkit.records import JobStore

        settings = load_settings(environ=self.env)
        broker = load_broker(settings)
        store = JobStore(load_storage(settings))
        try:
            broker.ensure()
            self._submit(broker, store)
            self._start_workers()
            with self._display():
                finished = self._watch(store)
            outcomes = self._outcomes(store)
        finally:
            self._stop_workers()
            broker.close()
        return self._report(outcomes, finished)

    def _submit(self, broker: Any, store: Any) -> None:
        from lrtkit.demo.handler import SumJob
        from lrtkit.submit import Row, submit, validate_rows

        rows = [
            Row(i + 1, {"job_id": v.job_id, "steps": v.steps, "step_seconds": self.step_seconds})
            for i, v in enumerate(self.views.values())
        ]
        checked = validate_rows(rows, SumJob)
        summary = submit(broker, store, checked.jobs)
        if not summary.ok:
            raise RuntimeError(f"the demo jobs could not be submitted: {summary.error}")
        sizes = ", ".join(str(v.steps) for v in self.views.values())
        self.console.print(
            f"[bold]lrtkit demo[/] in {self.folder}\n"
            f"submitted {len(summary.submitted)} jobs: the sum of 1..n for n = {sizes}, "
            f"one checkpointed step every {self.step_seconds:g} s "
            f"(local broker, lease {LEASE_SECONDS} s)",
            highlight=False,
        )

    def _start_workers(self) -> None:
        for number in range(1, WORKERS + 1):
            name = f"worker {number}"
            log_path = self.folder / f"worker-{number}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "lrtkit",
                        "run",
                        HANDLER,
                        "--exit-when-idle",
                        str(LEASE_SECONDS * 5),
                    ],
                    env=self.env,
                    cwd=self.folder,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.workers.append(Worker(name, process, log_path))
            self._say(f"started {name} (pid {process.pid}): lrtkit run {HANDLER}")

    def _watch(self, store: Any) -> bool:
        """Follow the events until every job succeeded; kill one worker mid-job on the way."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self._read_events()
            if self.kill is None:
                self._maybe_kill()
            if all(v.state == "done" for v in self.views.values()) and self._all_succeeded(store):
                self._refresh()
                return True
            if all(w.process.poll() is not None for w in self.workers):
                self._say("[red]every worker has exited before the jobs were done[/]")
                return False
            self._refresh()
            time.sleep(0.1)
        self._say(f"[red]the jobs did not finish within {self.timeout:g} s[/]")
        return False

    def _maybe_kill(self) -> None:
        for view in self.views.values():
            if view.state != "running" or view.step < max(3, view.steps // 2):
                continue
            worker = next((w for w in self.workers if w.name == view.worker), None)
            if worker is None or worker.process.poll() is not None:
                continue
            os.kill(worker.process.pid, signal.SIGKILL)
            worker.process.wait()
            worker.killed = True
            self.kill = (worker.name, view.job_id, view.step)
            view.state = "orphaned"
            self._say(
                highlight=True,
                message=f"[bold red]SIGKILL[/] {worker.name} (pid {worker.process.pid}) at step "
                f"{view.step}/{view.steps} of {view.job_id}: its lease runs out within "
                f"{LEASE_SECONDS} s and the job goes back to the queue",
            )
            return

    def _all_succeeded(self, store: Any) -> bool:
        records = {r.job_id: r for r in store.list_records()}
        return all(
            (r := records.get(job_id)) is not None and r.state == JobState.SUCCEEDED
            for job_id in self.views
        )

    # -- events --------------------------------------------------------------------------------

    def _read_events(self) -> None:
        try:
            with self.events_path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue  # not one of ours

    def _apply(self, event: dict[str, Any]) -> None:
        view = self.views.get(event["job"])
        if view is None:
            return
        worker = self._worker_of(int(event["pid"]))
        attempt = int(event["attempt"])
        kind = event["event"]
        if kind == "start":
            view.worker, view.attempt, view.state = worker, attempt, "running"
            view.step = int(event["resumed_from"])
            if view.step:
                view.resumed_from = view.step
                self._say(
                    highlight=True,
                    message=f"[green]{worker} resumed {view.job_id} from its checkpoint at step "
                    f"{view.step}/{view.steps}[/] (attempt {attempt})",
                )
            else:
                self._say(f"{worker} started {view.job_id} (n = {view.steps})")
        elif kind == "step":
            view.step = max(view.step, int(event["step"]))
            view.steps_by_attempt[attempt] = view.steps_by_attempt.get(attempt, 0) + 1
        elif kind == "done":
            view.state = "done"
            self._say(f"{worker} finished {view.job_id}: sum = {event['sum']}")

    def _worker_of(self, pid: int) -> str:
        for worker in self.workers:
            if worker.process.pid == pid:
                return worker.name
        try:  # a handler run in a child of the worker
            parent = int(Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[1])
        except (OSError, ValueError, IndexError):
            return f"pid {pid}"
        return next((w.name for w in self.workers if w.process.pid == parent), f"pid {pid}")

    # -- display -------------------------------------------------------------------------------

    @contextmanager
    def _display(self) -> Iterator[None]:
        if not self.console.is_terminal:
            yield
            return
        with Live(self._render(), console=self.console, refresh_per_second=8) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Group:
        view = Table(box=None, pad_edge=False)
        for name in ("job", "worker", "attempt", "progress", "", "state"):
            view.add_column(name)
        for job in self.views.values():
            width = 20
            filled = round(width * job.step / job.steps)
            bar = Text("█" * filled, style="green") + Text("░" * (width - filled), style="dim")
            view.add_row(
                job.job_id,
                job.worker or "-",
                str(job.attempt or "-"),
                bar,
                f"{job.step}/{job.steps}",
                job.state,
            )
        recent = [m for m in self.messages[-5:] if m not in self.highlights]
        lines = [Text.from_markup(m) for m in [*self.highlights, *recent]]
        return Group(view, Text(""), *lines)

    def _say(self, message: str, *, highlight: bool = False) -> None:
        self.messages.append(message)
        if highlight:
            self.highlights.append(message)
        if self._live is None:
            self.console.print(message, highlight=False, soft_wrap=True)

    # -- the end -------------------------------------------------------------------------------

    def _outcomes(self, store: Any) -> list[Outcome]:
        outcomes = []
        for view in self.views.values():
            record = store.get(view.job_id)
            result = record.result if record is not None else None
            if result is None:
                result = store.get_result(view.job_id)
            # Steps computed more than once: those of earlier attempts beyond the resume point.
            earlier = sum(n for a, n in view.steps_by_attempt.items() if a < view.attempt)
            redone = max(0, earlier - view.resumed_from)
            outcomes.append(
                Outcome(
                    job_id=view.job_id,
                    steps=view.steps,
                    result=result,
                    attempts=record.attempts if record is not None else view.attempt,
                    resumed_from=view.resumed_from,
                    redone=redone,
                )
            )
        return outcomes

    def _report(self, outcomes: list[Outcome], finished: bool) -> int:
        view = Table(title="results", title_justify="left")
        for name in ("job", "n", "result", "n(n+1)/2", "ok", "attempts", "resumed", "redone"):
            view.add_column(name, justify="left" if name in ("job", "ok") else "right")
        for o in outcomes:
            got = o.result.get("sum") if isinstance(o.result, dict) else o.result
            view.add_row(
                o.job_id,
                str(o.steps),
                "-" if got is None else str(got),
                str(o.expected),
                "[green]yes[/]" if o.ok else "[red]NO[/]",
                str(o.attempts),
                str(o.resumed_from) if o.resumed_from else "-",
                str(o.redone) if o.resumed_from else "-",
            )
        self.console.print(view)
        right = sum(o.ok for o in outcomes)
        resumed = sum(o.resumed_from for o in outcomes)
        redone = sum(o.redone for o in outcomes)
        self.console.print(
            f"{right} of {len(outcomes)} results are right; {resumed} step(s) were resumed "
            f"from checkpoints rather than redone, {redone} step(s) were computed twice.",
            highlight=False,
        )
        problems = []
        if not finished or right != len(outcomes):
            problems.append("not every job finished with the right result")
        if self.kill is None:
            problems.append("no worker was killed (the jobs ended before the kill point)")
        elif not any(o.job_id == self.kill[1] and o.resumed_from for o in outcomes):
            problems.append(f"{self.kill[1]} was not resumed from its checkpoint")
        if problems:
            for problem in problems:
                self.console.print(f"[red]demo failed:[/] {problem}", highlight=False)
            self._show_logs()
            return 1
        assert self.kill is not None
        self.console.print(
            f"[green]{self.kill[0]} was killed with SIGKILL at step {self.kill[2]} of "
            f"{self.kill[1]}; the other worker resumed it from its checkpoint.[/]",
            highlight=False,
        )
        return 0

    def _show_logs(self) -> None:
        for worker in self.workers:
            try:
                lines = worker.log_path.read_text(errors="replace").splitlines()[-15:]
            except OSError:
                continue
            self.console.print(f"[dim]--- last lines of {worker.log_path}[/]", highlight=False)
            for line in lines:
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()


def _demo_env(folder: Path, events: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_FOREIGN_PREFIXES) and k not in _FOREIGN_NAMES
    }
    env.update(
        {
            "LRT_BROKER": "local",
            "LRT_QUEUE": QUEUE,
            "LRT_LOCAL_DB": str(folder / "queue.sqlite3"),
            "LRT_STORAGE": f"file://{folder / 'store'}",
            "LRT_LEASE_SECONDS": str(LEASE_SECONDS),
            "LRT_GRACE_SECONDS": "2",
            "LRT_RETRY_BACKOFF_SECONDS": "0.5",
            "LRT_LOG_LEVEL": "INFO",
            EVENTS_VARIABLE: str(events),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_demo(
    folder: Path | None = None,
    *,
    jobs: int = 6,
    step_seconds: float = 0.25,
    console: Console | None = None,
) -> int:
    """Run the demo in ``folder`` (kept), or in a temporary folder (removed after)."""
    if folder is not None:
        folder = folder.resolve()
        if folder.exists() and any(folder.iterdir()):
            from lrtkit.errors import ConfigError

            raise ConfigError(f"--dir {folder} is not empty: give a new or empty folder")
        folder.mkdir(parents=True, exist_ok=True)
        return Demo(folder, jobs=jobs, step_seconds=step_seconds, console=console).run()
    temp = Path(tempfile.mkdtemp(prefix="lrtkit-demo-"))
    try:
        return Demo(temp, jobs=jobs, step_seconds=step_seconds, console=console).run()
    finally:
        shutil.rmtree(temp, ignore_errors=True)
