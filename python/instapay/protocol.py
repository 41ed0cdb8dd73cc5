"""What clients and the server agree on: header names, content types, the signed endpoints'
paths, the ids that carry an LSN, and how a signed request is routed. Shared by the engine, the
HTTP layer, the SDK and the load harness; it imports nothing of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from instapay import _core
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


ENTRY_ID_PREFIX = "ent_"


def entry_id(lsn: int) -> str:
    """An account statement entry's id: its LSN (an account changes at most once per LSN)."""
    return f"{ENTRY_ID_PREFIX}{lsn}"


def entry_lsn(entry_id_: str) -> int | None:
    """The LSN an entry id names, or None when it names none."""
    return number_in_id(entry_id_, ENTRY_ID_PREFIX)


def route(request: SignedRequest) -> str | None:
    """None for a payment; the payment id for a refund. RequestError for anything else. The
    rule is the native one the batch stage routes by (`_core.route`, rust/machine/route.rs)."""
    answer = _core.route(request.method, request.path)
    if isinstance(answer, tuple):
        raise RequestError(*answer)
    return answer
