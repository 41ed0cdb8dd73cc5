"""The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.

The document is plain data built here once; `tests/test_openapi.py` keeps it true: its operations
are exactly the router's, real responses validate against its schemas, and schemathesis fuzzes
every operation through it. Response objects are closed (`additionalProperties: false`), so a field
added to a response without being documented here fails those tests.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

from instapay import _core
from instapay.http.queries import LIST_LEN_DEFAULT, LIST_LEN_MAX
from instapay.mandates import EXPIRES_AT_MAX_S, MANDATES_PER_ACCOUNT_MAX
from instapay.model import Failure, Status
from instapay.protocol import JSON_TYPE, NDJSON_TYPE
from instapay.storage.history.reads import SCANNED_ROWS_MAX, SQLITE_INTEGER_MAX

JSON = dict[str, Any]

TEXT_TYPE: Final = "text/plain"


def _ref(kind: str, name: str) -> JSON:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> JSON:
    return _ref("schemas", name)


def _closed(properties: JSON, required: list[str] | None = None, **extra: Any) -> JSON:
    """An object with exactly these properties (all required unless `required` says otherwise)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


def _const(value: str) -> JSON:
    return {"type": "string", "const": value}


def _nullable(schema: JSON) -> JSON:
    return {**schema, "type": [schema["type"], "null"]}


def _json(schema: JSON) -> JSON:
    return {JSON_TYPE: {"schema": schema}}


# ---- schemas ------------------------------------------------------------------------------------

ID: Final[JSON] = {
    "type": "string",
    "minLength": 1,
    "maxLength": _core.ID_LEN_MAX,
    "pattern": "^[!-~]+$",
    "description": "1 to 255 printable ASCII characters, no spaces.",
}
CURRENCY: Final[JSON] = {
    "type": "string",
    "pattern": "^[A-Z]{3}$",
    "description": "ISO 4217 code, 3 uppercase letters.",
    "examples": ["EUR"],
}
AMOUNT: Final[JSON] = {
    "type": "integer",
    "minimum": 1,
    "maximum": _core.AMOUNT_MAX,
    "description": (
        "Minor units (1999 = 19.99): an integer from 1 to 10^15. Floats, strings, booleans and "
        "numbers with a fraction or an exponent are refused."
    ),
}
UNIX_S: Final[JSON] = {"type": "integer", "minimum": 0, "description": "Unix time, seconds."}
HEX: Final[JSON] = {"type": "string", "pattern": "^[0-9a-f]+$"}
PAYMENT_ID: Final[JSON] = {"type": "string", "pattern": "^pay_[0-9]{1,20}$", "examples": ["pay_42"]}
REFUND_ID: Final[JSON] = {"type": "string", "pattern": "^re_[0-9]{1,20}$", "examples": ["re_43"]}
EVENT_ID: Final[JSON] = {"type": "string", "pattern": "^evt_[0-9]{1,20}$", "examples": ["evt_7"]}
ENTRY_ID: Final[JSON] = {"type": "string", "pattern": "^ent_[0-9]{1,20}$", "examples": ["ent_42"]}
MANDATE_ID: Final[JSON] = {"type": "string", "pattern": "^mdt_[0-9]{1,20}$", "examples": ["mdt_5"]}
EXPIRES_AT: Final[JSON] = {
    "type": ["integer", "null"],
    "minimum": 1,
    "maximum": EXPIRES_AT_MAX_S,
    "description": "Unix seconds; payments from then on are declined (`mandate_expired`).",
}
METADATA: Final[JSON] = {
    "type": "object",
    "maxProperties": 50,
    "propertyNames": {"minLength": 1, "maxLength": 40},
    "additionalProperties": {"type": "string", "maxLength": 500},
    "description": "Up to 50 keys of 1 to 40 characters, each at most once; string values.",
}

# The result fields of a payment; the batch line adds two to them.
PAYMENT_PROPERTIES: Final[JSON] = {
    "id": PAYMENT_ID,
    "object": _const("payment"),
    "merchant_id": ID,
    "order_id": ID,
    "payer": ID,
    "amount": AMOUNT,
    "amount_refunded": {
        "type": "integer",
        "minimum": 0,
        "maximum": _core.AMOUNT_MAX,
        "description": (
            "What its refunds gave back so far, in minor units (at most `amount`); an event "
            "shows it as it was then."
        ),
    },
    "currency": CURRENCY,
    "status": _schema("Status"),
    "failure_code": {
        "oneOf": [_schema("FailureCode"), {"type": "null"}],
        "description": "Why the payment was declined; null when it succeeded.",
    },
    "created": UNIX_S,
    "description": {"type": ["string", "null"], "maxLength": 1000},
    "metadata": METADATA,
}
EVENT_PROPERTIES: Final[JSON] = {
    "id": EVENT_ID,
    "object": _const("event"),
    "type": {
        "type": "string",
        "enum": ["payment.succeeded", "payment.failed", "refund.succeeded", "refund.failed"],
    },
    "created": UNIX_S,
    "data": _closed(
        {"object": {"oneOf": [_schema("Payment"), _schema("Refund")]}},
        description="The payment or refund, as the answer to its request showed it.",
    ),
}
MERCHANT_PROPERTIES: Final[JSON] = {
    "object": _const("merchant"),
    "id": ID,
    "settlement_account": ID,
    "webhook_url": {"type": ["string", "null"]},
    "kids": {"type": "array", "items": ID, "description": "The merchant's live key ids."},
}
ERROR_LINE_ERROR: Final[JSON] = _closed({"code": {"type": "string"}, "message": {"type": "string"}})

