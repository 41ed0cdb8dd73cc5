"""The log's records: one typed definition per record type (a msgspec Struct with named fields),
its version carried in the logged type number, and the one codec that writes and reads them.

A logged type is 16 bits (the WAL frame's type field): the low byte names the operation
(`RecordType`), the high byte the version of its record (`logged_type`, `split_type`):

- version 1 (written today): the Struct encoded as a MessagePack array of its fields, in the
  order they are declared here (`array_like`);
- version 0 (read only): what instapay wrote before typed records, JSON: the same fields as a
  JSON array (mandate records as JSON objects with the same names, a keyed deposit or
  withdrawal with its key as an object before its failure code). Every version-0 record decodes
  into the Struct of its operation (`_legacy`), so the code that applies records sees one shape.

A change to a record's fields is a new version of that record: a new Struct, written under the
next version number, while the old Struct (and its conversion to the new one) stays to read the
logs written before. Adding a field at the end with a default is the one change an old reader
would misread silently (it ignores trailing fields): it, too, takes a new version.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any, ClassVar

import msgspec
import orjson

from instapay.outbox import DeliveryOutcome

VERSION_LEGACY_JSON = 0
VERSION_CURRENT = 1
_VERSION_SHIFT = 8
_OPERATION_MASK = (1 << _VERSION_SHIFT) - 1


class RecordType(IntEnum):
    """The operations a record logs (the low byte of its logged type)."""

    OPEN_ACCOUNT = 1
    DEPOSIT = 2
    WITHDRAW = 3
    # A payment applied as before consent (instapay.mandates): only replayed, never written.
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
    MANDATE_GRANTED = 13
    MANDATE_REVOKED = 14
    # A payment applied under the consent rules (the fields of PAYMENT).
    PAYMENT_WITH_CONSENT = 15


def logged_type(kind: RecordType, version: int = VERSION_CURRENT) -> int:
    """The WAL type number of `kind`'s record at `version`."""
    return version << _VERSION_SHIFT | kind


def split_type(logged: int) -> tuple[RecordType, int]:
    """(operation, version) of a WAL type number; ValueError for an operation unknown here."""
    return RecordType(logged & _OPERATION_MASK), logged >> _VERSION_SHIFT


class Record(msgspec.Struct, array_like=True, gc=False):
    """A log record. `secret_fields`: fields holding a secret (hex) or a map of key ids to
    secrets, replaced when a record is printed. Untracked by the garbage collector (`gc=False`):
    a record holds strings, numbers, lists and dicts of them, never a cycle, and a batch makes
    thousands."""

    secret_fields: ClassVar[frozenset[str]] = frozenset()

    def logged_key(self) -> tuple[bytes, bytes, int] | None:
        """The idempotency key the record reserved: (key, fingerprint, reserved at), or None."""
        return None


def _key(key: str | None, fingerprint: str, created_s: int) -> tuple[bytes, bytes, int] | None:
    return None if key is None else (key.encode(), bytes.fromhex(fingerprint), created_s)


class Keyed(Record):
    """The idempotency key a deposit or withdrawal sent with an Idempotency-Key reserved."""

    key: str
    fingerprint: str  # hex
    created_s: int


class AccountRecord(Record):
    """OPEN_ACCOUNT (amount 0), DEPOSIT and WITHDRAW, with the failure they had."""

    account_id: str
    currency: str
    amount: int
    overdraft: bool
    idempotency: Keyed | None = None
    failure_code: str | None = None

    def logged_key(self) -> tuple[bytes, bytes, int] | None:
        keyed = self.idempotency
        return None if keyed is None else _key(keyed.key, keyed.fingerprint, keyed.created_s)


