"""Intake: a batch's signed requests verified (one native call), routed and parsed (one native
call per kind) into the operations the state applies; each refused request is answered here."""

from __future__ import annotations

from instapay import _core, protocol
from instapay.engine.jobs import Job
from instapay.engine.ops import Op, PaymentOp, RefundOp, idempotency_key
from instapay.engine.state import State
from instapay.model import Merchant, RequestError
from instapay.rules import check_client_key
from instapay.signing import SignatureError, SignedRequest, verify_requests


def parse(state: State, jobs: list[Job], now_s: int) -> list[tuple[Job, Op]]:
    """Verifies, routes and parses the batch; refused jobs are answered here."""
    signed: list[tuple[Job, SignedRequest]] = []
    for job in jobs:
        if job.request is None or job.merchant:
            continue
        try:
            # First: a key no client can sign (not printable ASCII, too long) is named as
            # such, not reported as the signature mismatch it would cause.
            if job.request.idempotency_key is not None:
                check_client_key(job.request.idempotency_key)
        except RequestError as error:
            job.answer(error)
            continue
        signed.append((job, job.request))
    verdicts = verify_requests(
        state.merchants.ring, [request for _, request in signed], now_s=now_s
    )
    payments = [(job, job.merchant) for job in jobs if job.merchant is not None]
    refunds: list[tuple[Job, Merchant, str]] = []
    for (job, request), verdict in zip(signed, verdicts, strict=True):
        try:
            if isinstance(verdict, SignatureError):
                raise RequestError(verdict.code, str(verdict), 401)
            merchant = state.merchants.by_kid[verdict]
            route = protocol.route(request)
        except RequestError as error:
            job.answer(error)
            continue
        if route is None:
            payments.append((job, merchant))
        else:
            refunds.append((job, merchant, route))
    parsed = dict(_parse_payments(state, payments) + _parse_refunds(state, refunds))
    ops: list[tuple[Job, Op]] = []
    for job in jobs:
        if job.control is not None:
            ops.append((job, job.control))
        elif (op := parsed.get(id(job))) is not None:
            ops.append((job, op))
    return ops


def _parse_payments(state: State, payments: list[tuple[Job, Merchant]]) -> list[tuple[int, Op]]:
    fields = _core.parse_payment_bodies([job.request.body for job, _ in payments if job.request])
    parsed: list[tuple[int, Op]] = []
    for (job, merchant), item in zip(payments, fields, strict=True):
        if isinstance(item, str):
            job.answer(RequestError("invalid_request", item))
            continue
        merchant_id, order_id, payer, amount, currency, description, metadata, fingerprint = item
        if merchant_id != merchant.id:
            job.answer(
                RequestError(
                    "merchant_mismatch",
                    f"merchant_id {merchant_id!r} is not the merchant of the signing key",
                    403,
                ),
            )
            continue
        client_key = job.request.idempotency_key if job.request else None
        scope = f"k:{client_key}" if client_key else f"o:{order_id}"
        key = idempotency_key(merchant.id, scope)
        op = PaymentOp(
            merchant, order_id, payer, amount, currency, description, metadata, key, fingerprint
        )
        parsed.append((id(job), op))
    return parsed


def _parse_refunds(state: State, refunds: list[tuple[Job, Merchant, str]]) -> list[tuple[int, Op]]:
    fields = _core.parse_refund_bodies([job.request.body for job, _, _ in refunds if job.request])
    parsed: list[tuple[int, Op]] = []
    for (job, merchant, paid), item in zip(refunds, fields, strict=True):
        client_key = job.request.idempotency_key if job.request else None
        if isinstance(item, str):
            job.answer(RequestError("invalid_request", item))
            continue
        if client_key is None:
            # A refund has no natural scope (a payment may be refunded in parts): its signed
            # key is the scope, without which every resend of a captured refund refunds again.
            message = "a refund needs an Idempotency-Key, covered by a v2 signature"
            job.answer(RequestError("idempotency_key_required", message))
            continue
        if not state.refundable_by(paid, merchant):
            job.answer(RequestError("not_found", f"no refundable payment {paid}", 404))
            continue
        amount, reason, fingerprint = item
        key = idempotency_key(merchant.id, f"r:{paid}:{client_key}")
        parsed.append((id(job), RefundOp(merchant, paid, amount, reason, key, fingerprint)))
    return parsed
