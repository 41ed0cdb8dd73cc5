"""Request bodies: how much may be read, how fast, how much at once, and in which coding.

Every handler reads its body through `read_body`, never `request.read()`: aiohttp's reader has
no deadline, raises its buffer to the route's maximum (16 MiB for a batch) before reading, and
when the client goes away mid-body leaves the bytes read so far in a reference cycle (the
exception on the payload, its traceback, the reader's frame) that only a full collection frees.
A server kept busy by aborted uploads then grows without bound (issue 12: 59 MB to 2758 MB).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from instapay.http.limits import Limits
from instapay.model import RequestError

BODY_BUDGET_SHARE = web.RequestKey("body_budget_share", int)


class BodyBudget:
    """The bytes of request bodies the server holds at once (read or being read): a request
    opens its account when it arrives, takes its share before reading (its Content-Length, or
    chunk by chunk for a chunked body) and gives it back when its answer is written."""

    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.bytes_held = 0

    def open(self, request: web.Request) -> None:
        # Set up front: a request's lookup of a key it lacks raises (and catches) a KeyError
        # inside aiohttp's mapping, a microsecond per request.
        request[BODY_BUDGET_SHARE] = 0

    def take(self, request: web.Request, byte_count: int) -> None:
        if self.bytes_held + byte_count > self.bytes_max:
            raise RequestError(
                "server_busy", "too many request bodies are being received; retry shortly", 503
            )
        self.bytes_held += byte_count
        request[BODY_BUDGET_SHARE] += byte_count

    def give_back(self, request: web.Request) -> None:
        self.bytes_held -= request[BODY_BUDGET_SHARE]
        request[BODY_BUDGET_SHARE] = 0


LIMITS = web.AppKey("limits", Limits)
BODY_BUDGET = web.AppKey("body_budget", BodyBudget)


def _too_large(bytes_max: int) -> RequestError:
    return RequestError("body_too_large", f"the body may hold at most {bytes_max} bytes", 413)


async def read_body(request: web.Request, bytes_max: int) -> bytes:
    """The whole body, at most `bytes_max` bytes (else 413), within the body read timeout (else
    408) and the server's body budget (else 503). A body cut short is a 400; the bytes read so
    far are freed at once, whatever still holds the exception."""
    declared = request.content_length or 0  # parsed from the header at each access
    if declared > bytes_max:  # refused before a byte of it is read
        raise _too_large(bytes_max)
    request.app[BODY_BUDGET].take(request, declared)
    if not request.content.is_eof():
        return await _read_in_time(request, bytes_max, declared)
    # Received whole with its head (a small body: the common case, kept cheap): no timer and
    # no wait, one buffer taken at once.
    try:
        body = request.content.read_nowait()
    except (ConnectionError, RequestPayloadError):
        raise _cut_short() from None
    _count(request, bytes_max, declared, len(body), len(body))
    return body


def _cut_short() -> RequestError:
    return RequestError("body_incomplete", "the request body was cut short")


async def _read_in_time(request: web.Request, bytes_max: int, declared: int) -> bytes:
    """The body, chunk by chunk as it arrives, within the body read timeout."""
    timeout_s = request.app[LIMITS].body_read_timeout_s
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(timeout_s):
            byte_count = 0
            while chunk := await request.content.readany():
                byte_count += len(chunk)
                _count(request, bytes_max, declared, byte_count, len(chunk))
                chunks.append(chunk)
        return b"".join(chunks)
    except TimeoutError:
        message = f"the request body did not arrive within {timeout_s} s"
        raise RequestError("body_timeout", message, 408) from None
    except (ConnectionError, RequestPayloadError):
        raise _cut_short() from None
    finally:
        chunks.clear()


def _count(
    request: web.Request, bytes_max: int, declared: int, byte_count: int, chunk_len: int
) -> None:
    """A chunk of `chunk_len` bytes arrived, `byte_count` so far: 413 beyond `bytes_max`; past
    the declared length (a chunked body) the chunk takes its share of the budget."""
    if byte_count > bytes_max:
        raise _too_large(bytes_max)
    if byte_count > declared:
        request.app[BODY_BUDGET].take(request, chunk_len)


# The only transfer coding aiohttp decodes. Any other (`gzip, chunked`) would be read as plain
# chunked, the bytes signed and checked not being the bytes sent.
TRANSFER_CODING = "chunked"


def check_codings(request: web.Request) -> None:
    """Refuses a transfer coding (501) or a content coding (415) we do not implement, before any
    handler reads the body: the body is taken as sent, so what the signature covers is what
    arrived. The connection is closed after the refusal: its framing cannot be trusted."""
    refusal = _coding_refusal(request)
    if refusal is not None:
        request.protocol.close()
        raise refusal


def _coding_refusal(request: web.Request) -> RequestError | None:
    headers = request.headers
    if "Transfer-Encoding" not in headers and "Content-Encoding" not in headers:
        return None  # most requests: nothing to parse
    transfer = _codings(request, "Transfer-Encoding")
    if transfer and transfer != [TRANSFER_CODING]:
        return RequestError(
            "unsupported_transfer_coding",
            f"Transfer-Encoding: only {TRANSFER_CODING} is implemented, not {transfer}",
            501,
        )
    content = _codings(request, "Content-Encoding")
    if set(content) - {"identity"}:
        return RequestError(
            "unsupported_content_coding",
            f"Content-Encoding: send the body uncompressed, not {content}",
            415,
        )
    return None


def _codings(request: web.Request, header: str) -> list[str]:
    """The codings a header lists, over all its lines, lower-cased (`gzip, chunked`)."""
    values = ",".join(request.headers.getall(header, []))
    return [coding.strip().lower() for coding in values.split(",")] if values else []