SCHEMAS: Final[JSON] = {
    "Error": _closed(
        {
            "error": _closed(
                {
                    "code": {
                        "type": "string",
                        "description": "Machine-readable, e.g. `invalid_request`.",
                        "examples": ["invalid_request"],
                    },
                    "message": {"type": "string", "description": "For humans."},
                    "request_id": {
                        "type": "string",
                        "description": "The `X-Request-Id` of the response.",
                    },
                }
            )
        },
        description="Every refusal: nothing was applied.",
    ),
    "Status": {"type": "string", "enum": [status.value for status in Status]},
    "FailureCode": {
        "type": "string",
        "enum": [failure.value for failure in Failure],
        "description": "Why a processed operation was declined (a stored, replayable result).",
    },
    "PaymentCreate": _closed(
        {
            "merchant_id": {**ID, "description": "The merchant of the signing key."},
            "order_id": {
                **ID,
                "description": "The default idempotency scope is (merchant_id, order_id).",
            },
            "payer": {**ID, "description": "The account debited."},
            "amount": AMOUNT,
            "currency": CURRENCY,
            "description": {"type": ["string", "null"], "maxLength": 1000},
            "metadata": _nullable(METADATA),
        },
        required=["merchant_id", "order_id", "payer", "amount", "currency"],
        description=(
            "Strict JSON: UTF-8 only; duplicate keys (also inside `metadata`), NaN/Infinity and "
            "unknown fields are refused."
        ),
        examples=[
            {
                "merchant_id": "demo",
                "order_id": "order-1",
                "payer": "payer-0",
                "amount": 1999,
                "currency": "EUR",
            }
        ],
    ),
    "Payment": _closed(
        PAYMENT_PROPERTIES,
        description=(
            "A processed payment. A declined one (`status: failed`) is stored and replayed like a "
            "success."
        ),
    ),
    "PaymentList": _closed(
        {"object": _const("list"), "data": {"type": "array", "items": _schema("Payment")}},
        description="The payments of one order, oldest first (`order_id`).",
    ),
    "PaymentPage": _closed(
        {
            "object": _const("list"),
            "data": {"type": "array", "items": _schema("Payment"), "maxItems": LIST_LEN_MAX},
            "has_more": {"type": "boolean"},
            "scanned_to": {
                **PAYMENT_ID,
                "description": (
                    f"Only when a filter (`status`, `payer`, `created_*`) examined "
                    f"{SCANNED_ROWS_MAX:,} payments without filling the page: the last one "
                    "examined. Pass it as `starting_after` (`ending_before` when paging that "
                    "way) to go on; `has_more` is then true."
                ),
            },
        },
        required=["object", "data", "has_more"],
        description="A page of the merchant's payments, newest first.",
    ),
    "RefundCreate": _closed(
        {
            "amount": {
                **_nullable(AMOUNT),
                "description": "Omitted or null: whatever of the payment is left.",
            },
            "reason": {"type": ["string", "null"], "maxLength": 500},
        },
        required=[],
        description="An empty body refunds whatever of the payment is left.",
    ),
    "Refund": _closed(
        {
            "id": REFUND_ID,
            "object": _const("refund"),
            "payment_id": PAYMENT_ID,
            "merchant_id": ID,
            "amount": {
                "type": "integer",
                "minimum": 0,
                "maximum": _core.AMOUNT_MAX,
                "description": "Minor units; 0 when a declined refund found nothing left.",
            },
            "currency": CURRENCY,
            "status": _schema("Status"),
            "failure_code": {"oneOf": [_schema("FailureCode"), {"type": "null"}]},
            "created": UNIX_S,
            "reason": {"type": ["string", "null"]},
        }
    ),
    "RefundList": _closed(
        {
            "object": _const("list"),
            "data": {"type": "array", "items": _schema("Refund")},
            "has_more": {"type": "boolean"},
        }
    ),
    "PaymentsBatch": {
        "type": "array",
        "items": _schema("PaymentCreate"),
        "maxItems": 10_000,
        "description": (
            "NDJSON: each item of this array is one line of the body (a `PaymentCreate`, "
            "newline-terminated), not a JSON array. At most 10,000 lines and 16 MiB, all for the "
            "signing merchant, under one signature over the whole body."
        ),
    },
    "BatchAnswers": {
        "type": "array",
        "items": {
            "oneOf": [
                _schema("BatchPaymentLine"),
                _schema("BatchErrorLine"),
                _schema("BatchSignatureLine"),
                _schema("BatchStoppedLine"),
            ]
        },
        "description": (
            "NDJSON: each item of this array is one line of the body. One answer per request "
            "line, in request order, streamed group by group as they become durable; the last "
            "line is a `BatchSignatureLine` over every byte before it. If the engine stops "
            "mid-stream a `BatchStoppedLine` ends the body instead."
        ),
    },
    "BatchPaymentLine": _closed(
        {
            **PAYMENT_PROPERTIES,
            "line": {"type": "integer", "minimum": 0, "description": "0-based request line."},
            "replayed": {"type": "boolean"},
        }
    ),
    "BatchErrorLine": _closed(
        {
            "object": _const("error"),
            "line": {"type": "integer", "minimum": 0},
            "error": ERROR_LINE_ERROR,
        },
        description="A refused line: it changed nothing; the other lines went ahead.",
    ),
    "BatchSignatureLine": _closed(
        {
            "object": _const("signature"),
            "signature": {
                "type": "string",
                "pattern": "^t=[0-9]+(,v1=[0-9a-f]{64})+$",
                "description": '`t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + lines)>`',
            },
        }
    ),
    "BatchStoppedLine": _closed(
        {"object": _const("error"), "error": ERROR_LINE_ERROR},
        description="The engine stopped mid-stream (`unavailable`): no signature line follows.",
    ),
    "AccountCreate": _closed(
        {"id": ID, "currency": CURRENCY, "overdraft": {"type": "boolean", "default": False}},
        required=["id", "currency"],
        examples=[{"id": "payer-9", "currency": "EUR"}],
    ),
    "MoneyMovement": _closed(
        {"amount": AMOUNT, "currency": CURRENCY}, examples=[{"amount": 500, "currency": "EUR"}]
    ),
    "AccountOperation": _closed(
        {
            "object": _const("account_operation"),
            "account_id": ID,
            "status": _schema("Status"),
            "failure_code": {"oneOf": [_schema("FailureCode"), {"type": "null"}]},
            "balance": {"type": "integer", "description": "Minor units, after the operation."},
        },
        description="The outcome of an account operation; a decline is `status: failed`.",
    ),
    "MandateCreate": _closed(
        {
            "merchant_id": {**ID, "description": "The merchant the account lets debit it."},
            "amount_max_per_payment": AMOUNT,
            "amount_max_per_day": {
                **_nullable(AMOUNT),
                "description": (
                    "The most the merchant may debit in a UTC day (by each payment's `created`); "
                    "at least `amount_max_per_payment`. A refund does not give it back. Omitted "
                    "or null: no daily limit."
                ),
            },
            "expires_at": {**EXPIRES_AT, "description": "In the future; omitted or null: never."},
        },
        required=["merchant_id", "amount_max_per_payment"],
        description="Amounts in the minor units of the account's currency.",
        examples=[{"merchant_id": "demo", "amount_max_per_payment": 5000}],
    ),
    "Mandate": _closed(
        {
            "object": _const("mandate"),
            "id": MANDATE_ID,
            "account_id": ID,
            "merchant_id": ID,
            "amount_max_per_payment": AMOUNT,
            "amount_max_per_day": _nullable(AMOUNT),
            "expires_at": EXPIRES_AT,
            "created": UNIX_S,
            "revoked_at": _nullable(UNIX_S),
            "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
            "amount_spent_today": {
                "type": "integer",
                "minimum": 0,
                "description": "Debited under this mandate in the current UTC day.",
            },
        },
        description=(
            "A payer account's consent that one merchant may debit it. Payments without an "
            "active mandate are declined: `mandate_missing`, `mandate_expired`, "
            "`mandate_amount_exceeded`, `mandate_daily_limit_exceeded`."
        ),
    ),
    "Entry": _closed(
        {
            "object": _const("entry"),
            "id": {**ENTRY_ID, "description": "`ent_<LSN>`: the LSN that changed the balance."},
            "account_id": ID,
            "kind": {
                "type": "string",
                "enum": ["opening", "deposit", "withdrawal", "payment", "refund"],
                "description": "`opening`: a rebuilt history's balance at its snapshot.",
            },
            "amount": {
                "type": "integer",
                "description": "Minor units, signed: positive credits the account.",
            },
            "currency": CURRENCY,
            "balance_after": {"type": "integer", "description": "Minor units, after it."},
            "operation": {
                "oneOf": [PAYMENT_ID, REFUND_ID, {"type": "null"}],
                "description": "The payment or refund it belongs to; null for a deposit or "
                "withdrawal.",
            },
            "created": {
                **_nullable(UNIX_S),
                "description": "The payment's or refund's time; null for a deposit or withdrawal.",
            },
        }
    ),
    "EntryList": _closed(
        {
            "object": _const("list"),
            "data": {"type": "array", "items": _schema("Entry"), "maxItems": LIST_LEN_MAX},
            "has_more": {"type": "boolean"},
        }
    ),
    "MandateList": _closed(
        {
            "object": _const("list"),
            "data": {
                "type": "array",
                "items": _schema("Mandate"),
                "maxItems": MANDATES_PER_ACCOUNT_MAX,
            },
        }
    ),
    "Balance": _closed(
        {
            "object": _const("balance"),
            "account_id": ID,
            "currency": CURRENCY,
            "balance": {"type": "integer", "description": "Minor units."},
        }
    ),
    "MerchantCreate": _closed(
        {
            "id": ID,
            "settlement_account": {**ID, "description": "An open account of the engine."},
            "webhook_url": {
                "type": ["string", "null"],
                "format": "uri",
                "maxLength": 2048,
                "description": (
                    "An absolute http(s) URL the events are POSTed to; without one the merchant "
                    "polls `GET /v1/events`."
                ),
            },
        },
        required=["id", "settlement_account"],
    ),
    "Merchant": _closed(MERCHANT_PROPERTIES),
    "MerchantCreated": _closed(
        {
            **MERCHANT_PROPERTIES,
            "key": _schema("Key"),
            "webhook_secret": {
                **_nullable(HEX),
                "description": "Signs the merchant's webhooks; shown once. Null without a URL.",
            },
        }
    ),
    "Key": _closed(
        {
            "object": _const("key"),
            "kid": ID,
            "secret": {**HEX, "description": "Shown once, here."},
            "merchant_id": ID,
        },
        description="A new signing key. Older keys stay valid until revoked.",
    ),
    "RevokedKey": _closed(
        {
            "object": _const("key"),
            "kid": ID,
            "merchant_id": ID,
            "revoked": {"type": "boolean", "const": True},
        }
    ),
    "WebhookSecret": _closed(
        {
            "object": _const("webhook_secret"),
            "merchant_id": ID,
            "secret": {**HEX, "description": "Shown once, here."},
            "previous_valid": {"type": "boolean", "const": True},
        },
        description=(
            "A new webhook secret. Until the previous one is revoked, each delivery carries two "
            "v1 signatures: one per secret."
        ),
    ),
    "RevokedWebhookSecret": _closed(
        {
            "object": _const("webhook_secret"),
            "merchant_id": ID,
            "previous_valid": {"type": "boolean", "const": False},
        }
    ),
    "Event": _closed(EVENT_PROPERTIES, description="A notification, as webhooks deliver it."),
    "EventList": _closed(
        {
            "object": _const("list"),
            "data": {"type": "array", "items": _schema("Event")},
            "has_more": {"type": "boolean"},
        }
    ),
    "EventWithDelivery": _closed({**EVENT_PROPERTIES, "delivery": _schema("Delivery")}),
    "Delivery": _closed(
        {
            "status": {"type": "string", "enum": ["pending", "delivered", "failed", "none"]},
            "attempts": {"type": "array", "items": _schema("DeliveryAttempt")},
            "next_attempt_at": _nullable(UNIX_S),
        },
        description="The webhook delivery of an event; `none` when the merchant has no URL.",
    ),
    "DeliveryAttempt": _closed(
        {
            "attempt": {"type": "integer", "minimum": 1},
            "at": UNIX_S,
            "outcome": {
                "type": "string",
                "description": "The HTTP status answered (`500`) or an error name (`timeout`).",
            },
            "delivered": {"type": "boolean"},
        }
    ),
    "Redelivery": _closed(
        {
            "object": _const("redelivery"),
            "merchant_id": ID,
            "count": {"type": "integer", "minimum": 0, "description": "Events queued again."},
        }
    ),
    "Health": _closed({"status": _const("ok")}),
    "Ready": _closed({"status": _const("ready")}),
}

