"""The aiohttp application: routes, typed state, the engine's lifetime, and the error format.

Handlers read raw bodies and hand them, unparsed, to the engine's batched pipeline, which
verifies signatures before any JSON is parsed. Responses to merchants are signed
(`Instapay-Signature: t=..,v1=..` over `"<t>." + body`) and carry `X-Request-Id`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web

from instapay.engine import Engine, FsyncMode
from instapay.model import (
    EngineConfig,
    EngineFailedError,
    Overloaded,
    PaymentResult,
    RefundResult,
    RequestError,
)
from instapay.signing import SIGNATURE_HEADER, SignedRequest, sign_payload

log = logging.getLogger(__name__)

# A single payment is a few hundred bytes; 64 KiB leaves room for metadata and nothing silly.
BODY_BYTES_MAX = 64 * 1024
RETRY_AFTER_S = 1
JSON_TYPE = "application/json"
REQUEST_ID_HEADER = "X-Request-Id"
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class ServerSettings:
    data_dir: Path
    config: EngineConfig
    fsync: FsyncMode = "always"
    # Runs once, on a data directory without accounts (the embedded default funds its demo).
    on_first_start: Callable[[Engine], Awaitable[None]] | None = None


SETTINGS = web.AppKey("settings", ServerSettings)
ENGINE = web.AppKey("engine", Engine)
REQUEST_ID = web.RequestKey("request_id", str)


def error_response(request: web.Request, status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message, "request_id": request[REQUEST_ID]}}
    response = web.Response(body=orjson.dumps(body), status=status, content_type=JSON_TYPE)
    if status in (429, 503):
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


# aiohttp's own refusals (unknown route, body too large, wrong method) in our error format.
HTTP_ERROR_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


@web.middleware
async def errors_and_request_ids(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Gives every request an id and turns every refusal into the API's JSON error."""
    request[REQUEST_ID] = uuid.uuid4().hex
    try:
        response = await handler(request)
    except RequestError as error:
        response = error_response(request, error.http_status, error.code, error.message)
    except Overloaded as error:
        response = error_response(request, 503, "overloaded", str(error))
    except EngineFailedError:
        response = error_response(request, 503, "unavailable", "the engine has stopped")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = HTTP_ERROR_CODES.get(error.status, "invalid_request")
        response = error_response(request, error.status, code, error.reason)
    response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    return response


def merchant_response(request: web.Request, result: PaymentResult | RefundResult) -> web.Response:
    """A result as JSON, signed with the merchant's secrets (one v1 per live key)."""
    body = orjson.dumps(result.to_json())
    merchant = request.app[ENGINE].merchants[result.merchant_id]
    response = web.Response(body=body, content_type=JSON_TYPE)
    response.headers[SIGNATURE_HEADER] = sign_payload(
        list(merchant.keys.values()), body, int(time.time())
    )
    if result.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


async def signed_submission(request: web.Request) -> PaymentResult | RefundResult:
    if request.content_type != JSON_TYPE and request.can_read_body:
        raise RequestError("unsupported_media_type", f"send {JSON_TYPE}", 415)
    signed = SignedRequest(
        request.headers.get(SIGNATURE_HEADER), request.method, request.path_qs, await request.read()
    )
    key = request.headers.get(IDEMPOTENCY_HEADER)
    return await request.app[ENGINE].submit(signed, idempotency_key=key)


async def create_payment(request: web.Request) -> web.Response:
    return merchant_response(request, await signed_submission(request))


async def create_refund(request: web.Request) -> web.Response:
    return merchant_response(request, await signed_submission(request))


async def healthz(request: web.Request) -> web.Response:
    del request
    return web.json_response({"status": "ok"}, dumps=lambda data: orjson.dumps(data).decode())


async def engine_lifetime(app: web.Application) -> AsyncIterator[None]:
    """Opens the engine (recovery) before serving; on shutdown drains it and snapshots."""
    settings = app[SETTINGS]
    async with Engine.open(
        settings.data_dir, config=settings.config, fsync=settings.fsync
    ) as engine:
        if settings.on_first_start is not None and not engine.ledger.accounts:
            await settings.on_first_start(engine)
        app[ENGINE] = engine
        yield


def create_app(settings: ServerSettings) -> web.Application:
    app = web.Application(client_max_size=BODY_BYTES_MAX, middlewares=[errors_and_request_ids])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(engine_lifetime)
    app.router.add_post("/v1/payments", create_payment)
    app.router.add_post("/v1/payments/{payment_id}/refunds", create_refund)
    app.router.add_get("/healthz", healthz)
    return app
