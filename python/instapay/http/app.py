"""The aiohttp application: routes, typed state, the engine's lifetime, and the error format.

Handlers read raw bodies and hand them, unparsed, to the engine's batched pipeline, which
verifies signatures before any JSON is parsed. Responses to merchants are signed
(`Instapay-Signature: t=..,v1=..` over `"<t>." + body`) and carry `X-Request-Id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from instapay.engine import Engine, FsyncMode
from instapay.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from instapay.http.metrics import Metrics
from instapay.model import (
    AdminResult,
    EngineConfig,
    EngineFailedError,
    Merchant,
    Overloaded,
    PaymentResult,
    RefundResult,
    RequestError,
)
from instapay.signing import (
    SIGNATURE_HEADER,
    SignatureError,
    SignedRequest,
    sign_payload,
    verify_requests,
)

log = logging.getLogger(__name__)

# A single payment is a few hundred bytes; 64 KiB leaves room for metadata and nothing silly.
BODY_BYTES_MAX = 64 * 1024
BATCH_BODY_BYTES_MAX = 16 * 1024 * 1024
BATCH_LINES_MAX = 10_000
# A batch goes to the engine in groups of this many lines, all queued at once, and each group's
# answers are streamed back as soon as it (and every group before it) is durable.
BATCH_GROUP_LEN = 1000
NDJSON_TYPE = "application/x-ndjson"
# Enough for the engine's queue to stay full; more would only wait in memory.
REQUESTS_IN_FLIGHT_MAX_DEFAULT = 16_384
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
    # Bearer token of the admin endpoints; None disables them.
    admin_token: str | None = None
    # Beyond this many requests in flight, new ones get 429 at once instead of queueing.
    requests_in_flight_max: int = REQUESTS_IN_FLIGHT_MAX_DEFAULT


@dataclass
class Runtime:
    """What the running application holds: the engine once recovery has finished."""

    engine: Engine | None = None
    requests_in_flight: int = 0
    # Set when recovery has finished, or failed (then `failure` says why).
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    failure: BaseException | None = None

    async def ready(self) -> Engine:
        """Waits for recovery; raises what made it fail."""
        await self.settled.wait()
        if self.engine is None:
            raise RuntimeError("the engine did not start") from self.failure
        return self.engine


SETTINGS = web.AppKey("settings", ServerSettings)
RUNTIME = web.AppKey("runtime", Runtime)
METRICS = web.AppKey("metrics", Metrics)


def engine_of(request: web.Request) -> Engine:
    """The engine, or 503 while the data directory is still being recovered."""
    engine = request.app[RUNTIME].engine
    if engine is None:
        raise RequestError("starting", "recovering the data directory; retry shortly", 503)
    return engine


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
    runtime = request.app[RUNTIME]
    if runtime.requests_in_flight >= request.app[SETTINGS].requests_in_flight_max:
        refused = error_response(request, 429, "too_many_requests", "too many requests in flight")
        refused.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
        return refused
    runtime.requests_in_flight += 1
    response: web.StreamResponse
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
    finally:
        runtime.requests_in_flight -= 1
    if not response.prepared:  # a streamed response sets its own before it starts
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    return response


def signed_json(merchant: Merchant, payload: object) -> web.Response:
    """JSON signed with the merchant's secrets (one v1 per live key)."""
    body = orjson.dumps(payload)
    response = web.Response(body=body, content_type=JSON_TYPE)
    response.headers[SIGNATURE_HEADER] = sign_payload(
        list(merchant.keys.values()), body, int(time.time())
    )
    return response


def merchant_response(request: web.Request, result: PaymentResult | RefundResult) -> web.Response:
    response = signed_json(engine_of(request).merchants[result.merchant_id], result.to_json())
    if result.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


async def signed_reader(request: web.Request, body: bytes = b"") -> Merchant:
    """The merchant of a request checked outside the pipeline (a read, or a whole batch)."""
    engine = engine_of(request)
    signed = SignedRequest(
        request.headers.get(SIGNATURE_HEADER), request.method, request.path_qs, body
    )
    [verdict] = verify_requests(engine.ring, [signed], now_s=int(time.time()))
    if isinstance(verdict, SignatureError):
        raise RequestError(verdict.code, str(verdict), 401)
    return engine.merchant_of_kid[verdict]


def batch_line(
    index: int, answer: PaymentResult | RefundResult | RequestError | Overloaded
) -> bytes:
    if isinstance(answer, PaymentResult | RefundResult):
        return orjson.dumps({**answer.to_json(), "line": index, "replayed": answer.replayed})
    code = answer.code if isinstance(answer, RequestError) else "overloaded"
    return orjson.dumps(
        {"object": "error", "line": index, "error": {"code": code, "message": str(answer)}}
    )


