"""Job records, cancel markers, results and artifacts, kept in the storage next to checkpoints.

A user needs nothing beyond a queue and a bucket: ``lrtkit status`` reads what this module wrote.

Records are plain objects, not fenced: :meth:`JobStore.update` reads, changes and writes the
record back, and when two writers update the same record at once the last one wins. That is
enough for what records are (a status display written by the one worker that holds the job, the
submitter before publishing, and ``lrtkit cancel``); what must never be lost to a race lives
elsewhere: progress in fenced checkpoints, cancellation in its own marker object.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lrtkit.errors import InvalidJobId, LrtError, NotFound, StorageError
from lrtkit.jobs import JobRecord, JobState, utcnow, validate_job_id
from lrtkit.storage import layout
from lrtkit.storage.base import Storage

_READ_THREADS = 16
_UPLOAD_THREADS = 4
log = logging.getLogger("lrtkit.records")


class JobStore:
    """Job records and their companions (cancel marker, result, artifacts) in a storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # -- records ---------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None when there is none."""
        key = layout.record_key(job_id)
        try:
            data, _ = self.storage.get(key)
        except NotFound:
            return None
        return _parse_record(key, data)

    def put(self, record: JobRecord) -> None:
        """Write the record whole; sets its ``updated_at`` to now."""
        key = layout.record_key(record.job_id)
        record.updated_at = utcnow()
        self.storage.put(key, record.model_dump_json().encode())

    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Change some fields of the record (made fresh if missing) and write it back.

        Read-modify-write without a condition: concurrent updates of one record, last one wins.
        Unknown field names or bad values raise :class:`~lrtkit.errors.LrtError` naming them.
        """
        validate_job_id(job_id)
        unknown = sorted(set(fields) - set(JobRecord.model_fields) - {"job_id"})
        if unknown:
            raise LrtError(f"job records have no field(s) {', '.join(unknown)}")
        if "job_id" in fields and fields["job_id"] != job_id:
            raise LrtError(f"cannot change the job_id of record {job_id!r}")
        current = self.get(job_id) or JobRecord(job_id=job_id)
        data = current.model_dump()
        data.update(fields)
        try:
            record = JobRecord.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise LrtError(f"bad update of job record {job_id!r}: {problems}") from None
        self.put(record)
        return record

    def exists(self, job_id: str) -> bool:
        return self.storage.exists(layout.record_key(job_id))

    def list_records(self, state: JobState | None = None) -> list[JobRecord]:
        """Every job record (optionally only those in ``state``), sorted by job id."""
        # One level of listing: job folders, not every checkpoint blob beneath them. A folder
        # without a record (or with a name that is no job id) is skipped by the reads below.
        ids = [name for name in self.storage.list_children(layout.JOBS_PREFIX) if _is_job_id(name)]
        if not ids:
            return []
        with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(ids))) as pool:
            found = list(pool.map(self._get_for_listing, ids))
        records = [r for r in found if r is not None and (state is None or r.state == state)]
        records.sort(key=lambda r: r.job_id)
        return records

    def _get_for_listing(self, job_id: str) -> JobRecord | None:
        # One unreadable record must not hide all the others from `lrtkit jobs`.
        try:
            return self.get(job_id)
        except StorageError as exc:
            log.warning("skipping job %s in the listing: %s", job_id, exc)
            return None

    # -- cancellation ---------------------------------------------------------------------------

    def request_cancel(self, job_id: str) -> None:
        """Write the cancel marker; the worker holding the job sees it on its next heartbeat."""
        body = json.dumps({"requested_at": utcnow().isoformat()}).encode()
        self.storage.put(layout.cancel_key(job_id), body)

    def cancel_requested(self, job_id: str) -> bool:
        return self.storage.exists(layout.cancel_key(job_id))

    def clear_cancel(self, job_id: str) -> None:
        """Remove the cancel marker (a job submitted again with ``--force`` runs afresh)."""
        self.storage.delete(layout.cancel_key(job_id))

    def delete(self, job_id: str) -> None:
        """Remove the job's record (used to undo a record written for a job never queued)."""
        self.storage.delete(layout.record_key(job_id))

    # -- results and artifacts ------------------------------------------------------------------

    def put_result(self, job_id: str, result: Any) -> None:
        """Store the handler's result as JSON; raises LrtError naming the type if it is not JSON."""
        try:
            data = json.dumps(result).encode()
        except (TypeError, ValueError) as exc:
            raise LrtError(
                f"the result of job {job_id!r} is not JSON-serialisable ({exc}): return plain "
                "dicts, lists, strings, numbers, booleans or None"
            ) from None
        self.storage.put(layout.result_key(job_id), data)

    def get_result(self, job_id: str) -> Any:
        """The stored result, or None when the job has none (yet)."""
        key = layout.result_key(job_id)
        try:
            data, _ = self.storage.get(key)
        except NotFound:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StorageError(f"{key!r} in {self.storage.url} is not valid JSON: {exc}") from None

    def upload_artifacts(self, job_id: str, folder: Path) -> int:
        """Upload every file under ``folder`` as the job's artifacts; return how many.

        A missing folder uploads nothing. Relative paths keep their sub-folders.
        """
        root = Path(folder)
        if not root.is_dir():
            return 0
        uploads: list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_file():
                    relpath = path.relative_to(root).as_posix()
                    uploads.append((layout.artifact_key(job_id, relpath), path))
        if not uploads:
            return 0
        with ThreadPoolExecutor(max_workers=min(_UPLOAD_THREADS, len(uploads))) as pool:
            list(pool.map(lambda item: self.storage.upload_file(*item), uploads))
        return len(uploads)


def _parse_record(key: str, data: bytes) -> JobRecord:
    try:
        return JobRecord.model_validate_json(data)
    except ValidationError as exc:
        raise StorageError(
            f"job record {key!r} is not a valid record ({exc.error_count()} problem(s), first: "
            f"{exc.errors()[0]['msg']})"
        ) from None


def _is_job_id(name: str) -> bool:
    try:
        validate_job_id(name)
    except InvalidJobId:
        return False
    return True
