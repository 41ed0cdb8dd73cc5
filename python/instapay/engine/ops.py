"""What the pipeline applies (the commands of `handlers`): a parsed payment or refund, or a
control change an admin (or the webhook dispatcher) makes; and the builders that check them."""

from __future__ import annotations

from typing import NamedTuple

import orjson

from instapay import _core
from instapay.engine.records import Record, RecordType
from instapay.mandates import Mandate
from instapay.model import Merchant, Recorded, Result
from instapay.rules import check_account, check_amount, check_client_key

# The share of the idempotency index that keyed admin deposits and withdrawals count in: a name
# no merchant can have (ids have no spaces), so no merchant's keys crowd them out, nor theirs.
ADMIN_TENANT = " admin"


class AdminOp(NamedTuple):
    kind: RecordType
    account_id: str
    currency: str
    amount: int = 0
    overdraft: bool = False
    # A deposit or withdrawal sent with an Idempotency-Key: its scoped key and fingerprint.
    key: bytes | None = None
    fingerprint: bytes = b""


class MerchantOp(NamedTuple):
    merchant: Merchant


# A change an admin (or the webhook dispatcher) makes, in log order with the payments: an account
# change, a new merchant, or a change that is its own record (a key, a webhook secret, delivery
# attempts, a redelivery, a mandate).
ControlOp = AdminOp | MerchantOp | Record

Applied = Result | Merchant | Recorded | Mandate


class PaymentOp(NamedTuple):
    merchant: Merchant
    order_id: str
    payer: str
    amount: int
    currency: str
    description: str | None
    metadata: dict[str, str] | None
    key: bytes
    fingerprint: bytes


class RefundOp(NamedTuple):
    merchant: Merchant
    payment_id: str
    amount: int | None
    reason: str | None
    key: bytes | None
    fingerprint: bytes


Op = PaymentOp | RefundOp | ControlOp


def idempotency_key(merchant_id: str, scope: str) -> bytes:
    return f"{merchant_id}\x00{scope}".encode()


def money_op(
    kind: RecordType, account_id: str, amount: int, currency: str, client_key: str | None
) -> AdminOp:
    """A deposit or withdrawal; with a client key, scoped apart from every merchant's keys (no
    merchant id is empty) and fingerprinted by what it moves."""
    check_account(account_id, currency)
    check_amount(amount)
    if client_key is None:
        return AdminOp(kind, account_id, currency, amount)
    check_client_key(client_key)
    key = idempotency_key("", f"a:{client_key}")
    fingerprint = _core.sha256(orjson.dumps([kind, account_id, currency, amount]))
    return AdminOp(kind, account_id, currency, amount, key=key, fingerprint=fingerprint)
