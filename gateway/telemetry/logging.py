"""Structured logs carrying the request id and trace id: JSON lines in production, a readable
line in development (``configure_logging(json=...)``).

The request id lives in a contextvar (``request_id_var``) set per request by
``TelemetryMiddleware`` (or ``bind_request_id``); the trace and span ids come from the current
OpenTelemetry span, when there is a valid one.
"""

from __future__ import annotations

import contextvars
import json as _json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from opentelemetry import trace

__all__ = [
    "ContextFilter",
    "DevFormatter",
    "JsonFormatter",
    "bind_request_id",
    "configure_logging",
    "request_id_var",
    "unbind_request_id",
]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "maas_request_id", default=None
)

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "request_id", "trace_id", "span_id", "taskName", "color_message"}
)


def bind_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    return request_id_var.set(request_id)


def unbind_request_id(token: contextvars.Token[str | None]) -> None:
    request_id_var.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``trace_id`` and ``span_id`` (``None`` when absent) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        else:
            record.trace_id = None
            record.span_id = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, trace_id, span_id,
    then any ``extra=`` fields, then ``exc`` with the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "trace_id", "span_id"):
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and name not in out:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return _json.dumps(out, default=str, ensure_ascii=False)


class DevFormatter(logging.Formatter):
    """``12:00:00.123 INFO  gateway.inference [req=abc trace=0af7651916cd43dd] message``."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        tags = []
        request_id = getattr(record, "request_id", None)
        trace_id = getattr(record, "trace_id", None)
        if request_id:
            tags.append(f"req={request_id}")
        if trace_id:
            tags.append(f"trace={trace_id[:16]}")
        context = f" [{' '.join(tags)}]" if tags else ""
        line = (
            f"{clock}.{int(record.msecs):03d} {record.levelname:<5} {record.name}{context} "
            f"{record.getMessage()}"
        )
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


def _iso_utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(
    *,
    json: bool,
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    adopt: Iterable[str] = UVICORN_LOGGERS,
) -> logging.Handler:
    """Send every log record to one handler on the root logger, JSON or readable.

    Replaces the root logger's handlers; loggers named in ``adopt`` (uvicorn's by default) lose
    their own handlers and propagate to the root, so their lines get the same format and ids.
    Returns the handler (remove it from the root logger to undo).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else DevFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in adopt:
        adopted = logging.getLogger(name)
        for old in list(adopted.handlers):
            adopted.removeHandler(old)
        adopted.propagate = True
    return handler
