"""The merchant SDK: an async client that signs every request and checks every answer's signature.

    async with Client("http://127.0.0.1:8080", "demo", "demo.k1", secret) as client:
        payment = await client.create_payment(order_id="o-1", payer="payer-0", amount=1999,
                                               currency="EUR")

A payment is idempotent by its order id: calling `create_payment` again for an order (a retry
after a network error or a 5xx, or a second call) answers the first payment, never a second
charge. Pass `idempotency_key` to ask for a new attempt explicitly (after a decline, say): the key
then scopes it instead of the order. A refund always carries a key (a fresh one per call unless
given), so its retries refund once. Every request is signed v2, which covers the key. Retries are
bounded and back off exponentially.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
import orjson

from instapay.protocol import (
    BATCH_PATH,
    IDEMPOTENCY_HEADER,
    JSON_TYPE,
    NDJSON_TYPE,
    SIGNATURE_HEADER,
)
from instapay.signing import sign_request, verify_payload

RETRIES_MAX_DEFAULT = 3
BACKOFF_S_FIRST = 0.05
TIMEOUT_S_DEFAULT = 10.0


class ApiError(Exception):
    """The server refused a request: its HTTP status and the API's error code and message."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None) -> None:
        super().__init__(f"{status} {code}: {message} (request {request_id})")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


T = TypeVar("T")


def _signed_json(payload: bytes, signature: str | None, secret: bytes) -> dict[str, Any]:
    """A JSON answer; one that is not signed by our key is not trusted, whatever it says."""
    verify_payload(payload, signature, [secret])
    answer: dict[str, Any] = orjson.loads(payload)
    return answer


def _signed_lines(stream: bytes, signature: str | None, secret: bytes) -> list[dict[str, Any]]:
    """The lines of a batch answer, once its last line's signature over all the others checks
    out (the header carries none: the stream starts before the last group is durable). A stream
    cut short (the server stopped) is a 503, which may be retried."""
    del signature
    body, _, last = stream.rstrip(b"\n").rpartition(b"\n")
    trailer = orjson.loads(last)
    if trailer.get("object") != "signature":
        code = trailer.get("error", {}).get("code", "unavailable")
        raise ApiError(503, code, "the batch answer was cut short", None)
    signed = body + b"\n" if body else b""
    verify_payload(signed, trailer["signature"], [secret])
    return [orjson.loads(line) for line in signed.splitlines()]