async def create_payments_batch(request: web.Request) -> web.StreamResponse:
    """`POST /v1/payments/batch`: NDJSON payments under one signature over the whole body; the
    answers stream back as NDJSON, in request order, group by group as they become durable, and
    end with `{"object": "signature", "signature": "t=..,v1=.."}` over every byte before it. A
    bad line is answered by an error line and changes nothing; the other lines go ahead."""
    if request.content_type != NDJSON_TYPE:
        raise RequestError("unsupported_media_type", f"send {NDJSON_TYPE}", 415)
    body = await request.clone(client_max_size=BATCH_BODY_BYTES_MAX).read()
    merchant = await signed_reader(request, body)
    lines = body.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if len(lines) > BATCH_LINES_MAX:
        raise RequestError("batch_too_large", f"at most {BATCH_LINES_MAX} lines", 413)
    engine = engine_of(request)
    groups = [
        asyncio.ensure_future(
            engine.submit_authenticated(merchant, lines[start : start + BATCH_GROUP_LEN])
        )
        for start in range(0, len(lines), BATCH_GROUP_LEN)
    ]
    response = web.StreamResponse(
        headers={"Content-Type": NDJSON_TYPE, REQUEST_ID_HEADER: request[REQUEST_ID]}
    )
    await response.prepare(request)
    signed = bytearray()
    for number, group in enumerate(groups):
        try:
            answers = await group
        except EngineFailedError:
            # The stream has started: say so in-band and stop; no signature line ends it.
            error = {"code": "unavailable", "message": "the engine has stopped"}
            await response.write(orjson.dumps({"object": "error", "error": error}) + b"\n")
            for pending in groups[number + 1 :]:
                pending.cancel()
            await asyncio.gather(*groups, return_exceptions=True)
            return response
        chunk = b"".join(
            batch_line(number * BATCH_GROUP_LEN + offset, answer) + b"\n"
            for offset, answer in enumerate(answers)
        )
        signed += chunk
        await response.write(chunk)
    signature = sign_payload(list(merchant.keys.values()), bytes(signed), int(time.time()))
    await response.write(orjson.dumps({"object": "signature", "signature": signature}) + b"\n")
    await response.write_eof()
    return response


async def get_payment(request: web.Request) -> web.Response:
    merchant = await signed_reader(request, await request.read())
    payment_id = request.match_info["payment_id"]
    result = engine_of(request).payment(payment_id)
    if result is None or result.merchant_id != merchant.id:
        raise RequestError("not_found", f"no payment {payment_id}", 404)
    return merchant_response(request, result)


async def list_payments(request: web.Request) -> web.Response:
    """`GET /v1/payments?order_id=`: the merchant's payments for one order, oldest first."""
    merchant = await signed_reader(request, await request.read())
    order_id = request.query.get("order_id")
    if not order_id:
        raise RequestError("invalid_request", "order_id: the query parameter is required")
    payments = engine_of(request).payments_for_order(merchant.id, order_id)
    return signed_json(merchant, {"object": "list", "data": [p.to_json() for p in payments]})


async def signed_submission(request: web.Request) -> PaymentResult | RefundResult:
    if request.content_type != JSON_TYPE and request.can_read_body:
        raise RequestError("unsupported_media_type", f"send {JSON_TYPE}", 415)
    signed = SignedRequest(
        request.headers.get(SIGNATURE_HEADER), request.method, request.path_qs, await request.read()
    )
    key = request.headers.get(IDEMPOTENCY_HEADER)
    return await engine_of(request).submit(signed, idempotency_key=key)


async def create_payment_or_refund(request: web.Request) -> web.Response:
    """`POST /v1/payments` and `POST /v1/payments/{id}/refunds`: the engine routes them."""
    return merchant_response(request, await signed_submission(request))


def require_admin(request: web.Request) -> None:
    token = request.app[SETTINGS].admin_token
    if token is None:
        raise RequestError("admin_disabled", "admin endpoints are off (no admin token)", 403)
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise RequestError("admin_unauthorized", "Authorization: Bearer <admin token>", 401)


