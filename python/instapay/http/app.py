"""The aiohttp application: routes, typed state, the engine's lifetime, and the error format.

Handlers read raw bodies and hand them, unparsed, to the engine's batched pipeline, which
verifies signatures before any JSON is parsed. Responses to merchants are signed
(`Instapay-Signature: t=..,v1=..` over `"<t>." + body`) and carry `X-Request-Id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict, TypeVar

import aiohttp
import orjson
from aiohttp import web

from instapay import _core, lists
from instapay.engine import IDEMPOTENCY_CAPACITY_DEFAULT, Engine, FsyncMode
from instapay.http import queries
from instapay.http.bodies import BODY_BUDGET, LIMITS, BodyBudget, check_codings, read_body
from instapay.http.limits import Limits
from instapay.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from instapay.http.metrics import Metrics
from instapay.http.openapi import openapi_spec
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
from instapay.notify import DeliveryPolicy, Dispatcher
from instapay.outbox import event_json, event_lsn
from instapay.protocol import (
    BATCH_PATH,
    JSON_TYPE,
    NDJSON_TYPE,
    REPLAYED_HEADER,
    REQUEST_ID_HEADER,
    entry_id,
    entry_lsn,
    payment_id,
    payment_lsn,
    refund_id,
    refund_lsn,
)
from instapay.signing import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    MalformedSignatureError,
    SignatureError,
    SignedRequest,
    UnknownKeyError,
    check_timestamp,
    parse_request_header,
    sign_payload,
    verify_requests,
)
from instapay.storage.history import history_path
from instapay.storage.history.projector import HistoryPolicy
from instapay.storage.history.reads import (
    Cursors,
    Entry,
    HistoryQueryError,
    HistoryReader,
    HistoryReads,
    HistoryUnavailableError,
)

log = logging.getLogger(__name__)

# A single payment is a few hundred bytes; 64 KiB leaves room for metadata and nothing silly.
BODY_BYTES_MAX = 64 * 1024
BATCH_BODY_BYTES_MAX = 16 * 1024 * 1024
BATCH_LINES_MAX = 10_000
# A batch goes to the engine in groups of this many lines, all queued at once, and each group's
# answers are streamed back as soon as it (and every group before it) is durable.
BATCH_GROUP_LEN = 1000
BATCH_GROUPS_AHEAD = 4
# Enough for the engine's queue to stay full; more would only wait in memory.
REQUESTS_IN_FLIGHT_MAX_DEFAULT = 16_384
RETRY_AFTER_S = 1
# How long a list waits for the history database to hold every record durable when it was
# asked (read-your-writes) before answering 503: the projector commits every few milliseconds.
HISTORY_CATCH_UP_TIMEOUT_S = 2.0


# The HTTP parser's limits: a longer request line or header, or more headers, is refused with 400
# before any handler runs. Pass to AppRunner / TestServer. A head being received is held whole
# (and copied) until it is complete, outside any budget: aiohttp's 128 headers let 100 connections
# trickling 1 MiB heads hold 198 MiB; 32 (a head of at most 256 KiB) hold 48 MiB.
class HeaderLimits(TypedDict):
    max_line_size: int
    max_field_size: int
    max_headers: int


HEADER_LIMITS = HeaderLimits(max_line_size=8190, max_field_size=8190, max_headers=32)


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
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    limits: Limits = field(default_factory=Limits)
    # Keys the idempotency index holds (a test sizes it down to fill it over HTTP).
    idempotency_capacity: int = IDEMPOTENCY_CAPACITY_DEFAULT
    # history.db and its projector's policy (config.py, `[history]`).
    history: bool = True
    history_policy: HistoryPolicy = field(default_factory=HistoryPolicy)


@dataclass
class Runtime:
    """What the running application holds: the engine once recovery has finished."""

    engine: Engine | None = None
    dispatcher: Dispatcher | None = None
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
# The reads of the history database (created with the app, closed after the engine).
HISTORY: web.AppKey[HistoryReads] = web.AppKey("history")
T = TypeVar("T")


def engine_of(request: web.Request) -> Engine:
    """The engine, or 503 while the data directory is still being recovered."""
    engine = request.app[RUNTIME].engine
    if engine is None:
        raise RequestError("starting", "recovering the data directory; retry shortly", 503)
    return engine


REQUEST_ID = web.RequestKey("request_id", str)
# A random prefix per process and a counter: unique across restarts, and 20 times cheaper than a
# uuid4 per request (8 µs of a 180 µs request under load).
# 32 hex digits, like a uuid4's; `str.format` mapped over the counter resumes no generator frame.
REQUEST_IDS = map(f"{secrets.token_hex(8)}{{:016x}}".format, itertools.count(1))


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
async def every_request(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Gives every request an id; answers it, or refuses it in the API's error format (beyond
    the requests in flight, of an unimplemented coding, or raised by the handler); gives the
    body's share of the budget back once the answer is ready; counts the request by route
    template (never the raw path) and status, with its latency. One middleware and one
    coroutine rather than one per concern: each layer costs every request a coroutine and a
    call."""
    started_s = time.perf_counter()
    request_id = request[REQUEST_ID] = next(REQUEST_IDS)
    app = request.app
    runtime = app[RUNTIME]
    response: web.StreamResponse
    if runtime.requests_in_flight >= app[SETTINGS].requests_in_flight_max:
        response = error_response(request, 429, "too_many_requests", "too many requests in flight")
    else:
        runtime.requests_in_flight += 1
        app[BODY_BUDGET].open(request)
        try:
            check_codings(request)
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
            app[BODY_BUDGET].give_back(request)
    # A streamed response sets its own before it starts; a signed one has it already.
    if not response.prepared and REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = request_id
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    app[METRICS].observe(route, response.status, time.perf_counter() - started_s)
    return response