# ---- headers, parameters, responses -------------------------------------------------------------

HEADERS: Final[JSON] = {
    "X-Request-Id": {
        "description": "The request's id; errors repeat it as `error.request_id`.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    },
    "Instapay-Signature": {
        "description": (
            "`t=<unix>,v1=<hex>[,v1=<hex>...]` with "
            '`v1 = hex(HMAC-SHA256(secret, "<t>." + body))`, one v1 per live key of the '
            "merchant (Stripe's scheme)."
        ),
        "required": True,
        "schema": {"type": "string", "pattern": "^t=[0-9]+(,v1=[0-9a-f]{64})+$"},
    },
    "Idempotent-Replayed": {
        "description": "Present when the answer is the stored result of an earlier request.",
        "schema": {"type": "string", "const": "true"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
}

PARAMETERS: Final[JSON] = {
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": (
            "Covered by the v2 signature. Same key + same request: the stored result again "
            "(`Idempotent-Replayed: true`), never a second charge. Same key + different "
            "request: 422. Same key while the first is in flight: the first one's result. Kept "
            "at least 24 h. Without it, payments are idempotent per (merchant_id, order_id); "
            "send one only for a deliberate new attempt at an order."
        ),
        "schema": ID,
    },
    "RefundIdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": True,
        "description": (
            "Required, covered by the v2 signature: the refund's scope (a payment may be "
            "refunded in parts). Same key + same refund: the stored result again; another "
            "refund under the key: 422."
        ),
        "schema": ID,
    },
    "AdminIdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": (
            "Same key + same account, amount, currency and direction: the stored result again "
            "(`Idempotent-Replayed: true`), never a second movement; anything else under the "
            "key: 422. Kept at least 24 h, across restarts."
        ),
        "schema": ID,
    },
    "PaymentId": {"name": "payment_id", "in": "path", "required": True, "schema": PAYMENT_ID},
    "AccountId": {"name": "account_id", "in": "path", "required": True, "schema": ID},
    "MerchantId": {"name": "merchant_id", "in": "path", "required": True, "schema": ID},
    "Kid": {"name": "kid", "in": "path", "required": True, "schema": ID},
    "EventId": {"name": "event_id", "in": "path", "required": True, "schema": EVENT_ID},
    "MandateId": {"name": "mandate_id", "in": "path", "required": True, "schema": MANDATE_ID},
    "OrderId": {
        "name": "order_id",
        "in": "query",
        "required": False,
        "description": (
            "The payments of this order, oldest first, as a `PaymentList` (the other "
            "parameters do not apply)."
        ),
        "schema": ID,
    },
    "ListLimit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": LIST_LEN_MAX,
            "default": LIST_LEN_DEFAULT,
        },
    },
    "PaymentStartingAfter": {
        "name": "starting_after",
        "in": "query",
        "required": False,
        "description": "Only payments older than this one of the merchant's (the last id of "
        "the previous page).",
        "schema": PAYMENT_ID,
    },
    "PaymentEndingBefore": {
        "name": "ending_before",
        "in": "query",
        "required": False,
        "description": "Only payments newer than this one of the merchant's (the first id of "
        "the previous page).",
        "schema": PAYMENT_ID,
    },
    "StatusFilter": {
        "name": "status",
        "in": "query",
        "required": False,
        "schema": _schema("Status"),
    },
    "PayerFilter": {"name": "payer", "in": "query", "required": False, "schema": ID},
    "CreatedGte": {
        "name": "created_gte",
        "in": "query",
        "required": False,
        "description": "Only payments created at or after this unix second.",
        "schema": {"type": "integer", "minimum": 0, "maximum": SQLITE_INTEGER_MAX},
    },
    "CreatedLt": {
        "name": "created_lt",
        "in": "query",
        "required": False,
        "description": "Only payments created before this unix second.",
        "schema": {"type": "integer", "minimum": 0, "maximum": SQLITE_INTEGER_MAX},
    },
    "EntryStartingAfter": {
        "name": "starting_after",
        "in": "query",
        "required": False,
        "description": "Only entries older than this one (the last id of the previous page).",
        "schema": ENTRY_ID,
    },
    "EntryEndingBefore": {
        "name": "ending_before",
        "in": "query",
        "required": False,
        "description": "Only entries newer than this one (the first id of the previous page).",
        "schema": ENTRY_ID,
    },
    "After": {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "Only events after this one (the last id of the previous page).",
        "schema": EVENT_ID,
    },
    "StartingAfter": {
        "name": "starting_after",
        "in": "query",
        "required": False,
        "description": "Only refunds older than this one (the last id of the previous page).",
        "schema": REFUND_ID,
    },
    "EndingBefore": {
        "name": "ending_before",
        "in": "query",
        "required": False,
        "description": "Only refunds newer than this one (the first id of the previous page).",
        "schema": REFUND_ID,
    },
    "Limit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
}

