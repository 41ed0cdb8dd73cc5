"""What clients and the server agree on: header names, content types, the signed endpoints'
paths, the ids that carry an LSN, and how a signed request is routed. Shared by the engine, the
HTTP layer, the SDK and the load harness; it imports nothing of them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from instapay.ascii_digits import number_in_id
from instapay.model import RequestError

if TYPE_CHECKING:
    from instapay.signing import SignedRequest

SIGNATURE_HEADER: Final = "Instapay-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
REQUEST_ID_HEADER: Final = "X-Request-Id"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
JSON_TYPE: Final = "application/json"
NDJSON_TYPE: Final = "application/x-ndjson"

PAYMENTS_PATH = "/v1/payments"
BATCH_PATH = "/v1/payments/batch"
REFUNDS_PATH = re.compile(r"/v1/payments/(pay_[^/]+)/refunds")
PAYMENT_ID_PREFIX = "pay_"
REFUND_ID_PREFIX = "re_"


def payment_id(lsn: int) -> str:
    return f"{PAYMENT_ID_PREFIX}{lsn}"


def payment_lsn(payment_id_: str) -> int | None:
    """The LSN a payment id names, or None when it names none."""
    return number_in_id(payment_id_, PAYMENT_ID_PREFIX)


def refund_id(lsn: int) -> str:
    return f"{REFUND_ID_PREFIX}{lsn}"


def refund_lsn(refund_id_: str) -> int | None:
    """The LSN a refund id names, or None when it names none."""
    return number_in_id(refund_id_, REFUND_ID_PREFIX)


def route(request: SignedRequest) -> str | None:
    """None for a payment; the payment id for a refund. RequestError for anything else."""
    if request.method != "POST":
        raise RequestError("method_not_allowed", f"{request.method} is not accepted here", 405)
    if request.path == PAYMENTS_PATH:
        return None
    if (match := REFUNDS_PATH.fullmatch(request.path)) and payment_lsn(match.group(1)) is not None:
        return match.group(1)
    raise RequestError("not_found", f"no such endpoint: {request.path}", 404)