class Client:
    def __init__(
        self,
        base_url: str,
        merchant_id: str,
        kid: str,
        secret: bytes,
        *,
        retries_max: int = RETRIES_MAX_DEFAULT,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context` verifies an https server (default: the system's trusted CAs)."""
        self.base_url = base_url.rstrip("/")
        self.merchant_id = merchant_id
        self.kid = kid
        self.secret = secret
        self.retries_max = retries_max
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(ssl=self.ssl_context or True)
        self._session = aiohttp.ClientSession(timeout=self.timeout, connector=connector)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def create_payment(
        self,
        *,
        order_id: str,
        payer: str,
        amount: int,
        currency: str,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Pays for an order once: a call for an order already paid (or declined) answers that
        payment (`Idempotent-Replayed`). With `idempotency_key`, the key scopes the attempt
        instead: a new key is a new attempt, the same key its retry."""
        fields: dict[str, Any] = {
            "merchant_id": self.merchant_id,
            "order_id": order_id,
            "payer": payer,
            "amount": amount,
            "currency": currency,
        }
        if description is not None:
            fields["description"] = description
        if metadata is not None:
            fields["metadata"] = metadata
        return await self._call("POST", "/v1/payments", orjson.dumps(fields), idempotency_key)

    async def refund(
        self, payment_id: str, amount: int | None = None, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """A refund (of the rest when `amount` is None); a fresh key per call unless given, the
        same on each retry of the call."""
        body = b"" if amount is None else orjson.dumps({"amount": amount})
        key = idempotency_key or uuid.uuid4().hex
        return await self._call("POST", f"/v1/payments/{payment_id}/refunds", body, key)

    async def get_payment(self, payment_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/payments/{payment_id}", b"", None)

    async def payments_for_order(self, order_id: str) -> list[dict[str, Any]]:
        query = urlencode({"order_id": order_id})
        listing = await self._call("GET", f"/v1/payments?{query}", b"", None)
        data: list[dict[str, Any]] = listing["data"]
        return data

    async def list_payments(
        self,
        *,
        limit: int = 10,
        starting_after: str | None = None,
        ending_before: str | None = None,
        status: str | None = None,
        payer: str | None = None,
        created_gte: int | None = None,
        created_lt: int | None = None,
    ) -> dict[str, Any]:
        """A page of the merchant's payments, newest first: `data` and `has_more` (and
        `scanned_to` when a filter's bounded scan stopped: pass it as `starting_after`)."""
        given = {
            "limit": limit,
            "starting_after": starting_after,
            "ending_before": ending_before,
            "status": status,
            "payer": payer,
            "created_gte": created_gte,
            "created_lt": created_lt,
        }
        query = {name: str(value) for name, value in given.items() if value is not None}
        return await self._call("GET", f"/v1/payments?{urlencode(query)}", b"", None)

    async def create_payments_batch(
        self, payments: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Up to 10 000 payments in one request (NDJSON under one signature). Per payment, in
        order: the payment, or `{"object": "error", ...}` for a refused line. Each line is
        idempotent by its order id, so a retry of the whole batch charges nothing twice."""
        lines = [orjson.dumps({"merchant_id": self.merchant_id, **payment}) for payment in payments]
        body = b"\n".join(lines) + b"\n"
        return await self._request(
            "POST", BATCH_PATH, body, decode=_signed_lines, content_type=NDJSON_TYPE
        )

    async def list_events(self, *, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        """A page of the merchant's events, oldest first: `data` and `has_more`; pass the last
        event's id as `after` for the next page."""
        query = {"limit": str(limit)} | ({} if after is None else {"after": after})
        return await self._call("GET", f"/v1/events?{urlencode(query)}", b"", None)

    async def get_event(self, event_id: str) -> dict[str, Any]:
        """An event with its delivery attempts."""
        return await self._call("GET", f"/v1/events/{event_id}", b"", None)

    async def _call(
        self, method: str, path: str, body: bytes, idempotency_key: str | None
    ) -> dict[str, Any]:
        return await self._request(
            method, path, body, idempotency_key=idempotency_key, decode=_signed_json
        )

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        idempotency_key: str | None = None,
        decode: Callable[[bytes, str | None, bytes], T],
        content_type: str = JSON_TYPE,
    ) -> T:
        """Signs, sends and checks the answer's signature (`decode`); retries network errors
        and 5xx (safe: same key, same body)."""
        for attempt in range(self.retries_max + 1):
            try:
                payload, signature = await self._send(
                    method, path, body, idempotency_key, content_type
                )
                return decode(payload, signature, self.secret)
            except ApiError as error:
                if error.status < 500 or attempt == self.retries_max:
                    raise
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt == self.retries_max:
                    raise
            await asyncio.sleep(BACKOFF_S_FIRST * 2**attempt)
        raise AssertionError("the loop returns or raises")

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes,
        idempotency_key: str | None,
        content_type: str,
    ) -> tuple[bytes, str | None]:
        """The answer's body and signature header; an ApiError for a refusal."""
        if self._session is None:
            raise RuntimeError("use the client as `async with Client(...) as client`")
        headers = {
            SIGNATURE_HEADER: sign_request(
                kid=self.kid,
                secret=self.secret,
                method=method,
                path=path,
                body=body,
                timestamp_s=int(time.time()),
                idempotency_key=idempotency_key,
            ),
            "Content-Type": content_type,
        }
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        url = self.base_url + path
        async with self._session.request(method, url, data=body, headers=headers) as response:
            payload = await response.read()
            if response.status >= 400:
                raise _api_error(response.status, payload)
            return payload, response.headers.get(SIGNATURE_HEADER)


def _api_error(status: int, payload: bytes) -> ApiError:
    """The server's JSON error, or what can be said about an answer that is not one."""
    try:
        error = orjson.loads(payload)["error"]
        return ApiError(status, error["code"], error["message"], error.get("request_id"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ApiError(status, "http_error", payload[:200].decode(errors="replace"), None)
