"""Structured log lines on stderr: timestamp, level, event, job id, attempt, key=values.

The worker logs events (``job.started``, ``job.succeeded``, ``lease.lost``...) with fields.
A field set is carried on the log record as ``lrt_fields``; :func:`event` attaches it and the
formatters print it. ``LRT_LOG_FORMAT=text`` (default) gives one readable line per event::

    2026-05-01T12:00:00.123Z INFO  job.started job_id=job-0 attempt=1 steps=600

``LRT_LOG_FORMAT=json`` gives one JSON object per line with the same keys. Messages from
handlers (``ctx.log.info("loss %.3f", loss)``) and from any other logger in the process come
out the same way, the message taking the place of the event name.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "lrtkit.worker"
FIELDS_ATTR = "lrt_fields"

log = logging.getLogger(LOGGER_NAME)


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (None values are left out)."""
    logger.log(level, name, extra={FIELDS_ATTR: {k: v for k, v in fields.items() if v is not None}})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    found = getattr(record, FIELDS_ATTR, None)
    return dict(found) if isinstance(found, Mapping) else {}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``TIMESTAMP LEVEL event key=value ...``; values with spaces are JSON-quoted."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), f"{record.levelname:<5}", record.getMessage()]
        parts += [f"{k}={_text_value(v)}" for k, v in _fields(record).items()]
        if record.name != LOGGER_NAME and not record.name.startswith("lrtkit"):
            parts.append(f"logger={_text_value(record.name)}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``event``, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "event": record.getMessage(),
            "logger": record.name,
        }
        for key, value in _fields(record).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class _LrtStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker class, so configuring twice replaces our handler instead of adding another."""


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send every log record of the process to stderr in lrtkit's format."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _LrtStderrHandler):
            root.removeHandler(existing)
    handler = _LrtStderrHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)


class JobLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``ctx.log``: a logger adapter that adds the job id and attempt to every line.

    Keyword fields can be given as ``extra={"loss": 0.1}``; they are printed as key=values.
    """

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        fields = dict(self.extra or {})
        extra = kwargs.get("extra") or {}
        nested = extra.get(FIELDS_ATTR, {}) if isinstance(extra, Mapping) else {}
        fields.update({k: v for k, v in extra.items() if k != FIELDS_ATTR})
        fields.update(nested)
        kwargs["extra"] = {FIELDS_ATTR: {k: v for k, v in fields.items() if v is not None}}
        return msg, kwargs

    def event(self, level: int, name: str, **fields: Any) -> None:
        """Log event ``name`` with this job's id and attempt plus ``fields``."""
        self.log(level, name, extra={k: v for k, v in fields.items() if v is not None})


def job_logger(job_id: str | None, attempt: int, name: str = LOGGER_NAME) -> JobLogger:
    return JobLogger(logging.getLogger(name), {"job_id": job_id, "attempt": attempt})
