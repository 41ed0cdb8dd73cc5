"""Structured logs: one JSON object per line. Each request is logged once, at info, with its
route template, status, latency and request id; never a secret, a signature, a body or a query
string (order ids there are the merchant's business)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

ACCESS_LOGGER = "instapay.access"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's access log, as one JSON line per request."""

    def log(self, request: BaseRequest, response: StreamResponse, time_s: float) -> None:
        match_info = getattr(request, "match_info", None)
        resource = match_info.route.resource if match_info is not None else None
        fields = {
            "method": request.method,
            "route": resource.canonical if resource is not None else "unmatched",
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
