"""Job ids, message bodies and job records.

The wire format is the job as one JSON object: ``job_id`` plus the payload fields, exactly what
the SaladCloud guides' submitters send. lrtkit never adds its own fields to a body.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError

from lrtkit.errors import InvalidJob, InvalidJobId

JOB_ID_MAX = 128
_JOB_ID = re.compile(r"[A-Za-z0-9._-]+")


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a safe id, else raise :class:`InvalidJobId` saying why.

    Allowed: 1 to 128 characters from ``[A-Za-z0-9._-]``, and not ``.`` or ``..`` (which
    would name a folder, not a job, wherever ids become storage keys).
    """
    if not isinstance(job_id, str):
        raise InvalidJobId(f"job_id must be a string, got {type(job_id).__name__}")
    if not job_id:
        raise InvalidJobId("job_id is empty")
    if len(job_id) > JOB_ID_MAX:
        raise InvalidJobId(f"job_id is {len(job_id)} characters long (at most {JOB_ID_MAX})")
    if not _JOB_ID.fullmatch(job_id):
        bad = sorted({c for c in job_id if not _JOB_ID.fullmatch(c)})
        raise InvalidJobId(
            f"job_id {job_id[:60]!r} has characters outside [A-Za-z0-9._-]: {''.join(bad)!r}"
        )
    if job_id in {".", ".."}:
        raise InvalidJobId(f"job_id {job_id!r} is not allowed")
    return job_id


def new_job_id() -> str:
    return str(uuid.uuid4())


def parse_body(body: bytes) -> tuple[str, dict[str, Any]]:
    """Split a message body into ``(job_id, payload fields)``.

    Raises :class:`InvalidJob` naming the problem: not UTF-8, not JSON, not an object, no or
    bad ``job_id``.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJob(f"body is not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJob(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidJob(f"body must be a JSON object, got {type(data).__name__}")
    if "job_id" not in data:
        raise InvalidJob("body has no job_id field")
    job_id = validate_job_id(data["job_id"])
    payload = {k: v for k, v in data.items() if k != "job_id"}
    return job_id, payload


def job_id_of(body: bytes) -> str | None:
    """The body's valid ``job_id``, or None (for listings of bodies that may be bad)."""
    try:
        return parse_body(body)[0]
    except InvalidJob:
        return None


def encode_body(job_id: str, payload: dict[str, Any]) -> bytes:
    """The wire body: the payload fields with ``job_id`` first, compact JSON."""
    validate_job_id(job_id)
    return json.dumps({"job_id": job_id, **payload}, separators=(",", ":")).encode()


def validate_payload(payload: dict[str, Any], model: type[BaseModel] | None) -> Any:
    """Validate ``payload`` into ``model`` (or return it as-is without a model).

    Raises :class:`InvalidJob` listing every bad field as ``field: message``.
    """
    if model is None:
        return payload
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidJob(describe_payload_error(exc)) from None


def describe_payload_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg']}")
    return "payload is invalid: " + "; ".join(parts)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Progress(BaseModel):
    done: float | None = None
    total: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class JobRecord(BaseModel):
    """What ``lrtkit status`` shows of a job. ``--json`` prints exactly these fields."""

    job_id: str
    state: JobState = JobState.QUEUED
    attempts: int = 0
    failures: int = 0
    progress: Progress | None = None
    result: Any = None
    error: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    # Internal, not part of the public JSON: which delivery holds the job past the broker's own
    # lease (see Broker.rollover) and until when its heartbeat vouches for it.
    holder: str | None = None
    held_until: datetime | None = None

    PUBLIC_FIELDS: ClassVar[tuple[str, ...]] = (
        "job_id",
        "state",
        "attempts",
        "failures",
        "progress",
        "result",
        "error",
        "updated_at",
    )

    def public(self) -> dict[str, Any]:
        """The stable JSON form of DESIGN.md (``lrtkit status --json``)."""
        return self.model_dump(mode="json", include=set(self.PUBLIC_FIELDS))

    def held_elsewhere(self, holder: str, now: datetime | None = None) -> bool:
        """True while another holder's heartbeat still vouches for this job."""
        if self.held_until is None or self.holder in (None, holder):
            return False
        return self.held_until > (now or utcnow())
