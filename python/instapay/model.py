"""What the engine takes and gives back: results, errors and their API codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from instapay import _core


class Status(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Failure(StrEnum):
    """Why a processed operation was declined. A decline is a stored, replayable result."""

    ACCOUNT_NOT_FOUND = "account_not_found"
    ACCOUNT_EXISTS = "account_exists"
    CURRENCY_MISMATCH = "currency_mismatch"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    # The amount would take a balance beyond BALANCE_MAX.
    AMOUNT_TOO_LARGE = "amount_too_large"
    PAYER_IS_MERCHANT = "payer_is_merchant"
    PAYMENT_NOT_FOUND = "payment_not_found"
    PAYMENT_NOT_REFUNDABLE = "payment_not_refundable"
    REFUND_EXCEEDS_PAYMENT = "refund_exceeds_payment"
    # Consent (see instapay.mandates): the payer is a merchant's settlement account, which never
    # pays; or no mandate of the payer for this merchant covers the payment.
    PAYER_NOT_AUTHORIZED = "payer_not_authorized"
    MANDATE_MISSING = "mandate_missing"
    MANDATE_EXPIRED = "mandate_expired"
    MANDATE_AMOUNT_EXCEEDED = "mandate_amount_exceeded"
    MANDATE_DAILY_LIMIT_EXCEEDED = "mandate_daily_limit_exceeded"


# Results are named tuples: immutable like a frozen dataclass, and five times cheaper to build,
# which counts at hundreds of thousands per second.
class PaymentResult(NamedTuple):
    id: str
    merchant_id: str
    order_id: str
    payer: str
    amount: int
    currency: str
    status: Status
    failure_code: Failure | None
    created_s: int
    description: str | None = None
    metadata: dict[str, str] | None = None
    # What its durable refunds gave back so far. The engine stores results with 0 and fills in
    # the running total when a payment is read or replayed (Engine.payment): one source of truth.
    amount_refunded: int = 0
    # True when this answer is a stored result returned again for a retried request.
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "payment",
            "merchant_id": self.merchant_id,
            "order_id": self.order_id,
            "payer": self.payer,
            "amount": self.amount,
            "amount_refunded": self.amount_refunded,
            "currency": self.currency,
            "status": self.status.value,
            "failure_code": self.failure_code.value if self.failure_code else None,
            "created": self.created_s,
            "description": self.description,
            "metadata": self.metadata or {},
        }


class RefundResult(NamedTuple):
    id: str
    payment_id: str
    merchant_id: str
    amount: int
    currency: str
    status: Status
    failure_code: Failure | None
    created_s: int
    reason: str | None = None
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "refund",
            "payment_id": self.payment_id,
            "merchant_id": self.merchant_id,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status.value,
            "failure_code": self.failure_code.value if self.failure_code else None,
            "created": self.created_s,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class AdminResult:
    """The outcome of an account operation (open, deposit, withdraw)."""

    account_id: str
    status: Status
    failure_code: Failure | None
    balance: int
    # True when this answer is a stored result returned again for a retried request.
    replayed: bool = False


Result = PaymentResult | RefundResult | AdminResult


class Recorded(NamedTuple):
    """The answer to a change that has no result of its own (a delivery attempt, a redelivery):
    it is durable at this LSN."""

    lsn: int


class RequestError(Exception):
    """A request refused before anything was applied: nothing is stored, a fixed retry is fine.

    `code` is the API error code, `http_status` the status the HTTP layer answers with.
    """

    def __init__(self, code: str, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


class Overloaded(Exception):  # noqa: N818 (the name the issue and the API use)
    """The engine's queue (or idempotency index) is full; retry later (HTTP 503)."""


class EngineFailedError(Exception):
    """The engine stopped after a write or fsync error (fail-stop): nothing more is acknowledged."""


@dataclass(frozen=True, slots=True)
class Merchant:
    """A merchant: where its payments settle and the kids it signs with."""

    id: str
    settlement_account: str
    # kid -> secret; never printed (repr=False), like the webhook secret.
    keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    # Where the merchant's notifications are POSTed, signed with `webhook_secret`; without a URL
    # the merchant polls `GET /v1/events`.
    webhook_url: str | None = None
    webhook_secret: bytes | None = field(default=None, repr=False)
    # While a webhook secret is rotated: the old one, which signs deliveries too (a second v1)
    # until it is revoked, so the merchant can switch its verifier without missing one.
    previous_webhook_secret: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    merchants: tuple[Merchant, ...] = ()
    # A merchant's share of the idempotency index, in percent of its capacity (with a floor of
    # IDEMPOTENCY_TENANT_KEYS_MIN keys). Beyond it a merchant borrows only while one share stays
    # free: one merchant cannot deny service to others, and a lone one uses all but a share.
    idempotency_share_percent: int = _core.IDEMPOTENCY_TENANT_SHARE_PERCENT_DEFAULT
