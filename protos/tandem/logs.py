"""Tandem's log format, shared by the core and the facade (stdlib only): one JSON object per
line (or plain text), each tagged with its request id.

Owns `request_id_var` (the `ContextVar` the request-id middleware sets for the life of a request,
streams included), `trace_id_var` (its W3C trace id, when it has one), the `RequestIdFilter`
that copies the request id onto every record, `JsonFormatter`, and `configure_logging()`,
which installs one stderr handler on the root logger and routes uvicorn's loggers through it.

A JSON line holds `ts` (UTC, ISO 8601), `level`, `logger`, `message`, `request_id` (when the line
was written while handling a request), `trace_id` (when that request carries a W3C trace
context: tandem/tracing.py), every `extra={...}` field of the call (e.g. the access
line's `method`, `path`, `route`, `status`, `duration_ms`) and `exception` when there is one.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

# The id of the request being handled in this context (None outside requests).
request_id_var: ContextVar[str | None] = ContextVar("tandem_request_id", default=None)
# The W3C trace id of that request when it arrived with a `traceparent` (or was traced here).
trace_id_var: ContextVar[str | None] = ContextVar("tandem_trace_id", default=None)

# LogRecord attributes that are not `extra=` fields of the call.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "request_id", "taskName", "color_message"}  # uvicorn's ANSI copy
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Stamps `record.request_id` from `request_id_var` (keeps one a caller set explicitly)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one compact JSON object (non-JSON values become their `str`)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id is not None:
            line["request_id"] = request_id
        trace_id = trace_id_var.get()
        if trace_id is not None:
            line["trace_id"] = trace_id
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return super().format(record)


def make_handler(log_format: str = "json", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) with the request-id filter and the chosen format."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else _TextFormatter(TEXT_FORMAT))
    return handler


def configure_logging(log_format: str = "json", level: str | int = "INFO") -> None:
    """Send every log line of the process (uvicorn's included) through one handler on root."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(make_handler(log_format))
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