_PATH_PARAMETERS: Final = {
    name for name, parameter in PARAMETERS.items() if parameter["in"] == "path"
}
_REQUEST_ID: Final = {"X-Request-Id": _ref("headers", "X-Request-Id")}
_RETRY: Final = {**_REQUEST_ID, "Retry-After": _ref("headers", "Retry-After")}


def _error(description: str, headers: JSON = _REQUEST_ID) -> JSON:
    return {"description": description, "headers": headers, "content": _json(_schema("Error"))}


RESPONSES: Final[JSON] = {
    "BadRequest": _error("`invalid_request`: malformed or invalid; nothing was applied."),
    "SignatureRefused": _error(
        "Bad, missing or expired signature, or an unknown key: `signature_malformed` (also for "
        "two Instapay-Signature headers, or a v1 and a v2), `signature_expired`, "
        "`signature_mismatch`, `unknown_key`, `idempotency_key_unsigned` (a v1 signature with an "
        "Idempotency-Key, which v1 does not cover)."
    ),
    "AdminUnauthorized": _error("`admin_unauthorized`: no or the wrong bearer token."),
    "AdminDisabled": _error("`admin_disabled`: the server runs without an admin token."),
    "NotFound": _error("`not_found`."),
    "TooLarge": _error("`body_too_large` (64 KiB for a single request)."),
    "UnsupportedMediaType": _error(
        "`unsupported_media_type` (not the content type the operation takes), or "
        "`unsupported_content_coding` (a Content-Encoding other than identity, on any "
        "operation: bodies are never inflated; the connection is closed after it)."
    ),
    "TooManyRequests": _error(
        "`too_many_requests`: too many requests in flight; retry after `Retry-After`.", _RETRY
    ),
    "Unavailable": _error(
        "`starting` (recovering the data directory), `overloaded` (queue full, or the "
        "merchant holds its share of the idempotency index), `unavailable` (the engine "
        "stopped), `history_catching_up` (a list waits for the history database to hold "
        "every result durable when it was asked, and it did not in time), "
        "`history_unavailable` (the history database cannot be read, or the server keeps "
        "none: `[history] enabled = false`), `server_busy` (too "
        "many request bodies being received at once) or "
        "`too_many_connections` (the server's or this client address's connection cap, "
        "answered before the request is read); retry after `Retry-After`.",
        _RETRY,
    ),
    "TooManyConnections": _error(
        "`too_many_connections`: the server's or this client address's connection cap, "
        "answered before the request is read; retry after `Retry-After`.",
        _RETRY,
    ),
    "BodyTimeout": _error(
        "`body_timeout`: the body did not arrive within the body read timeout (30 s)."
    ),
    "UnsupportedTransferCoding": _error(
        "`unsupported_transfer_coding`: a Transfer-Encoding other than plain chunked; the "
        "connection is closed after it."
    ),
}

