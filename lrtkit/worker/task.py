"""What the worker runs for a job: a Python handler (``MOD:FN``) or a command (``--command``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from lrtkit.jobs import validate_payload
from lrtkit.worker.handler import load_handler, wants_context

if TYPE_CHECKING:
    from lrtkit.worker.attempt import Attempt
    from lrtkit.worker.context import JobContext


class Task(Protocol):
    """Validates a payload and runs one job."""

    name: str

    def validate(self, job_id: str, payload: dict[str, Any]) -> Any:
        """The payload as the task wants it; :class:`~lrtkit.errors.InvalidJob` if it is bad."""

    def run(self, attempt: Attempt, ctx: JobContext, job: Any) -> Any:
        """Run the job and return its result (JSON-serialisable).

        Raises :class:`lrtkit.Stop` when stopped, :class:`~lrtkit.worker.outcome.BadJob` or
        :class:`~lrtkit.errors.InvalidJob` for a job that can never succeed,
        :class:`~lrtkit.worker.outcome.RetryLater` for an interruption, anything else for a failure.
        """


def to_json_result(result: Any) -> Any:
    """A pydantic model becomes its JSON form; anything else is stored as returned."""
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return result


class PythonTask:
    """A handler ``fn(job, ctx)`` (or ``fn(job)``) loaded from ``module:function``."""

    def __init__(self, spec: str) -> None:
        self.name = spec
        self.fn: Callable[..., Any]
        self.fn, self.model = load_handler(spec)
        self._with_ctx = wants_context(self.fn)

    def validate(self, job_id: str, payload: dict[str, Any]) -> Any:
        """The payload model, or without one the body as a dict (``job_id`` included)."""
        if self.model is None:
            return {"job_id": job_id, **payload}
        return validate_payload(payload, self.model)

    def run(self, attempt: Attempt, ctx: JobContext, job: Any) -> Any:
        result = self.fn(job, ctx) if self._with_ctx else self.fn(job)
        return to_json_result(result)
