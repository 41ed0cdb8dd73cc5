"""Request bodies: how much may be read, how fast, how much at once, and in which coding.

Every handler reads its body through `read_body`, never `request.read()`: aiohttp's reader has
no deadline, raises its buffer to the route's maximum (16 MiB for a batch) before reading, and
when the client goes away mid-body leaves the bytes read so far in a reference cycle (the
exception on the payload, its traceback, the reader's frame) that only a full collection frees.
A server kept busy by aborted uploads then grows without bound (issue 12: 59 MB to 2758 MB).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from instapay.http.limits import Limits
from instapay.model import RequestError

BODY_BUDGET_SHARE = web.RequestKey("body_budget_share", int)


class BodyBudget:
    """The bytes of request bodies the server holds at once (read or being read): a request
    takes its share before reading (its Content-Length, or chunk by chunk for a chunked body)
    and gives it back when its answer is written."""

    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.bytes_held = 0

    def take(self, request: web.Request, byte_count: int) -> None:
        if self.bytes_held + byte_count > self.bytes_max:
            raise RequestError(
                "server_busy", "too many request bodies are being received; retry shortly", 503
            )
        self.bytes_held += byte_count
        request[BODY_BUDGET_SHARE] = request.get(BODY_BUDGET_SHARE, 0) + byte_count

    def give_back(self, request: web.Request) -> None:
        self.bytes_held -= request.pop(BODY_BUDGET_SHARE, 0)


LIMITS = web.AppKey("limits", Limits)
BODY_BUDGET = web.AppKey("body_budget", BodyBudget)


def check_length(request: web.Request, bytes_max: int) -> None:
    """413 before a byte of the body is read, when its declared length is already too large."""
    if request.content_length is not None and request.content_length > bytes_max:
        raise RequestError("body_too_large", f"the body may hold at most {bytes_max} bytes", 413)


async def read_body(request: web.Request, bytes_max: int) -> bytes:
    """The whole body, at most `bytes_max` bytes (else 413), within the body read timeout (else
    408) and the server's body budget (else 503). A body cut short is a 400; the bytes read so
    far are freed at once, whatever still holds the exception."""
    check_length(request, bytes_max)
    timeout_s = request.app[LIMITS].body_read_timeout_s
    chunks: list[bytes] = []
    try:
        request.app[BODY_BUDGET].take(request, request.content_length or 0)
        async with _deadline(request, timeout_s):
            await _read_chunks(request, bytes_max, chunks)
        return b"".join(chunks)
    except TimeoutError:
        message = f"the request body did not arrive within {timeout_s} s"
        raise RequestError("body_timeout", message, 408) from None
    except (ConnectionError, RequestPayloadError):
        raise RequestError("body_incomplete", "the request body was cut short") from None
    finally:
        chunks.clear()


def _deadline(
    request: web.Request, timeout_s: float
) -> asyncio.Timeout | contextlib.nullcontext[None]:
    """No timer for a body already received whole (a small one comes with its head: the
    common case, kept cheap), else the body read timeout."""
    if request.content.is_eof():
        return contextlib.nullcontext()
    return asyncio.timeout(timeout_s)


async def _read_chunks(request: web.Request, bytes_max: int, chunks: list[bytes]) -> None:
    byte_count = 0
    declared = request.content_length or 0
    while chunk := await request.content.readany():
        byte_count += len(chunk)
        if byte_count > bytes_max:
            raise RequestError(
                "body_too_large", f"the body may hold at most {bytes_max} bytes", 413
            )
        if byte_count > declared:  # a chunked body takes its share as it arrives
            request.app[BODY_BUDGET].take(request, len(chunk))
        chunks.append(chunk)


# The only transfer coding aiohttp decodes. Any other (`gzip, chunked`) would be read as plain
# chunked, the bytes signed and checked not being the bytes sent.
TRANSFER_CODING = "chunked"


def check_codings(request: web.Request) -> None:
    """501 for a transfer coding and 415 for a content coding we do not implement: the body is
    taken as sent, so what the signature covers is what arrived."""
    transfer = _codings(request, "Transfer-Encoding")
    if transfer and transfer != [TRANSFER_CODING]:
        raise RequestError(
            "unsupported_transfer_coding",
            f"Transfer-Encoding: only {TRANSFER_CODING} is implemented, not {transfer}",
            501,
        )
    content = _codings(request, "Content-Encoding")
    if set(content) - {"identity"}:
        raise RequestError(
            "unsupported_content_coding",
            f"Content-Encoding: send the body uncompressed, not {content}",
            415,
        )


def _codings(request: web.Request, header: str) -> list[str]:
    """The codings a header lists, over all its lines, lower-cased (`gzip, chunked`)."""
    values = ",".join(request.headers.getall(header, []))
    return [coding.strip().lower() for coding in values.split(",")] if values else []


@web.middleware
async def request_bodies(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuses unimplemented codings before any handler reads the body (and closes the
    connection after the answer: its framing cannot be trusted) and gives the body's budget back
    once the answer is ready."""
    try:
        check_codings(request)
    except RequestError:
        request.protocol.close()
        raise
    try:
        return await handler(request)
    finally:
        request.app[BODY_BUDGET].give_back(request)