_SIGNED_HEADERS: Final = {
    **_REQUEST_ID,
    "Instapay-Signature": _ref("headers", "Instapay-Signature"),
}
_RESULT_HEADERS: Final = {
    **_SIGNED_HEADERS,
    "Idempotent-Replayed": _ref("headers", "Idempotent-Replayed"),
}
_MERCHANT: Final[list[JSON]] = [{"InstapaySignature": []}]
_ADMIN: Final[list[JSON]] = [{"AdminBearer": []}]


def _ok(description: str, schema: JSON, headers: JSON = _REQUEST_ID) -> JSON:
    return {"description": description, "headers": headers, "content": _json(schema)}


def _operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: JSON,
    *,
    description: str | None = None,
    security: list[JSON] | None = None,
    parameters: list[JSON] | None = None,
    request_body: JSON | None = None,
    engine: bool = True,
) -> JSON:
    """An operation; every one may answer 429, 503 (`too_many_connections`, and more if it needs
    the engine), 415 and 501 for codings we do not implement, every one with a path parameter
    404 (a value that leaves no route, like an empty one, meets 404), and every one that reads a
    body (a signed one, or one with a request body) 408."""
    operation: JSON = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description is not None:
        operation["description"] = description
    if security is not None:
        operation["security"] = security
    if parameters:
        operation["parameters"] = parameters
    if request_body is not None:
        operation["requestBody"] = request_body
    errors = {
        "415": _ref("responses", "UnsupportedMediaType"),
        "429": _ref("responses", "TooManyRequests"),
        "501": _ref("responses", "UnsupportedTransferCoding"),
        "503": _ref("responses", "Unavailable" if engine else "TooManyConnections"),
    }
    if security == _MERCHANT or request_body is not None:
        errors["408"] = _ref("responses", "BodyTimeout")
    if any(
        parameter["$ref"].rpartition("/")[2] in _PATH_PARAMETERS for parameter in parameters or []
    ):
        errors["404"] = _ref("responses", "NotFound")
    if security == _ADMIN:
        errors |= {
            "401": _ref("responses", "AdminUnauthorized"),
            "403": _ref("responses", "AdminDisabled"),
        }
    elif security == _MERCHANT:
        errors["401"] = _ref("responses", "SignatureRefused")
    operation["responses"] = dict(sorted({**errors, **responses}.items()))
    return operation


def _param(name: str) -> JSON:
    return _ref("parameters", name)


def _body(schema: JSON, media_type: str = JSON_TYPE, *, required: bool = True) -> JSON:
    return {"required": required, "content": {media_type: {"schema": schema}}}


_400 = {"400": _ref("responses", "BadRequest")}
_404 = {"404": _ref("responses", "NotFound")}
_413 = {"413": _ref("responses", "TooLarge")}
_415 = {"415": _ref("responses", "UnsupportedMediaType")}


_ADMIN_REPLAY_HEADERS: Final = {
    **_REQUEST_ID,
    "Idempotent-Replayed": _ref("headers", "Idempotent-Replayed"),
}
_ADMIN_KEY_REUSED: Final = {
    "422": _error("`idempotency_key_reused`: this Idempotency-Key came with another movement.")
}


def _conflict(codes: str) -> JSON:
    return {"409": _error(codes)}