def signed_json(
    request: web.Request, merchant: Merchant, payload: object, *, replayed: bool = False
) -> web.Response:
    """JSON signed with the merchant's secrets (one v1 per live key)."""
    body = orjson.dumps(payload)
    signature = sign_payload(list(merchant.keys.values()), body, int(time.time()))
    # Every header in one dict: cheaper than a content type to check and headers added one by
    # one (the middleware adds X-Request-Id only where it is missing).
    headers = {
        "Content-Type": JSON_TYPE,
        SIGNATURE_HEADER: signature,
        REQUEST_ID_HEADER: request[REQUEST_ID],
    }
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    return web.Response(body=body, headers=headers)


def merchant_response(request: web.Request, result: PaymentResult | RefundResult) -> web.Response:
    merchant = engine_of(request).merchants[result.merchant_id]
    return signed_json(request, merchant, result.to_json(), replayed=result.replayed)


def single_header(request: web.Request, name: str, code: str, status: int) -> str | None:
    """A header sent at most once (None when absent). Two are refused (`code`, `status`): which
    one counts would be a choice two readers of the request could make differently."""
    values = request.headers.getall(name, ())
    if len(values) > 1:
        raise RequestError(code, f"{name} appears more than once", status)
    return values[0] if values else None


def idempotency_key(request: web.Request) -> str | None:
    return single_header(request, IDEMPOTENCY_HEADER, "invalid_request", 400)


def signed_request(request: web.Request, body: bytes) -> SignedRequest:
    """What the request's signature must cover: its target, body and Idempotency-Key."""
    header = single_header(request, SIGNATURE_HEADER, MalformedSignatureError.code, 401)
    return SignedRequest(header, request.method, request.path_qs, body, idempotency_key(request))


def check_signature_header(request: web.Request) -> None:
    """What can refuse a request (401) before its body is read: a missing, repeated or
    malformed signature header, a stale timestamp, an unknown key id. A stranger cannot make the
    server read a large body."""
    header = single_header(request, SIGNATURE_HEADER, MalformedSignatureError.code, 401)
    try:
        signature = parse_request_header(header)
        check_timestamp(signature.timestamp_s, int(time.time()))
    except SignatureError as error:
        raise RequestError(error.code, str(error), 401) from None
    if signature.kid not in engine_of(request).merchants.by_kid:
        raise RequestError(UnknownKeyError.code, f"unknown key id {signature.kid!r}", 401)


