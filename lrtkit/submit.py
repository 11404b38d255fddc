"""Submitting jobs: read rows from CSV or JSON Lines, validate every one, then publish.

The order matters and is the whole point of this module:

1. **Read** every row, remembering its line number (:func:`read_jobs`). A row that cannot even
   be parsed (bad JSON, wrong number of CSV fields) is kept as a bad row, not raised.
2. **Validate** every row (:func:`validate_rows`): a valid ``job_id`` (a UUID is made when the
   row has none), no id repeated inside the file, and the payload accepted by the handler's
   payload model when one is given. Nothing is submitted while any row is bad, unless the
   caller chooses to skip bad rows.
3. **Submit** (:func:`submit`): ids that already have a record are skipped unless forced; then,
   batch by batch, the records are written ``queued`` *before* the messages are published (a
   worker that receives a message at once always finds its record), and a batch the broker
   refused has its records put back as they were, so no record claims a job is queued when
   it is not. Submitting stops at the first refused batch; running the same file again picks
   up where it stopped, because the ids that went through are known by then.

CSV cells are text. With a payload model, the text goes to the model and pydantic converts it
(``"600"`` becomes ``600`` for an ``int`` field). Without a model a cell that is written exactly
as JSON writes a number (``600``, ``-3``, ``0.5``, ``1e-4``; not ``007`` or ``+1``) becomes that
number, ``true``/``false`` become booleans, and everything else stays text (``infer_types=False``
keeps every cell as text). An empty cell means the field is not given.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel

from lrtkit.broker import Message
from lrtkit.errors import InvalidJob, LrtError, PublishError
from lrtkit.jobs import (
    JobRecord,
    JobState,
    encode_body,
    new_job_id,
    validate_job_id,
    validate_payload,
)

if TYPE_CHECKING:
    from lrtkit.broker import Broker
    from lrtkit.records import JobStore

FORMATS = ("csv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_JSON_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_JSON_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
DEFAULT_BATCH = 100
_IO_THREADS = 8


@dataclass(frozen=True)
class Row:
    """One data row of the input, with the line it starts on.

    ``fields`` holds the row's values (``job_id`` included when given). ``error`` is set when
    the row could not be parsed at all; its fields are then meaningless.
    """

    line: int
    fields: dict[str, Any]
    error: str | None = None
    from_csv: bool = False


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str
    job_id: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class Job:
    """A validated row, ready to publish."""

    line: int
    job_id: str
    body: bytes
    generated_id: bool = False  # a fresh UUID: no record can exist, no need to look


@dataclass
class Validated:
    jobs: list[Job] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


@dataclass
class SubmitSummary:
    """What :func:`submit` did, id by id."""

    submitted: list[str] = field(default_factory=list)
    skipped_known: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_attempted: list[str] = field(default_factory=list)
    error: LrtError | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_attempted and self.error is None


# -- reading -----------------------------------------------------------------------------------


def detect_format(name: str | None, fmt: str | None, text: str) -> str:
    """The input format: ``fmt`` if given, else from the file extension, else sniffed.

    Sniffing looks at the first non-blank character: ``{`` means JSON Lines, anything else
    CSV (a CSV header starts with a column name).
    """
    if fmt is not None:
        if fmt not in FORMATS:
            raise InvalidJob(f"unknown format {fmt!r}: use csv or jsonl")
        return fmt
    if name is not None:
        suffix = Path(name).suffix.lower()
        if suffix in _EXTENSIONS:
            return _EXTENSIONS[suffix]
    stripped = text.lstrip()
    if not stripped:
        raise InvalidJob(f"{name or 'the input'} is empty: no jobs to submit")
    return "jsonl" if stripped.startswith("{") else "csv"


def read_jobs(source: str | Path | IO[bytes], fmt: str | None = None) -> list[Row]:
    """Read every row of a CSV (header row) or JSON Lines file, or of a binary stream.

    ``source`` is a path, ``"-"`` for standard input, or an open binary stream. Raises
    :class:`InvalidJob` when the input as a whole is unusable (not UTF-8, empty, a bad CSV
    header); a bad row becomes a :class:`Row` with ``error`` set.
    """
    if isinstance(source, str | Path) and str(source) != "-":
        path = Path(source)
        name: str | None = str(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise InvalidJob(f"{path}: no such file") from None
        except OSError as exc:
            raise InvalidJob(f"{path}: cannot be read: {exc.strerror or exc}") from None
    else:
        import sys

        stream = sys.stdin.buffer if isinstance(source, str | Path) else source
        name = None
        raw = stream.read()
    where = name or "standard input"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidJob(f"{where} is not UTF-8 text (line {line}, byte {exc.start})") from None
    kind = detect_format(name, fmt, text)
    return _read_csv(text, where) if kind == "csv" else _read_jsonl(text)


def _read_jsonl(text: str) -> list[Row]:
    rows = []
    # Split on newlines only: str.splitlines() would also cut at U+2028 and friends, which
    # JSON allows raw inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append(Row(number, {}, f"not valid JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(data, dict):
            rows.append(Row(number, {}, f"must be a JSON object, got {type(data).__name__}"))
            continue
        rows.append(Row(number, data))
    return rows


def _read_csv(text: str, where: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidJob(f"{where} is empty: no header row") from None
    except csv.Error as exc:
        raise InvalidJob(f"{where} line 1: bad CSV header: {exc}") from None
    names = [h.strip() for h in header]
    if not any(names):
        raise InvalidJob(f"{where} line 1: the header row is empty")
    if "" in names:
        raise InvalidJob(f"{where} line 1: column {names.index('') + 1} of the header has no name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidJob(f"{where} line 1: the header repeats column(s) {', '.join(repeated)}")
    rows = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows.append(Row(start, {}, f"bad CSV: {exc}", from_csv=True))
            continue
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # a blank line
        if len(cells) != len(names):
            rows.append(
                Row(
                    start,
                    {},
                    f"has {len(cells)} field(s) but the header has {len(names)}",
                    from_csv=True,
                )
            )
            continue
        values = {n: c for n, c in zip(names, cells, strict=True) if c != ""}
        rows.append(Row(start, values, from_csv=True))
    return rows


# -- validating --------------------------------------------------------------------------------


def infer_cell(text: str) -> Any:
    """A CSV cell as JSON would read it when it is a plain number or a boolean, else the text."""
    if _JSON_INT.fullmatch(text):
        return int(text)
    if _JSON_FLOAT.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else text  # 1e999 is not a JSON number
    if text in ("true", "false"):
        return text == "true"
    return text


def validate_rows(
    rows: Iterable[Row],
    model: type[BaseModel] | None = None,
    *,
    infer_types: bool = True,
) -> Validated:
    """Check every row; return the good ones as :class:`Job` and the bad ones with reasons.

    With a payload model the body carries the row's fields with the model's fields replaced
    by their validated, converted values (fields the model does not know are kept as given;
    defaults are not added, so a worker with a newer model still sees what was sent).
    """
    out = Validated()
    seen: dict[str, int] = {}
    for row in rows:
        if row.error is not None:
            out.bad.append(BadRow(row.line, row.error))
            continue
        fields = dict(row.fields)
        given = fields.pop("job_id", None)
        try:
            job_id = new_job_id() if given is None else validate_job_id(given)
        except InvalidJob as exc:
            out.bad.append(BadRow(row.line, str(exc)))
            continue
        if job_id in seen:
            out.bad.append(
                BadRow(row.line, f"job_id {job_id!r} repeats line {seen[job_id]}", job_id)
            )
            continue
        seen[job_id] = row.line
        try:
            payload = _payload(fields, model, infer=row.from_csv and infer_types)
            body = encode_body(job_id, payload)
        except InvalidJob as exc:
            out.bad.append(BadRow(row.line, str(exc), job_id))
            continue
        except (TypeError, ValueError) as exc:  # not JSON-serialisable after the model
            out.bad.append(BadRow(row.line, f"payload cannot be written as JSON: {exc}", job_id))
            continue
        out.jobs.append(Job(row.line, job_id, body, generated_id=given is None))
    return out


def _payload(fields: dict[str, Any], model: type[BaseModel] | None, *, infer: bool) -> Any:
    if model is None:
        return {k: infer_cell(v) for k, v in fields.items()} if infer else fields
    validated = validate_payload(fields, model)
    converted = validated.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return {**fields, **converted}


# -- submitting --------------------------------------------------------------------------------


def submit(
    broker: Broker,
    store: JobStore,
    jobs: Sequence[Job],
    *,
    force: bool = False,
    batch_size: int = DEFAULT_BATCH,
    progress: Callable[[str, int], None] | None = None,
) -> SubmitSummary:
    """Publish ``jobs`` (already validated) and write their records; see the module docs.

    ``progress(phase, n)`` feeds a progress bar: ``("checked", n)`` as ids are looked up
    (jobs with a generated id need no lookup), ``("submitted", n)`` as jobs are handled
    (skipped ones included). Never raises for a broker refusal: the summary says which ids
    failed and which were not attempted, and ``summary.error`` holds the error.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    summary = SubmitSummary()
    previous = _existing_records(store, [j.job_id for j in jobs if not j.generated_id], progress)
    todo: list[Job] = []
    for job in jobs:
        if job.job_id in previous and not force:
            summary.skipped_known.append(job.job_id)
        else:
            todo.append(job)
    if progress is not None and summary.skipped_known:
        progress("submitted", len(summary.skipped_known))
    with ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="lrtkit-submit") as pool:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            error = _submit_batch(broker, store, pool, batch, previous=previous, summary=summary)
            if error is not None:
                summary.error = error
                summary.not_attempted = [j.job_id for j in todo[start + batch_size :]]
                break
            if progress is not None:
                progress("submitted", len(batch))
    return summary