PAYMENT_RESULT: Final = (
    "The payment, processed and durable: `status` is `succeeded`, or `failed` with a "
    "`failure_code` (a decline is a stored result, replayed like a success)."
)

PATHS: Final[JSON] = {
    "/v1/payments": {
        "post": _operation(
            "createPayment",
            "Pay: debit the payer, credit the merchant's settlement account",
            "payments",
            {
                "200": _ok(PAYMENT_RESULT, _schema("Payment"), _RESULT_HEADERS),
                **_400,
                "403": _error("`merchant_mismatch`: merchant_id is not the signing merchant."),
                **_413,
                **_415,
                "422": _error(
                    "`idempotency_key_reused`: this Idempotency-Key came with another request."
                ),
            },
            security=_MERCHANT,
            parameters=[_param("IdempotencyKey")],
            request_body=_body(_schema("PaymentCreate")),
        ),
        "get": _operation(
            "listPayments",
            "The merchant's payments, newest first (every payment ever made), or one order's",
            "payments",
            {
                "200": _ok(
                    "A page of payments, or with `order_id` the order's payments.",
                    {"oneOf": [_schema("PaymentPage"), _schema("PaymentList")]},
                    _SIGNED_HEADERS,
                ),
                **_400,
                **_413,
            },
            description=(
                "Signed like a POST, over an empty body (the query string included). Read from "
                "the history database once it holds every payment durable when the request "
                "came (a payment acknowledged before is listed). Stripe's list: a cursor is "
                "one of the merchant's payments (another's, or an unknown one, is 400); "
                "`starting_after` and `ending_before` exclude each other; every filter given "
                "applies. A filter on `status`, `payer` or `created_*` examines at most "
                f"{SCANNED_ROWS_MAX:,} payments per request: see `scanned_to`. A parameter "
                "not listed here is refused (400)."
            ),
            security=_MERCHANT,
            parameters=[
                _param("OrderId"),
                _param("ListLimit"),
                _param("PaymentStartingAfter"),
                _param("PaymentEndingBefore"),
                _param("StatusFilter"),
                _param("PayerFilter"),
                _param("CreatedGte"),
                _param("CreatedLt"),
            ],
        ),
    },
    "/v1/payments/batch": {
        "post": _operation(
            "createPaymentsBatch",
            "Many payments under one signature, answered as a stream",
            "payments",
            {
                "200": {
                    "description": (
                        "NDJSON, one line per request line in order, then the signature line. "
                        "A refused line is answered by an error line and changes nothing."
                    ),
                    "headers": _REQUEST_ID,
                    "content": {NDJSON_TYPE: {"schema": _schema("BatchAnswers")}},
                },
                "413": _error("`batch_too_large` (over 10,000 lines) or `body_too_large`."),
                **_415,
            },
            security=_MERCHANT,
            request_body=_body(_schema("PaymentsBatch"), NDJSON_TYPE),
        ),
    },
    "/v1/payments/{payment_id}": {
        "get": _operation(
            "getPayment",
            "One of the merchant's payments",
            "payments",
            {
                "200": _ok("The payment.", _schema("Payment"), _SIGNED_HEADERS),
                **_404,
                **_413,
            },
            description="Signed like a POST, over an empty body.",
            security=_MERCHANT,
            parameters=[_param("PaymentId")],
        ),
    },
    "/v1/payments/{payment_id}/refunds": {
        "post": _operation(
            "createRefund",
            "Refund a payment, partly or fully",
            "payments",
            {
                "200": _ok(
                    "The refund, processed and durable; declined (`refund_exceeds_payment`, "
                    "`payment_not_refundable`, ...) as `status: failed`. The total refunded never "
                    "exceeds the amount.",
                    _schema("Refund"),
                    _RESULT_HEADERS,
                ),
                "400": _error(
                    "`invalid_request`, or `idempotency_key_required`: a refund without an "
                    "Idempotency-Key. Nothing was applied."
                ),
                **_404,
                **_413,
                **_415,
                "422": _error(
                    "`idempotency_key_reused`: this Idempotency-Key came with another request."
                ),
            },
            description=(
                "The signed Idempotency-Key scopes the refund to the payment: a resent refund "
                "refunds once; a new key is a new refund."
            ),
            security=_MERCHANT,
            parameters=[_param("PaymentId"), _param("RefundIdempotencyKey")],
            request_body=_body(_schema("RefundCreate"), required=False),
        ),
        "get": _operation(
            "listRefunds",
            "The refunds of one of the merchant's payments, declined ones included, newest first",
            "payments",
            {
                "200": _ok("A page of refunds.", _schema("RefundList"), _SIGNED_HEADERS),
                **_400,
                **_404,
                **_413,
            },
            description=(
                "Signed like a POST, over an empty body (the query string included). A cursor "
                "is one of the payment's refunds; `starting_after` and `ending_before` exclude "
                "each other."
            ),
            security=_MERCHANT,
            parameters=[
                _param("PaymentId"),
                _param("Limit"),
                _param("StartingAfter"),
                _param("EndingBefore"),
            ],
        ),
    },
    "/v1/events": {
        "get": _operation(
            "listEvents",
            "The merchant's notification stream, oldest first, for polling",
            "events",
            {
                "200": _ok("A page of events.", _schema("EventList"), _SIGNED_HEADERS),
                **_400,
                **_413,
            },
            description="Signed like a POST, over an empty body (the query string included).",
            security=_MERCHANT,
            parameters=[_param("After"), _param("Limit")],
        ),
    },
    "/v1/events/{event_id}": {
        "get": _operation(
            "getEvent",
            "One of the merchant's events, with its webhook delivery",
            "events",
            {
                "200": _ok("The event.", _schema("EventWithDelivery"), _SIGNED_HEADERS),
                **_404,
                **_413,
            },
            security=_MERCHANT,
            parameters=[_param("EventId")],
        ),
    },
    "/v1/admin/accounts": {
        "post": _operation(
            "createAccount",
            "Open an account",
            "admin",
            {
                "200": _ok(
                    "Opened, or `status: failed` with `account_exists`.",
                    _schema("AccountOperation"),
                ),
                **_400,
                **_413,
            },
            security=_ADMIN,
            request_body=_body(_schema("AccountCreate")),
        ),
    },
    "/v1/admin/accounts/{account_id}": {
        "get": _operation(
            "getAccountBalance",
            "An account's balance",
            "admin",
            {"200": _ok("The balance.", _schema("Balance")), **_404},
            security=_ADMIN,
            parameters=[_param("AccountId")],
        ),
    },
    "/v1/admin/accounts/{account_id}/deposits": {
        "post": _operation(
            "createDeposit",
            "Put money into an account",
            "admin",
            {
                "200": _ok(
                    "Deposited, or `status: failed` (`account_not_found`, `currency_mismatch`, "
                    "`amount_too_large`).",
                    _schema("AccountOperation"),
                    _ADMIN_REPLAY_HEADERS,
                ),
                **_400,
                **_413,
                **_ADMIN_KEY_REUSED,
            },
            security=_ADMIN,
            parameters=[_param("AccountId"), _param("AdminIdempotencyKey")],
            request_body=_body(_schema("MoneyMovement")),
        ),
    },
    "/v1/admin/accounts/{account_id}/withdrawals": {
        "post": _operation(
            "createWithdrawal",
            "Take money out of an account",
            "admin",
            {
                "200": _ok(
                    "Withdrawn, or `status: failed` (`account_not_found`, `currency_mismatch`, "
                    "`insufficient_funds`).",
                    _schema("AccountOperation"),
                    _ADMIN_REPLAY_HEADERS,
                ),
                **_400,
                **_413,
                **_ADMIN_KEY_REUSED,
            },
            security=_ADMIN,
            parameters=[_param("AccountId"), _param("AdminIdempotencyKey")],
            request_body=_body(_schema("MoneyMovement")),
        ),
    },
    "/v1/admin/accounts/{account_id}/mandates": {
        "post": _operation(
            "createMandate",
            "Record a payer's mandate: the account lets a merchant debit it, within limits",
            "admin",
            {
                "201": _ok("The mandate, active.", _schema("Mandate")),
                "400": _error(
                    "`invalid_request` (limits out of range, `expires_at` not in the future), "
                    "or `merchant_not_found`."
                ),
                **_404,
                **_conflict(
                    "`mandate_exists` (the account has an active mandate for this merchant: "
                    "revoke it first), `account_is_settlement` (a merchant's settlement account "
                    f"never pays), or `too_many_mandates` ({MANDATES_PER_ACCOUNT_MAX} per account)."
                ),
                **_413,
            },
            security=_ADMIN,
            parameters=[_param("AccountId")],
            request_body=_body(_schema("MandateCreate")),
        ),
        "get": _operation(
            "listMandates",
            "An account's mandates, oldest first (revoked and expired ones too)",
            "admin",
            {"200": _ok("The mandates.", _schema("MandateList")), **_404},
            security=_ADMIN,
            parameters=[_param("AccountId")],
        ),
    },
    "/v1/admin/accounts/{account_id}/entries": {
        "get": _operation(
            "listAccountEntries",
            "An account statement: every change of its balance, newest first",
            "admin",
            {"200": _ok("A page of entries.", _schema("EntryList")), **_400, **_404},
            description=(
                "Read from the history database once it holds every record durable when the "
                "request came. Stripe's list: a cursor is one of the account's entries; "
                "`starting_after` and `ending_before` exclude each other. Declined operations "
                "change no balance and have no entry."
            ),
            security=_ADMIN,
            parameters=[
                _param("AccountId"),
                _param("ListLimit"),
                _param("EntryStartingAfter"),
                _param("EntryEndingBefore"),
            ],
        ),
    },
    "/v1/admin/accounts/{account_id}/mandates/{mandate_id}": {
        "delete": _operation(
            "revokeMandate",
            "Revoke a mandate: the merchant may no longer debit the account under it",
            "admin",
            {
                "200": _ok("The mandate, revoked.", _schema("Mandate")),
                **_404,
                **_conflict("`mandate_revoked`: it was revoked before."),
            },
            security=_ADMIN,
            parameters=[_param("AccountId"), _param("MandateId")],
        ),
    },
    "/v1/admin/merchants": {
        "post": _operation(
            "createMerchant",
            "Register a merchant with its first key (and webhook secret, given a URL)",
            "admin",
            {
                "201": _ok(
                    "The merchant; the key's secret and the webhook secret are shown only here.",
                    _schema("MerchantCreated"),
                ),
                "400": _error(
                    "`invalid_request`, or `account_not_found`: the settlement account is not open."
                ),
                **_conflict(
                    "`merchant_exists`, `key_exists`, or `settlement_account_in_use` (by another "
                    "merchant: refunds are authorised by the settlement account)."
                ),
                **_413,
            },
            security=_ADMIN,
            request_body=_body(_schema("MerchantCreate")),
        ),
    },
    "/v1/admin/merchants/{merchant_id}": {
        "get": _operation(
            "getMerchant",
            "A merchant and its live key ids",
            "admin",
            {"200": _ok("The merchant.", _schema("Merchant")), **_404},
            security=_ADMIN,
            parameters=[_param("MerchantId")],
        ),
    },
    "/v1/admin/merchants/{merchant_id}/keys": {
        "post": _operation(
            "createMerchantKey",
            "Add a signing key (rotation: the old keys stay valid until revoked)",
            "admin",
            {
                "201": _ok("The key; its secret is shown only here.", _schema("Key")),
                **_404,
                **_conflict(
                    "`too_many_keys` (revoke an old one first), `key_exists`, or "
                    "`merchant_managed_by_config` (change the configuration file instead)."
                ),
            },
            description="The body is empty.",
            security=_ADMIN,
            parameters=[_param("MerchantId")],
        ),
    },
    "/v1/admin/merchants/{merchant_id}/keys/{kid}": {
        "delete": _operation(
            "revokeMerchantKey",
            "Revoke a signing key",
            "admin",
            {
                "200": _ok("Revoked.", _schema("RevokedKey")),
                **_404,
                **_conflict(
                    "`last_key` (a merchant keeps at least one key: add the new one first), or "
                    "`merchant_managed_by_config`."
                ),
            },
            security=_ADMIN,
            parameters=[_param("MerchantId"), _param("Kid")],
        ),
    },
    "/v1/admin/merchants/{merchant_id}/webhook-secret": {
        "post": _operation(
            "rotateWebhookSecret",
            "Rotate the webhook secret (the previous one signs too until revoked)",
            "admin",
            {
                "201": _ok("The new secret; shown only here.", _schema("WebhookSecret")),
                **_404,
                **_conflict(
                    "`no_webhook_url`, `rotation_in_progress` (revoke the previous secret "
                    "first), or `merchant_managed_by_config`."
                ),
            },
            description="The body is empty.",
            security=_ADMIN,
            parameters=[_param("MerchantId")],
        ),
    },
    "/v1/admin/merchants/{merchant_id}/webhook-secret/previous": {
        "delete": _operation(
            "revokePreviousWebhookSecret",
            "Stop signing deliveries with the previous webhook secret",
            "admin",
            {
                "200": _ok("Revoked.", _schema("RevokedWebhookSecret")),
                **_404,
                **_conflict("`merchant_managed_by_config`."),
            },
            security=_ADMIN,
            parameters=[_param("MerchantId")],
        ),
    },
    "/v1/admin/events/{event_id}/redeliver": {
        "post": _operation(
            "redeliverEvent",
            "Deliver an event's webhook again",
            "admin",
            {
                "202": _ok("Queued for delivery.", _schema("EventWithDelivery")),
                **_404,
                **_conflict("`no_webhook_url`: the merchant polls instead."),
            },
            security=_ADMIN,
            parameters=[_param("EventId")],
        ),
    },
    "/v1/admin/merchants/{merchant_id}/events/redeliver": {
        "post": _operation(
            "redeliverMerchantEvents",
            "Deliver a merchant's failed events again",
            "admin",
            {
                "202": _ok(
                    "The merchant's failed events (up to 10,000 per call) are queued again.",
                    _schema("Redelivery"),
                ),
                **_404,
                **_conflict("`no_webhook_url`: the merchant polls instead."),
            },
            security=_ADMIN,
            parameters=[_param("MerchantId")],
        ),
    },
    "/healthz": {
        "get": _operation(
            "health",
            "Alive (also while recovering)",
            "operations",
            {"200": _ok("Alive.", _schema("Health"))},
            engine=False,
        ),
    },
    "/readyz": {
        "get": _operation(
            "ready",
            "Ready: recovery has finished",
            "operations",
            {"200": _ok("Ready.", _schema("Ready"))},
        ),
    },
    "/metrics": {
        "get": _operation(
            "metrics",
            "Prometheus metrics",
            "operations",
            {
                "200": {
                    "description": "Prometheus text exposition format 0.0.4.",
                    "headers": _REQUEST_ID,
                    "content": {TEXT_TYPE: {"schema": {"type": "string"}}},
                }
            },
            engine=False,
        ),
    },
    "/openapi.json": {
        "get": _operation(
            "openapi",
            "This document",
            "operations",
            {"200": _ok("OpenAPI 3.1.", {"type": "object"})},
            engine=False,
        ),
    },
}