async def signed_reader(request: web.Request, body: bytes | None = None) -> Merchant:
    """The merchant of a request checked outside the pipeline: a read (its body is read here)
    or a whole batch (`body`, read by the caller)."""
    if body is None:
        body = await read_body(request, BODY_BYTES_MAX)
    engine = engine_of(request)
    signed = signed_request(request, body)
    [verdict] = verify_requests(engine.merchants.ring, [signed], now_s=int(time.time()))
    if isinstance(verdict, SignatureError):
        raise RequestError(verdict.code, str(verdict), 401)
    return engine.merchants.by_kid[verdict]


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
    check_signature_header(request)
    body = await read_body(request, BATCH_BODY_BYTES_MAX)
    merchant = await signed_reader(request, body)
    lines = body.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if len(lines) > BATCH_LINES_MAX:
        raise RequestError("batch_too_large", f"at most {BATCH_LINES_MAX} lines", 413)
    engine = engine_of(request)
    response = web.StreamResponse(
        headers={"Content-Type": NDJSON_TYPE, REQUEST_ID_HEADER: request[REQUEST_ID]}
    )
    await response.prepare(request)
    signed = bytearray()
    groups = BatchGroups(engine, merchant, lines)
    try:
        for number in range(groups.count):
            try:
                answers = await groups.next_answers()
            except EngineFailedError:
                # The stream has started: say so in-band and stop; no signature line ends it.
                error = {"code": "unavailable", "message": "the engine has stopped"}
                error_line = orjson.dumps({"object": "error", "error": error}) + b"\n"
                await answer_part(request, response.write(error_line))
                return response
            chunk = b"".join(
                batch_line(number * BATCH_GROUP_LEN + offset, answer) + b"\n"
                for offset, answer in enumerate(answers)
            )
            signed += chunk
            await answer_part(request, response.write(chunk))
    finally:
        await groups.abandon()
    signature = sign_payload(list(merchant.keys.values()), bytes(signed), int(time.time()))
    signature_line = orjson.dumps({"object": "signature", "signature": signature}) + b"\n"
    await answer_part(request, response.write(signature_line))
    await answer_part(request, response.write_eof())
    return response


async def answer_part(request: web.Request, writing: Awaitable[None]) -> None:
    """Writes part of a streamed answer (`response.write(...)`). A client that has not taken it
    within the answer write timeout is cut off: the handler stops, and gives back the body's
    share and its lines."""
    timeout_s = request.app[LIMITS].answer_write_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            await writing
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError(f"the client took no answer for {timeout_s} s") from None


class BatchGroups:
    """A batch's lines go to the engine a group at a time, at most BATCH_GROUPS_AHEAD groups
    ahead of the answers being written: a few large batches cannot fill the engine's queue (the
    excess would be answered "overloaded"), and a client that goes away stops the rest."""

    def __init__(self, engine: Engine, merchant: Merchant, lines: list[bytes]) -> None:
        self.engine = engine
        self.merchant = merchant
        self.lines = lines
        self.count = -(-len(lines) // BATCH_GROUP_LEN)
        self.submitted = 0
        self.pending: deque[asyncio.Future[list[Any]]] = deque()
        while self.submitted < min(self.count, BATCH_GROUPS_AHEAD):
            self._submit_next()

    def _submit_next(self) -> None:
        start = self.submitted * BATCH_GROUP_LEN
        group = self.lines[start : start + BATCH_GROUP_LEN]
        self.pending.append(
            asyncio.ensure_future(self.engine.submit_authenticated(self.merchant, group))
        )
        self.submitted += 1

    async def next_answers(self) -> list[Any]:
        answers = await self.pending.popleft()
        if self.submitted < self.count:
            self._submit_next()
        return answers

    async def abandon(self) -> None:
        """Stops waiting for the groups still in the engine (it finishes them regardless)."""
        for group in self.pending:
            group.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)


async def get_payment(request: web.Request) -> web.Response:
    merchant = await signed_reader(request)
    payment_id = request.match_info["payment_id"]
    result = await engine_of(request).payment_anywhere(payment_id)
    if result is None or result.merchant_id != merchant.id:
        raise RequestError("not_found", f"no payment {payment_id}", 404)
    return merchant_response(request, result)