def lookups_needed(jobs: Sequence[Job]) -> int:
    """How many ids :func:`submit` looks up (for a progress bar's total)."""
    return sum(not j.generated_id for j in jobs)


def _existing_records(
    store: JobStore, ids: list[str], progress: Callable[[str, int], None] | None
) -> dict[str, JobRecord]:
    found: dict[str, JobRecord] = {}
    with ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="lrtkit-lookup") as pool:
        for job_id, record in zip(ids, pool.map(store.get, ids), strict=True):
            if record is not None:
                found[job_id] = record
            if progress is not None:
                progress("checked", 1)
    return found


def _submit_batch(
    broker: Broker,
    store: JobStore,
    pool: ThreadPoolExecutor,
    batch: list[Job],
    *,
    previous: dict[str, JobRecord],
    summary: SubmitSummary,
) -> LrtError | None:
    """Write the batch's records, publish it; on refusal put the records back. Return the error."""

    def queue_record(job: Job) -> None:
        if job.job_id in previous:
            # A forced resubmission runs again: an old cancel request must not stop it.
            store.clear_cancel(job.job_id)
        store.put(JobRecord(job_id=job.job_id, state=JobState.QUEUED))

    try:
        list(pool.map(queue_record, batch))
    except LrtError as exc:
        _restore(store, pool, [j.job_id for j in batch], previous)
        for job in batch:
            summary.failed[job.job_id] = f"its record could not be written: {exc}"
        return exc
    try:
        broker.publish([Message(j.job_id, j.body) for j in batch])
    except PublishError as exc:
        failed = {k: v for k, v in exc.failed.items() if k in {j.job_id for j in batch}}
        _restore(store, pool, list(failed), previous)
        summary.failed.update(failed)
        summary.submitted.extend(j.job_id for j in batch if j.job_id not in failed)
        return exc
    except Exception as exc:
        # Nothing of the batch is confirmed (PayloadTooLarge is raised before sending, a lost
        # connection leaves it unknown): treat it all as not published and say so.
        _restore(store, pool, [j.job_id for j in batch], previous)
        for job in batch:
            summary.failed[job.job_id] = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, LrtError):
            return exc
        raise
    summary.submitted.extend(j.job_id for j in batch)
    return None


def _restore(
    store: JobStore, pool: ThreadPoolExecutor, ids: list[str], previous: dict[str, JobRecord]
) -> None:
    """Put the records of unpublished jobs back as they were (removed if they were new)."""

    def one(job_id: str) -> None:
        try:
            if job_id in previous:
                store.put(previous[job_id])
            else:
                store.delete(job_id)
        except LrtError:
            # Last resort: say plainly that it is not in the queue.
            store.update(job_id, state=JobState.FAILED, error="not published: submit it again")

    list(pool.map(one, ids))
