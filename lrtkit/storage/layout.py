"""Where everything of a job lives in the storage. Every part builds keys here, never by hand.

::

    jobs/{job_id}/record.json                       JobRecord JSON
    jobs/{job_id}/cancel                            cancel marker (exists = cancel requested)
    jobs/{job_id}/result.json                       handler result (JSON)
    jobs/{job_id}/artifacts/{relpath}               files of ctx.output_dir after success
    jobs/{job_id}/checkpoint/manifest.json          the fenced pointer (conditional writes)
    jobs/{job_id}/checkpoint/state/{gen}-{owner}.json   JSON state of one generation
    jobs/{job_id}/checkpoint/tree/{gen}-{owner}.json    file listing of one folder generation
    jobs/{job_id}/checkpoint/blobs/{sha256}         folder file contents, content-addressed

Every function validates the job id (:func:`lrtkit.jobs.validate_job_id`), so an id can never
name a key outside its own ``jobs/{job_id}/`` folder.
"""

from __future__ import annotations

import hashlib
import re

from lrtkit.errors import StorageError
from lrtkit.jobs import validate_job_id
from lrtkit.storage.base import check_key

JOBS_PREFIX = "jobs/"
RECORD_NAME = "record.json"
CANCEL_NAME = "cancel"
RESULT_NAME = "result.json"
ARTIFACTS_DIR = "artifacts"
CHECKPOINT_DIR = "checkpoint"
MANIFEST_NAME = "manifest.json"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def job_prefix(job_id: str) -> str:
    """``jobs/{job_id}/``: everything stored for the job."""
    return f"{JOBS_PREFIX}{validate_job_id(job_id)}/"


def record_key(job_id: str) -> str:
    return job_prefix(job_id) + RECORD_NAME


def cancel_key(job_id: str) -> str:
    return job_prefix(job_id) + CANCEL_NAME


def result_key(job_id: str) -> str:
    return job_prefix(job_id) + RESULT_NAME


def artifacts_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}{ARTIFACTS_DIR}/"


def artifact_key(job_id: str, relpath: str) -> str:
    """The key of one artifact; ``relpath`` is ``/``-separated and may not escape the folder."""
    try:
        check_key(relpath)
    except StorageError as exc:
        raise StorageError(
            f"artifact path {relpath!r} of job {job_id!r} is not usable: {exc}"
        ) from None
    return artifacts_prefix(job_id) + relpath


def checkpoint_prefix(job_id: str) -> str:
    return f"{job_prefix(job_id)}{CHECKPOINT_DIR}/"


def manifest_key(job_id: str) -> str:
    return checkpoint_prefix(job_id) + MANIFEST_NAME


def owner_tag(owner: str) -> str:
    """A key-safe, unique tag for a holder token (any string): readable part + short hash."""
    if not owner:
        raise StorageError("checkpoint owner token is empty")
    readable = _UNSAFE.sub("_", owner)[:40]
    digest = hashlib.sha256(owner.encode("utf-8")).hexdigest()[:10]
    return f"{readable}-{digest}"


def state_prefix(job_id: str) -> str:
    return checkpoint_prefix(job_id) + "state/"


def state_key(job_id: str, generation: int, owner: str) -> str:
    """The JSON state of ``generation`` written by ``owner`` (unique per holder and generation)."""
    return f"{state_prefix(job_id)}{generation:012d}-{owner_tag(owner)}.json"


def tree_prefix(job_id: str) -> str:
    return checkpoint_prefix(job_id) + "tree/"


def tree_key(job_id: str, generation: int, owner: str) -> str:
    """The file listing of a folder checkpoint of ``generation`` written by ``owner``."""
    return f"{tree_prefix(job_id)}{generation:012d}-{owner_tag(owner)}.json"


def blobs_prefix(job_id: str) -> str:
    return checkpoint_prefix(job_id) + "blobs/"


def blob_key(job_id: str, sha256: str) -> str:
    """The content-addressed key of a folder checkpoint file with that sha256 (hex)."""
    if not _SHA256.fullmatch(sha256):
        raise StorageError(f"{sha256!r} is not a lowercase hex sha256 digest")
    return blobs_prefix(job_id) + sha256


def job_id_of_record_key(key: str) -> str | None:
    """The job id if ``key`` is a record key (``jobs/{id}/record.json``), else None."""
    parts = key.split("/")
    if len(parts) != 3 or f"{parts[0]}/" != JOBS_PREFIX or parts[2] != RECORD_NAME:
        return None
    return parts[1]