async def list_payments(request: web.Request) -> web.Response:
    """`GET /v1/payments?limit=&starting_after=&ending_before=&status=&payer=&created_gte=
    &created_lt=`: the merchant's payments, newest first (Stripe's list), from the history
    database; with `order_id`, its payments for that order, oldest first (from memory)."""
    merchant = await signed_reader(request)
    if "order_id" in request.query:
        return await payments_for_order(request, merchant)
    query = request.query
    queries.only(query, queries.PAYMENT_LIST_NAMES)
    limit = queries.page_len(query)
    cursors = queries.cursors(query, payment_lsn, "a payment")
    filters = queries.payment_filters(query)
    history = await caught_up_history(request)
    page = await from_history(history.payments(merchant.id, limit, cursors, filters))
    listed: dict[str, Any] = {
        "object": "list",
        "data": [payment.to_json() for payment in page.items],
        "has_more": page.has_more,
    }
    if page.scanned_to is not None:
        listed["scanned_to"] = payment_id(page.scanned_to)
    return signed_json(request, merchant, listed)


async def payments_for_order(request: web.Request, merchant: Merchant) -> web.Response:
    """`GET /v1/payments?order_id=`: the merchant's payments for one order, oldest first."""
    order_id = request.query.get("order_id")
    if not order_id:
        raise RequestError("invalid_request", "order_id: the query parameter is required")
    payments = await engine_of(request).payments_for_order_anywhere(merchant.id, order_id)
    return signed_json(
        request, merchant, {"object": "list", "data": [p.to_json() for p in payments]}
    )


async def caught_up_history(request: web.Request) -> HistoryReads:
    """The history reads, once the database holds every record durable now: a result
    acknowledged before the request is in the answer. 503 while the projector catches up."""
    engine = engine_of(request)
    if engine.history is None:
        raise RequestError(
            "history_unavailable", "this server keeps no history database ([history])", 503
        )
    if not await engine.history_caught_up(HISTORY_CATCH_UP_TIMEOUT_S):
        raise RequestError("history_catching_up", "history is catching up; retry shortly", 503)
    return request.app[HISTORY]


async def from_history(reading: Awaitable[T]) -> T:
    """A read's answer; a parameter it cannot answer is 400, a database it cannot read 503."""
    try:
        return await reading
    except HistoryQueryError as error:
        raise RequestError("invalid_request", str(error)) from None
    except HistoryUnavailableError as error:
        log.error("history read failed: %s", error)
        raise RequestError(
            "history_unavailable", "the history database cannot be read; retry shortly", 503
        ) from None


async def list_refunds(request: web.Request) -> web.Response:
    """`GET /v1/payments/{id}/refunds?limit=&starting_after=&ending_before=`: the refunds of one
    of the merchant's payments, declined ones included, newest first (Stripe's list)."""
    merchant = await signed_reader(request)
    payment_id = request.match_info["payment_id"]
    engine = engine_of(request)
    payment = await engine.payment_anywhere(payment_id)
    if payment is None or payment.merchant_id != merchant.id:
        raise RequestError("not_found", f"no payment {payment_id}", 404)
    cursors = {name: refund_cursor(request, name) for name in ("starting_after", "ending_before")}
    if engine.payment(payment_id) is None:  # memory forgot it, and its older refunds
        return await refunds_from_history(request, merchant, payment_id, cursors)
    lsns = engine.refund_lsns(payment_id)
    try:
        page = lists.newest_first(lsns, page_len(request), **cursors)
    except ValueError:
        raise RequestError(
            "invalid_request",
            f"starting_after and ending_before: one refund of {payment_id}, not both",
        ) from None
    data = [engine.results[lsn].to_json() for lsn in page.items]
    return signed_json(
        request, merchant, {"object": "list", "data": data, "has_more": page.has_more}
    )


async def refunds_from_history(
    request: web.Request, merchant: Merchant, payment_id: str, cursors: dict[str, int | None]
) -> web.Response:
    """A payment's refunds read from history.db: memory no longer holds the payment."""
    lsn = payment_lsn(payment_id)
    if lsn is None:
        raise RequestError("not_found", f"no payment {payment_id}", 404)
    history = await caught_up_history(request)
    page = await from_history(
        history.refunds(merchant.id, lsn, page_len(request), Cursors(**cursors))
    )
    data = [refund.to_json() for refund in page.items]
    return signed_json(
        request, merchant, {"object": "list", "data": data, "has_more": page.has_more}
    )


def refund_cursor(request: web.Request, name: str) -> int | None:
    """The LSN of the refund id in query parameter `name`, if given."""
    text = request.query.get(name)
    if text is None:
        return None
    lsn = refund_lsn(text)
    if lsn is None:
        raise RequestError("invalid_request", f"{name}: not a refund id: {text!r}")
    return lsn


