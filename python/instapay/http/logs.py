"""Structured logs: one JSON object per line. Each request is logged once, at info, with its
route template, status, latency and request id; never a secret, a signature, a body or a query
string (order ids there are the merchant's business).

Whatever a client sends, none of it reaches a log line: aiohttp's and asyncio's records carry
the bytes they choke on (a header too long or with a control character, the request line with
its query, an `Authorization` header) in their arguments and exception messages. So a record of
a logger outside instapay keeps only its message template, and every exception is logged as its
type and the places it passed through (file, line, function), never its message.

The lines are written by `JsonLinesHandler`, a batch at a time: once per event-loop iteration
(or sooner when many are waiting), not one write and flush per line. The access log, a line per
request, skips `logging`'s record, formatter and handler chain when its lines would end in that
handler anyway (`direct_sink`); configured otherwise (another handler, a filter, a higher level),
it goes through `logging` as any logger does.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
import traceback
from types import TracebackType
from typing import Any, TextIO

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


class JsonLinesHandler(logging.Handler):
    """Writes JSON lines to a stream in batches: a line logged on the event loop's thread waits
    for the end of the loop's current iteration (or for BATCH_CHARS_MAX waiting characters), one
    logged elsewhere is written at once with those waiting before it, so lines keep their order.
    `flush` writes what waits: `logging.shutdown` calls it at exit, so no line is lost."""

    # Characters of lines waiting before they are written whatever the loop is doing: a long
    # iteration (a batch's answers) cannot make the buffer grow without bound.
    BATCH_CHARS_MAX = 64 * 1024

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.setFormatter(JsonFormatter())
        self._waiting: list[str] = []
        self._waiting_chars = 0
        # The loop with a flush already scheduled, so one write serves a whole iteration.
        self._flush_loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:  # called under self.lock
        try:
            self._add(self.format(record))
        except Exception:  # what logging.Handler.emit does
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """A formatted line, as `emit` would write it: the access log's way in."""
        self.acquire()
        try:
            self._add(line)
        finally:
            self.release()

    def _add(self, line: str) -> None:
        self._waiting.append(line)
        self._waiting_chars += len(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self._waiting_chars >= self.BATCH_CHARS_MAX:
            self._write()
        elif loop is not self._flush_loop:
            self._flush_loop = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
            self._flush_loop = None
        finally:
            self.release()

    def _write(self) -> None:
        if self._waiting:
            self._waiting.append("")  # the last line's end
            self.stream.write("\n".join(self._waiting))
            self._waiting.clear()
            self._waiting_chars = 0
        self.stream.flush()


def direct_sink(logger: logging.Logger) -> JsonLinesHandler | None:
    """The handler an info record of `logger` would end in, if it is the only one, a
    JsonLinesHandler formatting with JsonFormatter, and nothing on the way filters: a line
    written to it directly is then the line `logging` would write. None otherwise."""
    if not logger.isEnabledFor(logging.INFO):
        return None
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        handlers.extend(current.handlers)
        current = current.parent if current.propagate else None
    if len(handlers) != 1:
        return None
    [handler] = handlers
    plain = not handler.filters and handler.level <= logging.INFO
    if plain and isinstance(handler, JsonLinesHandler) and type(handler.formatter) is JsonFormatter:
        return handler
    return None


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's access log, as one JSON line per request. aiohttp makes one per connection,
    which looks up where its lines go then (`direct_sink`)."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self.sink = direct_sink(logger)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time_s: float) -> None:
        fields = {
            "method": request.method,
            "route": route_of(request),
            "status": response.status,
            "latency_ms": round(time_s * 1000, 3),
            "request_id": response.headers.get("X-Request-Id"),
        }
        if self.sink is None:
            self.logger.info("request", extra={"fields": fields})
            return
        # JsonFormatter's line for that record, without making the record.
        entry = {
            "time": round(time.time(), 3),
            "level": "info",
            "logger": self.logger.name,
            "message": "request",
            **fields,
        }
        self.sink.write_line(orjson.dumps(entry).decode())


def configure(level: int = logging.INFO) -> None:
    """Sends every log record to stderr as JSON."""
    root = logging.getLogger()
    root.handlers[:] = [JsonLinesHandler(sys.stderr)]
    root.setLevel(level)
