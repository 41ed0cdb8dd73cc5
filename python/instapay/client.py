"""The merchant SDK: an async client that signs every request and checks every answer's signature.

    async with Client("http://127.0.0.1:8080", "demo", "demo.k1", secret) as client:
        payment = await client.create_payment(order_id="o-1", payer="payer-0", amount=1999,
                                               currency="EUR")

Payments and refunds get an idempotency key unless one is given, so a retry after a network
error or a 5xx can never charge twice; retries are bounded and back off exponentially.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from instapay.signing import SIGNATURE_HEADER, sign_request, verify_payload

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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.merchant_id = merchant_id
        self.kid = kid
        self.secret = secret
        self.retries_max = retries_max
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(timeout=self.timeout)
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
        key = idempotency_key or uuid.uuid4().hex
        return await self._call("POST", "/v1/payments", orjson.dumps(fields), key)

    async def refund(
        self, payment_id: str, amount: int | None = None, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        body = b"" if amount is None else orjson.dumps({"amount": amount})
        key = idempotency_key or uuid.uuid4().hex
        return await self._call("POST", f"/v1/payments/{payment_id}/refunds", body, key)

    async def get_payment(self, payment_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/payments/{payment_id}", b"", None)

    async def payments_for_order(self, order_id: str) -> list[dict[str, Any]]:
        listing = await self._call("GET", f"/v1/payments?order_id={order_id}", b"", None)
        data: list[dict[str, Any]] = listing["data"]
        return data

    async def _call(
        self, method: str, path: str, body: bytes, idempotency_key: str | None
    ) -> dict[str, Any]:
        """Signs and sends; retries network errors and 5xx (safe: same key, same body)."""
        for attempt in range(self.retries_max + 1):
            try:
                return await self._send(method, path, body, idempotency_key)
            except ApiError as error:
                if error.status < 500 or attempt == self.retries_max:
                    raise
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt == self.retries_max:
                    raise
            await asyncio.sleep(BACKOFF_S_FIRST * 2**attempt)
        raise AssertionError("the loop returns or raises")

    async def _send(
        self, method: str, path: str, body: bytes, idempotency_key: str | None
    ) -> dict[str, Any]:
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
            ),
            "Content-Type": "application/json",
        }
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        url = self.base_url + path
        async with self._session.request(method, url, data=body, headers=headers) as response:
            payload = await response.read()
            if response.status >= 400:
                raise _api_error(response.status, payload)
            # An answer that is not signed by our key is not trusted, whatever it says.
            verify_payload(payload, response.headers.get(SIGNATURE_HEADER), [self.secret])
            answer: dict[str, Any] = orjson.loads(payload)
            return answer


def _api_error(status: int, payload: bytes) -> ApiError:
    """The server's JSON error, or what can be said about an answer that is not one."""
    try:
        error = orjson.loads(payload)["error"]
        return ApiError(status, error["code"], error["message"], error.get("request_id"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ApiError(status, "http_error", payload[:200].decode(errors="replace"), None)