class PaymentRecord(Record):
    """PAYMENT_WITH_CONSENT (and PAYMENT, replayed by the rules before consent)."""

    merchant_id: str
    order_id: str
    payer: str
    settlement_account: str
    amount: int
    currency: str
    description: str | None
    metadata: dict[str, str] | None
    created_s: int
    idempotency_key: str | None  # None in logs written before payments took keys
    fingerprint: str  # hex
    failure_code: str | None = None

    def logged_key(self) -> tuple[bytes, bytes, int] | None:
        return _key(self.idempotency_key, self.fingerprint, self.created_s)


class RefundRecord(Record):
    payment_id: str
    merchant_id: str
    amount_requested: int | None
    reason: str | None
    created_s: int
    idempotency_key: str | None
    fingerprint: str  # hex
    # What the refund gave back, and its failure.
    amount: int = 0
    failure_code: str | None = None

    def logged_key(self) -> tuple[bytes, bytes, int] | None:
        return _key(self.idempotency_key, self.fingerprint, self.created_s)


class MerchantCreated(Record):
    secret_fields: ClassVar[frozenset[str]] = frozenset(
        {"keys", "webhook_secret", "previous_webhook_secret"}
    )

    merchant_id: str
    settlement_account: str
    webhook_url: str | None
    keys: dict[str, str]  # kid -> secret (hex)
    webhook_secret: str | None
    previous_webhook_secret: str | None


class KeyAdded(Record):
    secret_fields: ClassVar[frozenset[str]] = frozenset({"secret"})

    merchant_id: str
    kid: str
    secret: str  # hex


class KeyRevoked(Record):
    merchant_id: str
    kid: str


class WebhookSecretRotated(Record):
    secret_fields: ClassVar[frozenset[str]] = frozenset({"webhook_secret"})

    merchant_id: str
    webhook_secret: str  # hex


class PreviousWebhookSecretRevoked(Record):
    merchant_id: str


class Deliveries(Record):
    """Finished webhook attempts, each a DeliveryOutcome (a MessagePack array of its fields)."""

    outcomes: list[DeliveryOutcome]


class Redelivery(Record):
    at_ms: int
    event_lsns: list[int]


class MandateGranted(Record):
    """The terms of a mandate (its id is `mdt_<LSN>`); times without the unit suffix, as the
    API answers name them."""

    account_id: str
    merchant_id: str
    amount_max_per_payment: int
    amount_max_per_day: int | None
    expires_at: int | None
    created: int


class MandateRevoked(Record):
    account_id: str
    mandate_id: str
    revoked_at: int


# The one definition of each operation's record.
RECORDS: dict[RecordType, type[Record]] = {
    RecordType.OPEN_ACCOUNT: AccountRecord,
    RecordType.DEPOSIT: AccountRecord,
    RecordType.WITHDRAW: AccountRecord,
    RecordType.PAYMENT: PaymentRecord,
    RecordType.PAYMENT_WITH_CONSENT: PaymentRecord,
    RecordType.REFUND: RefundRecord,
    RecordType.MERCHANT_CREATED: MerchantCreated,
    RecordType.KEY_ADDED: KeyAdded,
    RecordType.KEY_REVOKED: KeyRevoked,
    RecordType.DELIVERIES: Deliveries,
    RecordType.REDELIVERY: Redelivery,
    RecordType.WEBHOOK_SECRET_ROTATED: WebhookSecretRotated,
    RecordType.PREVIOUS_WEBHOOK_SECRET_REVOKED: PreviousWebhookSecretRevoked,
    RecordType.MANDATE_GRANTED: MandateGranted,
    RecordType.MANDATE_REVOKED: MandateRevoked,
}
# Each record type's field names, in logged order (what `instapay wal dump` prints).
RECORD_FIELDS: dict[RecordType, tuple[str, ...]] = {
    kind: record.__struct_fields__ for kind, record in RECORDS.items()
}
# The WAL type each record is written under.
CURRENT_TYPES: dict[RecordType, int] = {kind: logged_type(kind) for kind in RecordType}
SECRET_REDACTED = "<secret>"  # noqa: S105 (what a printed secret is replaced by)

_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode


class RecordDecodeError(ValueError):
    """A payload that is not a record of its logged type (or of a version unknown here)."""