async def signed_submission(request: web.Request) -> PaymentResult | RefundResult:
    if request.content_type != JSON_TYPE and request.can_read_body:
        raise RequestError("unsupported_media_type", f"send {JSON_TYPE}", 415)
    body = await read_body(request, BODY_BYTES_MAX)
    return await engine_of(request).submit(signed_request(request, body))


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


async def admin_body(
    request: web.Request, fields: dict[str, type], optional: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    """An admin JSON object with these fields (and types), all required but `optional` (which
    may be absent or null), read by the strict parser of signed bodies: a duplicate key, NaN or
    a fraction where an integer is due is refused, never resolved."""
    body = _core.parse_json_object(await read_body(request, BODY_BYTES_MAX))
    if isinstance(body, str):
        raise RequestError("invalid_request", body)
    for name, kind in fields.items():
        if name in optional and body.get(name) is None:  # absent or null
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
    response = web.Response(body=orjson.dumps(payload), content_type=JSON_TYPE)
    if result.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


async def admin_open_account(request: web.Request) -> web.Response:
    require_admin(request)
    body = await admin_body(
        request, {"id": str, "currency": str, "overdraft": bool}, optional={"overdraft"}
    )
    engine = engine_of(request)
    overdraft = body.get("overdraft", False)
    return admin_json(await engine.open_account(body["id"], body["currency"], overdraft=overdraft))


class MoveMoney(Protocol):
    """`Engine.deposit` or `Engine.withdraw`."""

    def __call__(
        self, account_id: str, amount: int, currency: str, *, idempotency_key: str | None
    ) -> Awaitable[AdminResult]: ...


async def admin_move_money(request: web.Request, move: MoveMoney) -> web.Response:
    """A deposit or withdrawal; an Idempotency-Key makes its retries answer the first result."""
    require_admin(request)
    body = await admin_body(request, {"amount": int, "currency": str})
    account_id = request.match_info["account_id"]
    key = idempotency_key(request)
    return admin_json(await move(account_id, body["amount"], body["currency"], idempotency_key=key))


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


def entry_json(account_id: str, entry: Entry) -> dict[str, Any]:
    """An entry of an account statement; `operation` is the id of the payment or refund it
    belongs to (deposits and withdrawals have none)."""
    operations = {"payment": payment_id, "refund": refund_id}
    name = operations.get(entry.kind)
    return {
        "object": "entry",
        "id": entry_id(entry.lsn),
        "account_id": account_id,
        "kind": entry.kind,
        "amount": entry.amount,
        "currency": entry.currency,
        "balance_after": entry.balance_after,
        "operation": None if name is None else name(entry.lsn),
        "created": entry.created,
    }


async def admin_list_entries(request: web.Request) -> web.Response:
    """`GET /v1/admin/accounts/{id}/entries?limit=&starting_after=&ending_before=`: the
    account statement, every change of its balance newest first, from the history database."""
    require_admin(request)
    account_id = request.match_info["account_id"]
    query = request.query
    queries.only(query, ("limit", *queries.CURSOR_NAMES))
    limit = queries.page_len(query)
    cursors = queries.cursors(query, entry_lsn, "an entry")
    history = await caught_up_history(request)
    if not await from_history(history.account_exists(account_id)):
        raise RequestError("not_found", f"no account {account_id}", 404)
    page = await from_history(history.entries(account_id, limit, cursors))
    data = [entry_json(account_id, entry) for entry in page.items]
    return admin_response({"object": "list", "data": data, "has_more": page.has_more})


def merchant_json(merchant: Merchant) -> dict[str, Any]:
    """A merchant as admins see it: its kids, never its secrets."""
    return {
        "object": "merchant",
        "id": merchant.id,
        "settlement_account": merchant.settlement_account,
        "webhook_url": merchant.webhook_url,
        "kids": sorted(merchant.keys),
    }


def key_json(merchant_id: str, kid: str, secret: bytes) -> dict[str, Any]:
    return {"object": "key", "kid": kid, "secret": secret.hex(), "merchant_id": merchant_id}


def admin_response(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type=JSON_TYPE)


async def admin_create_merchant(request: web.Request) -> web.Response:
    """A merchant with its first key; the key's secret and the webhook secret are shown once."""
    require_admin(request)
    fields: dict[str, type] = {"id": str, "settlement_account": str, "webhook_url": str}
    body = await admin_body(request, fields, optional={"webhook_url"})
    merchant = await engine_of(request).create_merchant(
        body["id"], body["settlement_account"], body.get("webhook_url")
    )
    [(kid, secret)] = merchant.keys.items()
    payload = {
        **merchant_json(merchant),
        "key": key_json(merchant.id, kid, secret),
        "webhook_secret": merchant.webhook_secret.hex() if merchant.webhook_secret else None,
    }
    return admin_response(payload, 201)


def merchant_of(request: web.Request) -> Merchant:
    merchant_id = request.match_info["merchant_id"]
    merchant = engine_of(request).merchants.get(merchant_id)
    if merchant is None:
        raise RequestError("not_found", f"no merchant {merchant_id}", 404)
    return merchant


async def admin_get_merchant(request: web.Request) -> web.Response:
    require_admin(request)
    return admin_response(merchant_json(merchant_of(request)))


async def admin_add_key(request: web.Request) -> web.Response:
    """Rotation, step one: a new key, valid at once; the old ones stay valid until revoked."""
    require_admin(request)
    merchant_id = request.match_info["merchant_id"]
    kid, secret = await engine_of(request).add_key(merchant_id)
    return admin_response(key_json(merchant_id, kid, secret), 201)


async def admin_revoke_key(request: web.Request) -> web.Response:
    """Rotation, step two: the old key stops working."""
    require_admin(request)
    merchant_id, kid = request.match_info["merchant_id"], request.match_info["kid"]
    await engine_of(request).revoke_key(merchant_id, kid)
    payload = {"object": "key", "kid": kid, "merchant_id": merchant_id, "revoked": True}
    return admin_response(payload)


async def admin_rotate_webhook_secret(request: web.Request) -> web.Response:
    """Webhook secret rotation, step one: deliveries carry a v1 for the new secret and one for
    the old; the new secret is shown only here."""
    require_admin(request)
    merchant_id = request.match_info["merchant_id"]
    secret = await engine_of(request).rotate_webhook_secret(merchant_id)
    payload = {
        "object": "webhook_secret",
        "merchant_id": merchant_id,
        "secret": secret.hex(),
        "previous_valid": True,
    }
    return admin_response(payload, 201)


async def admin_revoke_previous_webhook_secret(request: web.Request) -> web.Response:
    """Step two, once the merchant verifies with the new secret: the old one stops signing."""
    require_admin(request)
    merchant_id = request.match_info["merchant_id"]
    await engine_of(request).revoke_previous_webhook_secret(merchant_id)
    payload = {"object": "webhook_secret", "merchant_id": merchant_id, "previous_valid": False}
    return admin_response(payload)


async def admin_grant_mandate(request: web.Request) -> web.Response:
    """`POST /v1/admin/accounts/{id}/mandates`: the payer account lets a merchant debit it."""
    require_admin(request)
    fields: dict[str, type] = {
        "merchant_id": str,
        "amount_max_per_payment": int,
        "amount_max_per_day": int,
        "expires_at": int,
    }
    body = await admin_body(request, fields, optional={"amount_max_per_day", "expires_at"})
    mandate = await engine_of(request).grant_mandate(
        request.match_info["account_id"],
        body["merchant_id"],
        body["amount_max_per_payment"],
        amount_max_per_day=body.get("amount_max_per_day"),
        expires_at_s=body.get("expires_at"),
    )
    return admin_response(mandate.to_json(int(time.time())), 201)


async def admin_list_mandates(request: web.Request) -> web.Response:
    """The account's mandates, oldest first, revoked and expired ones included."""
    require_admin(request)
    account_id = request.match_info["account_id"]
    mandates = engine_of(request).mandates_of(account_id)
    if mandates is None:
        raise RequestError("not_found", f"no account {account_id}", 404)
    now_s = int(time.time())
    return admin_response({"object": "list", "data": [m.to_json(now_s) for m in mandates]})


async def admin_revoke_mandate(request: web.Request) -> web.Response:
    require_admin(request)
    mandate = await engine_of(request).revoke_mandate(
        request.match_info["account_id"], request.match_info["mandate_id"]
    )
    return admin_response(mandate.to_json(int(time.time())))


# Events per page of `GET /v1/events`, and events per admin redelivery call.
EVENTS_PAGE_LEN_DEFAULT = 100
EVENTS_PAGE_LEN_MAX = 1000
REDELIVERY_LEN_MAX = 10_000


async def event_with_delivery(engine: Engine, lsn: int) -> dict[str, Any]:
    event = await engine.event_anywhere(lsn)
    if event is None:
        raise RuntimeError(f"event {lsn} vanished")
    return {**event, "delivery": await engine.delivery_json_anywhere(lsn)}


async def known_event(engine: Engine, event_id: str, merchant_id: str | None = None) -> int:
    """The LSN of an event (of this merchant, when given), or 404."""
    lsn = event_lsn(event_id)
    result = None if lsn is None else await engine.durable_result(lsn)
    if lsn is None or result is None or merchant_id not in (None, result.merchant_id):
        raise RequestError("not_found", f"no event {event_id}", 404)
    return lsn


def page_len(request: web.Request) -> int:
    return queries.page_len(request.query, EVENTS_PAGE_LEN_DEFAULT, EVENTS_PAGE_LEN_MAX)


async def list_events(request: web.Request) -> web.Response:
    """`GET /v1/events?after=<event id>&limit=`: the merchant's events, oldest first."""
    merchant = await signed_reader(request)
    after = request.query.get("after")
    after_lsn = 0 if after is None else event_lsn(after)
    if after_lsn is None:
        raise RequestError("invalid_request", f"after: not an event id: {after!r}")
    engine = engine_of(request)
    if engine.forgot_events_after(after_lsn):
        return await events_from_history(request, merchant, after_lsn)
    lsns, has_more = engine.outbox.events_after(merchant.id, after_lsn, page_len(request))
    events = [engine.event(lsn) for lsn in lsns]
    return signed_json(request, merchant, {"object": "list", "data": events, "has_more": has_more})


async def events_from_history(
    request: web.Request, merchant: Merchant, after_lsn: int
) -> web.Response:
    """A page of events that begins before the results memory holds: from history.db."""
    history = await caught_up_history(request)
    events, has_more = await from_history(
        history.events_after(merchant.id, after_lsn, page_len(request))
    )
    data = [event_json(event.lsn, event.result) for event in events]
    return signed_json(request, merchant, {"object": "list", "data": data, "has_more": has_more})


async def get_event(request: web.Request) -> web.Response:
    """`GET /v1/events/{id}`: the event and its delivery attempts."""
    merchant = await signed_reader(request)
    engine = engine_of(request)
    lsn = await known_event(engine, request.match_info["event_id"], merchant.id)
    return signed_json(request, merchant, await event_with_delivery(engine, lsn))


async def redeliver(engine: Engine, lsns: list[int]) -> None:
    for lsn in lsns:
        result = await engine.durable_result(lsn)
        if result is None:
            raise RuntimeError(f"event {lsn} vanished")
        merchant = engine.merchants.get(result.merchant_id)
        if merchant is None or merchant.webhook_url is None:
            raise RequestError("no_webhook_url", "the merchant has no webhook URL", 409)
    await engine.redeliver(lsns)


async def admin_redeliver_event(request: web.Request) -> web.Response:
    require_admin(request)
    engine = engine_of(request)
    lsn = await known_event(engine, request.match_info["event_id"])
    await redeliver(engine, [lsn])
    return admin_response(await event_with_delivery(engine, lsn), 202)


async def admin_redeliver_failed(request: web.Request) -> web.Response:
    """Redelivers the merchant's failed events (up to REDELIVERY_LEN_MAX per call)."""
    require_admin(request)
    merchant = merchant_of(request)
    engine = engine_of(request)
    lsns = (await engine.failed_anywhere(merchant.id))[:REDELIVERY_LEN_MAX]
    if lsns:
        await redeliver(engine, lsns)
    payload = {"object": "redelivery", "merchant_id": merchant.id, "count": len(lsns)}
    return admin_response(payload, 202)


async def readyz(request: web.Request) -> web.Response:
    """Ready once recovered, and not after a fail-stop: a load balancer then routes elsewhere."""
    if engine_of(request).failed is not None:
        raise EngineFailedError("the engine has stopped")
    return web.json_response({"status": "ready"}, dumps=lambda data: orjson.dumps(data).decode())


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


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
            opened = Engine.open(
                settings.data_dir,
                config=settings.config,
                fsync=settings.fsync,
                idempotency_capacity=settings.idempotency_capacity,
                history=settings.history,
                history_policy=settings.history_policy,
            )
            engine = await engines.enter_async_context(opened)
            if settings.on_first_start is not None and not engine.ledger.has_accounts:
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
        app[HISTORY].close()


async def webhook_dispatcher(app: web.Application) -> AsyncIterator[None]:
    """Delivers events in the background once recovery has finished; stops (letting attempts in
    flight finish) before the engine closes, since cleanup runs in reverse order."""
    policy = app[SETTINGS].delivery
    runtime = app[RUNTIME]
    connector = aiohttp.TCPConnector(
        limit=policy.in_flight_max, limit_per_host=policy.in_flight_per_merchant_max
    )
    async with aiohttp.ClientSession(connector=connector) as session:

        async def dispatch() -> None:
            await runtime.settled.wait()
            if runtime.engine is not None:
                runtime.dispatcher = Dispatcher(runtime.engine, policy, session)
                await runtime.dispatcher.run()

        task = asyncio.create_task(dispatch(), name="instapay-webhooks")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def create_app(settings: ServerSettings) -> web.Application:
    app = web.Application(
        client_max_size=BODY_BYTES_MAX,
        middlewares=[every_request],
    )
    app[SETTINGS] = settings
    app[LIMITS] = settings.limits
    app[BODY_BUDGET] = BodyBudget(settings.limits.body_bytes_in_flight_max)
    runtime = Runtime()
    app[RUNTIME] = runtime
    app[METRICS] = Metrics(lambda: runtime.engine, lambda: runtime.dispatcher)
    # Connects on its first read (the projector creates the database when the engine opens).
    app[HISTORY] = HistoryReader(history_path(settings.data_dir))
    app.cleanup_ctx.append(engine_lifetime)
    app.cleanup_ctx.append(webhook_dispatcher)
    app.router.add_post("/v1/payments", create_payment_or_refund)
    app.router.add_post(BATCH_PATH, create_payments_batch)
    app.router.add_post("/v1/payments/{payment_id}/refunds", create_payment_or_refund)
    app.router.add_get("/v1/payments/{payment_id}/refunds", list_refunds)
    app.router.add_get("/v1/payments", list_payments)
    app.router.add_get("/v1/payments/{payment_id}", get_payment)
    app.router.add_post("/v1/admin/accounts", admin_open_account)
    app.router.add_get("/v1/admin/accounts/{account_id}", admin_balance)
    app.router.add_post("/v1/admin/accounts/{account_id}/deposits", admin_deposit)
    app.router.add_post("/v1/admin/accounts/{account_id}/withdrawals", admin_withdraw)
    app.router.add_post("/v1/admin/accounts/{account_id}/mandates", admin_grant_mandate)
    app.router.add_get("/v1/admin/accounts/{account_id}/mandates", admin_list_mandates)
    app.router.add_get("/v1/admin/accounts/{account_id}/entries", admin_list_entries)
    app.router.add_delete(
        "/v1/admin/accounts/{account_id}/mandates/{mandate_id}", admin_revoke_mandate
    )
    app.router.add_post("/v1/admin/merchants", admin_create_merchant)
    app.router.add_get("/v1/admin/merchants/{merchant_id}", admin_get_merchant)
    app.router.add_post("/v1/admin/merchants/{merchant_id}/keys", admin_add_key)
    app.router.add_delete("/v1/admin/merchants/{merchant_id}/keys/{kid}", admin_revoke_key)
    app.router.add_post(
        "/v1/admin/merchants/{merchant_id}/events/redeliver", admin_redeliver_failed
    )
    app.router.add_post(
        "/v1/admin/merchants/{merchant_id}/webhook-secret", admin_rotate_webhook_secret
    )
    app.router.add_delete(
        "/v1/admin/merchants/{merchant_id}/webhook-secret/previous",
        admin_revoke_previous_webhook_secret,
    )
    app.router.add_post("/v1/admin/events/{event_id}/redeliver", admin_redeliver_event)
    app.router.add_get("/v1/events", list_events)
    app.router.add_get("/v1/events/{event_id}", get_event)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_spec)
    return app