async def admin_body(request: web.Request, fields: dict[str, type]) -> dict[str, Any]:
    """An admin JSON object with exactly these required fields (and types)."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as error:
        raise RequestError("invalid_request", f"invalid JSON body: {error}") from error
    if not isinstance(body, dict):
        raise RequestError("invalid_request", "the body must be a JSON object")
    optional = {"overdraft"}
    for name, kind in fields.items():
        if name not in body and name in optional:
            continue
        if type(body.get(name)) is not kind:
            raise RequestError("invalid_request", f"{name}: a {kind.__name__} is required")
    if unknown := set(body) - set(fields):
        raise RequestError("invalid_request", f"unknown fields: {sorted(unknown)}")
    return body


def admin_json(result: AdminResult) -> web.Response:
    payload = {
        "object": "account_operation",
        "account_id": result.account_id,
        "status": result.status.value,
        "failure_code": result.failure_code.value if result.failure_code else None,
        "balance": result.balance,
    }
    return web.Response(body=orjson.dumps(payload), content_type=JSON_TYPE)


async def admin_open_account(request: web.Request) -> web.Response:
    require_admin(request)
    body = await admin_body(request, {"id": str, "currency": str, "overdraft": bool})
    engine = engine_of(request)
    overdraft = body.get("overdraft", False)
    return admin_json(await engine.open_account(body["id"], body["currency"], overdraft=overdraft))


async def admin_move_money(
    request: web.Request, move: Callable[[str, int, str], Awaitable[AdminResult]]
) -> web.Response:
    require_admin(request)
    body = await admin_body(request, {"amount": int, "currency": str})
    return admin_json(
        await move(request.match_info["account_id"], body["amount"], body["currency"])
    )


async def admin_deposit(request: web.Request) -> web.Response:
    return await admin_move_money(request, engine_of(request).deposit)


async def admin_withdraw(request: web.Request) -> web.Response:
    return await admin_move_money(request, engine_of(request).withdraw)


async def admin_balance(request: web.Request) -> web.Response:
    require_admin(request)
    account_id = request.match_info["account_id"]
    balance = engine_of(request).balance(account_id)
    if balance is None:
        raise RequestError("not_found", f"no account {account_id}", 404)
    currency, amount = balance
    payload = {
        "object": "balance",
        "account_id": account_id,
        "currency": currency,
        "balance": amount,
    }
    return web.Response(body=orjson.dumps(payload), content_type=JSON_TYPE)


async def readyz(request: web.Request) -> web.Response:
    engine_of(request)
    return web.json_response({"status": "ready"}, dumps=lambda data: orjson.dumps(data).decode())


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


@web.middleware
async def request_metrics(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Counts every request by route template (never the raw path) and status, with latency."""
    started_s = time.perf_counter()
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    request.app[METRICS].observe(route, response.status, time.perf_counter() - started_s)
    return response


async def healthz(request: web.Request) -> web.Response:
    del request
    return web.json_response({"status": "ok"}, dumps=lambda data: orjson.dumps(data).decode())


async def engine_lifetime(app: web.Application) -> AsyncIterator[None]:
    """Recovers the data directory in the background, so /healthz and /readyz answer during a
    long recovery; on shutdown drains the engine and snapshots."""
    settings = app[SETTINGS]
    runtime = app[RUNTIME]
    engines = contextlib.AsyncExitStack()

    async def open_engine() -> None:
        try:
            opened = Engine.open(settings.data_dir, config=settings.config, fsync=settings.fsync)
            engine = await engines.enter_async_context(opened)
            if settings.on_first_start is not None and not engine.ledger.accounts:
                await settings.on_first_start(engine)
            runtime.engine = engine
        except BaseException as error:
            runtime.failure = error
            log.critical("the engine could not start: %s", error)
            raise
        finally:
            runtime.settled.set()

    opening = asyncio.create_task(open_engine(), name="instapay-recovery")
    try:
        yield
    finally:
        # Recovery runs in a thread and cannot be interrupted halfway; its failure was logged.
        await asyncio.gather(opening, return_exceptions=True)
        await engines.aclose()


def create_app(settings: ServerSettings) -> web.Application:
    app = web.Application(
        client_max_size=BODY_BYTES_MAX, middlewares=[request_metrics, errors_and_request_ids]
    )
    app[SETTINGS] = settings
    runtime = Runtime()
    app[RUNTIME] = runtime
    app[METRICS] = Metrics(lambda: runtime.engine)
    app.cleanup_ctx.append(engine_lifetime)
    app.router.add_post("/v1/payments", create_payment_or_refund)
    app.router.add_post("/v1/payments/batch", create_payments_batch)
    app.router.add_post("/v1/payments/{payment_id}/refunds", create_payment_or_refund)
    app.router.add_get("/v1/payments", list_payments)
    app.router.add_get("/v1/payments/{payment_id}", get_payment)
    app.router.add_post("/v1/admin/accounts", admin_open_account)
    app.router.add_get("/v1/admin/accounts/{account_id}", admin_balance)
    app.router.add_post("/v1/admin/accounts/{account_id}/deposits", admin_deposit)
    app.router.add_post("/v1/admin/accounts/{account_id}/withdrawals", admin_withdraw)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