def decode(logged: int, payload: bytes) -> tuple[RecordType, Record]:
    """The operation and the typed record of a logged (type, payload), of any version."""
    reader = _READERS.get(logged)
    if reader is None:
        raise RecordDecodeError(_unknown(logged))
    kind, read = reader
    try:
        return kind, read(payload)
    except (msgspec.DecodeError, ValueError, TypeError, KeyError) as error:
        raise RecordDecodeError(f"a {kind.name} record that does not decode: {error}") from None


def _unknown(logged: int) -> str:
    try:
        kind, version = split_type(logged)
    except ValueError:
        return f"record type {logged} names an operation unknown to this code"
    return f"{kind.name} records of version {version} are newer than this code"


def _legacy(kind: RecordType, record: type[Record]) -> Callable[[bytes], Record]:
    """The reader of version-0 (JSON) records of `kind`."""
    convert = _LEGACY_SHAPES.get(kind)
    if convert is None:  # a JSON array of the Struct's fields, in order
        return msgspec.json.Decoder(record).decode
    return lambda payload: convert(orjson.loads(payload))


def _legacy_account(fields: list[Any]) -> AccountRecord:
    """[account, currency, amount, overdraft, failure], or with {"key", "fingerprint",
    "created_s"} before the failure when the request had an Idempotency-Key."""
    head, keyed = fields[:4], fields[4:-1]
    return msgspec.convert(
        [*head, _from_object(Keyed, keyed[0]) if keyed else None, fields[-1]], AccountRecord
    )


def _from_object(record: type[Record], fields: dict[str, Any]) -> list[Any]:
    """A JSON object naming a record's fields as the array the record is."""
    return [fields[name] for name in record.__struct_fields__]


def _legacy_mandate(record: type[Record]) -> Callable[[dict[str, Any]], Record]:
    """Mandate records were JSON objects naming their fields."""
    return lambda fields: msgspec.convert(_from_object(record, fields), record)


_LEGACY_SHAPES: dict[RecordType, Callable[[Any], Record]] = {
    RecordType.OPEN_ACCOUNT: _legacy_account,
    RecordType.DEPOSIT: _legacy_account,
    RecordType.WITHDRAW: _legacy_account,
    RecordType.DELIVERIES: lambda outcomes: msgspec.convert([outcomes], Deliveries),
    RecordType.MANDATE_GRANTED: _legacy_mandate(MandateGranted),
    RecordType.MANDATE_REVOKED: _legacy_mandate(MandateRevoked),
}


def as_current(logged: int, payload: bytes) -> tuple[int, bytes]:
    """A record of any version as the current version writes it: (logged type, payload). The
    history projector reads only these (`storage.history.projector`)."""
    kind, record = decode(logged, payload)
    return logged_type(kind), encode(record)


def named(record: Record) -> dict[str, Any]:
    """A record's fields by name, nested records too."""
    return {name: _plain(getattr(record, name)) for name in record.__struct_fields__}


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return named(value)
    if isinstance(value, DeliveryOutcome):
        return value._asdict()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def redacted(record: Record) -> dict[str, Any]:
    """A record's fields by name with its secrets replaced, for printing (`instapay wal dump`)."""
    by_name = named(record)
    for name in record.secret_fields:
        value = by_name[name]
        if isinstance(value, dict):
            by_name[name] = dict.fromkeys(value, SECRET_REDACTED)
        elif value is not None:
            by_name[name] = SECRET_REDACTED
    return by_name


# The reader of each logged type this code knows: (operation, payload -> record).
_READERS: dict[int, tuple[RecordType, Callable[[bytes], Record]]] = {
    **{
        logged_type(kind, VERSION_LEGACY_JSON): (kind, _legacy(kind, record))
        for kind, record in RECORDS.items()
    },
    **{
        logged_type(kind): (kind, msgspec.msgpack.Decoder(record).decode)
        for kind, record in RECORDS.items()
    },
}
