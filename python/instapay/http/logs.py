"""Structured logs: one JSON object per line. Each request is logged once, at info, with its
route template, status, latency and request id; never a secret, a signature, a body or a query
string (order ids there are the merchant's business).

Whatever a client sends, none of it reaches a log line: aiohttp's and asyncio's records carry
the bytes they choke on (a header too long or with a control character, the request line with
its query, an `Authorization` header) in their arguments and exception messages. So a record of
a logger outside instapay keeps only its message template, and every exception is logged as its
type and the places it passed through (file, line, function), never its message.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from types import TracebackType
from typing import Any

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

ACCESS_LOGGER = "instapay.access"
OWN_LOGGERS = "instapay"
# A foreign message formatted before logging (asyncio's) is cut where it would start quoting
# something: a colon, a parenthesis, an angle bracket, a quote.
_QUOTING = re.compile(r"[:(<'\"\n]")


def message_of(record: logging.LogRecord) -> str:
    """The record's message; for a foreign logger, without anything it quotes."""
    if record.name == OWN_LOGGERS or record.name.startswith(OWN_LOGGERS + "."):
        return record.getMessage()
    template = str(record.msg)
    if record.args:
        return template
    return _QUOTING.split(template, maxsplit=1)[0].strip()


def error_of(error: BaseException) -> dict[str, Any]:
    """An exception as its type and stack (and its causes'), without any message."""
    entry: dict[str, Any] = {"type": _qualified(type(error)), "stack": _stack(error.__traceback__)}
    cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    if cause is not None:
        entry["cause"] = error_of(cause)
    return entry


def _qualified(kind: type) -> str:
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _stack(trace: TracebackType | None) -> list[str]:
    return [
        f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in traceback.extract_tb(trace)
    ]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message_of(record),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = error_of(record.exc_info[1])
        return orjson.dumps(entry).decode()


def route_of(request: BaseRequest) -> str:
    """The route template of a request, or "unmatched" (never the raw path)."""
    try:
        resource = request.match_info.route.resource  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):
        # A request the parser refused was never routed: aiohttp asserts its match_info is set.
        return "unmatched"
    return "unmatched" if resource is None else str(resource.canonical)


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's access log, as one JSON line per request."""

    def log(self, request: BaseRequest, response: StreamResponse, time_s: float) -> None:
        fields = {
            "method": request.method,
            "route": route_of(request),
            "status": response.status,
            "latency_ms": round(time_s * 1000, 3),
            "request_id": response.headers.get("X-Request-Id"),
        }
        self.logger.info("request", extra={"fields": fields})


def configure(level: int = logging.INFO) -> None:
    """Sends every log record to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