SECURITY_SCHEMES: Final[JSON] = {
    "InstapaySignature": {
        "type": "apiKey",
        "in": "header",
        "name": "Instapay-Signature",
        "description": (
            "`t=<unix>,kid=<kid>,v2=<hex HMAC-SHA256(secret, "
            '"v2\\n<t>\\n<METHOD>\\n<path>\\n<Idempotency-Key>\\n" + body)>`: `<path>` is the '
            "request target as sent, query string included; `<Idempotency-Key>` the header's "
            "value, empty when none is sent; `body` the exact bytes (empty for a GET). Version 1, "
            '`v1=<hex HMAC-SHA256(secret, "<t>\\n<METHOD>\\n<path>\\n" + body)>`, covers no '
            "key and is accepted only on requests without an Idempotency-Key "
            "(`idempotency_key_unsigned` otherwise). One MAC and one header per request. "
            "Timestamps more than 300 s from the server clock are refused. Keys rotate by kid: "
            "old and new are valid side by side until the old one is revoked."
        ),
    },
    "AdminBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <admin token>` (the server's configured token).",
    },
}

SPEC: Final[JSON] = {
    "openapi": "3.1.0",
    "info": {
        "title": "instapay",
        "version": "1",
        "summary": "Real-time payment engine",
        "description": (
            "Amounts are integers in minor units. Every response carries `X-Request-Id`; every "
            'refusal is `{"error": {"code", "message", "request_id"}}` and applied nothing. '
            "Answers to merchants are signed (`Instapay-Signature`, Stripe's scheme)."
        ),
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    },
    "tags": [
        {"name": "payments", "description": "Signed by the merchant."},
        {"name": "events", "description": "Signed by the merchant."},
        {"name": "admin", "description": "Bearer admin token."},
        {"name": "operations", "description": "Health, readiness, metrics, this document."},
    ],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "parameters": PARAMETERS,
        "headers": HEADERS,
        "responses": RESPONSES,
        "securitySchemes": SECURITY_SCHEMES,
    },
}
_SPEC_JSON = orjson.dumps(SPEC)


async def openapi_spec(request: web.Request) -> web.Response:
    del request
    return web.Response(body=_SPEC_JSON, content_type=JSON_TYPE)
