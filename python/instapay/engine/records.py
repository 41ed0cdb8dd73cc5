"""The log's record types and how their payloads read: today positional JSON lists (mandate
records are JSON objects), each field named in `RECORD_FIELDS` for `instapay wal dump`."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from instapay.mandates import GRANT_RECORD_FIELDS, REVOCATION_RECORD_FIELDS
from instapay.model import Failure
from instapay.outbox import DeliveryOutcome


class RecordType(IntEnum):
    OPEN_ACCOUNT = 1
    DEPOSIT = 2
    WITHDRAW = 3
    PAYMENT = 4
    REFUND = 5
    MERCHANT_CREATED = 6
    KEY_ADDED = 7
    KEY_REVOKED = 8
    # Finished webhook delivery attempts, and admin redeliveries (see instapay.outbox).
    DELIVERIES = 9
    REDELIVERY = 10
    WEBHOOK_SECRET_ROTATED = 11
    PREVIOUS_WEBHOOK_SECRET_REVOKED = 12
    # Consent (instapay.mandates). These records are JSON objects with named fields.
    MANDATE_GRANTED = 13
    MANDATE_REVOKED = 14
    # A payment applied under the consent rules (same fields as PAYMENT, which is replayed by
    # the rules before consent, as it was applied).
    PAYMENT_WITH_CONSENT = 15


PAYMENT_RECORDS = frozenset((RecordType.PAYMENT, RecordType.PAYMENT_WITH_CONSENT))

MANDATE_RECORDS = frozenset((RecordType.MANDATE_GRANTED, RecordType.MANDATE_REVOKED))

CONTROL_RECORDS = frozenset(
    (
        RecordType.MERCHANT_CREATED,
        RecordType.KEY_ADDED,
        RecordType.KEY_REVOKED,
        RecordType.DELIVERIES,
        RecordType.REDELIVERY,
        RecordType.WEBHOOK_SECRET_ROTATED,
        RecordType.PREVIOUS_WEBHOOK_SECRET_REVOKED,
    )
)


ADMIN_RECORD_FIELDS = ("account_id", "currency", "amount", "overdraft", "failure_code")


# A deposit or withdrawal sent with an Idempotency-Key carries the key it reserved, before its
# failure code (see `logged_key`).
ADMIN_KEYED_RECORD_FIELDS = (*ADMIN_RECORD_FIELDS[:-1], "idempotency", "failure_code")


PAYMENT_RECORD_FIELDS = (
    "merchant_id",
    "order_id",
    "payer",
    "settlement_account",
    "amount",
    "currency",
    "description",
    "metadata",
    "created_s",
    "idempotency_key",
    "fingerprint",
    "failure_code",
)


# The fields of each positional record type, in logged order: `named` gives them to
# `instapay wal dump`. A DELIVERIES record is a list of outcomes, each with these fields. Mandate
# records are JSON objects that name their own fields.
RECORD_FIELDS: dict[RecordType, tuple[str, ...]] = {
    RecordType.OPEN_ACCOUNT: ADMIN_RECORD_FIELDS,
    RecordType.DEPOSIT: ADMIN_RECORD_FIELDS,
    RecordType.WITHDRAW: ADMIN_RECORD_FIELDS,
    RecordType.PAYMENT: PAYMENT_RECORD_FIELDS,
    RecordType.PAYMENT_WITH_CONSENT: PAYMENT_RECORD_FIELDS,
    RecordType.REFUND: (
        "payment_id",
        "merchant_id",
        "amount_requested",
        "reason",
        "created_s",
        "idempotency_key",
        "fingerprint",
        "amount",
        "failure_code",
    ),
    RecordType.MERCHANT_CREATED: (
        "merchant_id",
        "settlement_account",
        "webhook_url",
        "keys",
        "webhook_secret",
        "previous_webhook_secret",
    ),
    RecordType.KEY_ADDED: ("merchant_id", "kid", "secret"),
    RecordType.KEY_REVOKED: ("merchant_id", "kid"),
    RecordType.DELIVERIES: DeliveryOutcome._fields,
    RecordType.REDELIVERY: ("at_ms", "event_lsns"),
    RecordType.WEBHOOK_SECRET_ROTATED: ("merchant_id", "webhook_secret"),
    RecordType.PREVIOUS_WEBHOOK_SECRET_REVOKED: ("merchant_id",),
    RecordType.MANDATE_GRANTED: GRANT_RECORD_FIELDS,
    RecordType.MANDATE_REVOKED: REVOCATION_RECORD_FIELDS,
}


# Fields holding a secret (hex), or a map of key ids to secrets (`keys`).
SECRET_RECORD_FIELDS = frozenset({"secret", "webhook_secret", "previous_webhook_secret", "keys"})

SECRET_REDACTED = "<secret>"  # noqa: S105 (what a printed secret is replaced by)


def named(kind: RecordType, fields: list[Any] | dict[str, Any]) -> dict[str, Any]:
    """A record's fields by name (`RECORD_FIELDS`). Fields beyond the names (a record newer
    than this code) are only counted: one of them could be a secret."""
    if isinstance(fields, dict):
        return dict(fields)  # a record that names its own fields (mandates)
    names = RECORD_FIELDS.get(kind, ())
    if admin_keyed(kind, fields):
        names = ADMIN_KEYED_RECORD_FIELDS
    if kind == RecordType.DELIVERIES:
        return {"outcomes": [_named_fields(names, outcome) for outcome in fields]}
    return _named_fields(names, fields)


def _named_fields(names: tuple[str, ...], fields: list[Any]) -> dict[str, Any]:
    by_name = dict(zip(names, fields, strict=False))
    if len(fields) > len(names):
        by_name["unnamed_fields"] = len(fields) - len(names)
    return by_name


def redacted(kind: RecordType, fields: list[Any] | dict[str, Any]) -> dict[str, Any]:
    """A record's fields by name with its secrets replaced, for printing (`instapay wal dump`)."""
    by_name = named(kind, fields)
    for name in SECRET_RECORD_FIELDS & by_name.keys():
        value = by_name[name]
        if isinstance(value, dict):
            by_name[name] = dict.fromkeys(value, SECRET_REDACTED)
        elif value is not None:
            by_name[name] = SECRET_REDACTED
    return by_name


# An admin record is [account, currency, amount, overdraft, failure]; one sent with an
# Idempotency-Key has {"key", "fingerprint", "created_s"} before the failure.
def admin_keyed(kind: RecordType, fields: list[Any]) -> bool:
    """Whether a record is a keyed deposit's or withdrawal's."""
    return (
        kind in (RecordType.DEPOSIT, RecordType.WITHDRAW)
        and len(fields) == len(ADMIN_KEYED_RECORD_FIELDS)
        and isinstance(fields[4], dict)
    )


def logged_key(kind: RecordType, fields: list[Any]) -> tuple[bytes, bytes, int] | None:
    """The idempotency key a logged record reserved: (key, fingerprint, reserved at), or None."""
    if kind in PAYMENT_RECORDS:
        key, fingerprint, created_s = fields[9], fields[10], fields[8]
    elif kind == RecordType.REFUND:
        key, fingerprint, created_s = fields[5], fields[6], fields[4]
    elif admin_keyed(kind, fields):
        keyed = fields[4]
        key, fingerprint, created_s = keyed["key"], keyed["fingerprint"], keyed["created_s"]
    else:
        return None
    return None if key is None else (key.encode(), bytes.fromhex(fingerprint), created_s)


def failure_of(code: str | None) -> Failure | None:
    return None if code is None else Failure(code)
