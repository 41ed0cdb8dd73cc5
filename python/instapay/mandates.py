"""Mandates: a payer account's standing consent that one merchant may debit it, as in SEPA direct
debit mandates, Alipay / WeChat Pay agreement payments and UPI AutoPay.

A mandate caps each payment (`amount_max_per_payment`), optionally the total of a UTC day
(`amount_max_per_day`), and optionally ends (`expires_at`, unix seconds). An account holds at most
one mandate per merchant that is neither revoked nor expired. Mandates and their spend are ledger
state: granted and revoked by logged records, changed by the payments they allow, snapshotted,
and replayed deterministically, because a payment's day is that of its logged `created` time,
never the clock at replay. A refund does not give back daily spend: the daily limit caps what a
merchant may pull from the payer in a day, and a pull refunded later was still a pull (this also
keeps the spend a function of the debits alone, whatever day a refund comes).

The rules and the state are native (`rust/state/mandates.rs`, through instapay.ledger); this
module holds the terms, the records and the read view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from instapay import _core
from instapay.ascii_digits import number_in_id

# The length of the UTC day a daily limit counts in (the native rules use the same constant).
SECONDS_PER_DAY = _core.SECONDS_PER_DAY
MANDATE_ID_PREFIX = "mdt_"
# Mandates an account may hold, revoked and expired ones included (they stay listed as the
# account's consent history): bounds the state and every list answer without paging.
MANDATES_PER_ACCOUNT_MAX = 100
# 9999-12-31T23:59:59Z: far enough for any real mandate, small enough for every client's integers.
EXPIRES_AT_MAX_S = 253_402_300_799


def mandate_id(lsn: int) -> str:
    return f"{MANDATE_ID_PREFIX}{lsn}"


def utc_day(unix_s: int) -> int:
    """Days since 1970-01-01, UTC: the day a daily limit counts in."""
    return unix_s // SECONDS_PER_DAY


# The named fields of the MANDATE_GRANTED and MANDATE_REVOKED records, in the order of the
# tuples below (the records name times without the unit suffix, as the API answers do).
GRANT_RECORD_FIELDS = (
    "account_id",
    "merchant_id",
    "amount_max_per_payment",
    "amount_max_per_day",
    "expires_at",
    "created",
)
REVOCATION_RECORD_FIELDS = ("account_id", "mandate_id", "revoked_at")


class MandateGrant(NamedTuple):
    """A mandate's terms, as an admin grants them (checked, then logged as MANDATE_GRANTED)."""

    account_id: str
    merchant_id: str
    amount_max_per_payment: int
    amount_max_per_day: int | None
    expires_at_s: int | None
    created_s: int

    def record(self) -> dict[str, Any]:
        """The MANDATE_GRANTED record (and the terms in a snapshot row and an API answer); the
        mandate's id is `mdt_<its LSN>`."""
        return dict(zip(GRANT_RECORD_FIELDS, self, strict=True))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> MandateGrant:
        return cls(*(record[name] for name in GRANT_RECORD_FIELDS))


class MandateRevocation(NamedTuple):
    account_id: str
    mandate_id: str
    revoked_s: int

    def record(self) -> dict[str, Any]:
        """The MANDATE_REVOKED record."""
        return dict(zip(REVOCATION_RECORD_FIELDS, self, strict=True))


# A mandate as the native ledger returns it: its LSN, the grant's fields in MandateGrant's order,
# then revoked_s, spent_day and spent.
MandateRow = tuple[int, str, str, int, int | None, int | None, int, int | None, int, int]


@dataclass(frozen=True, slots=True)
class Mandate:
    """A mandate as the ledger holds it, read at one moment: the ledger keeps the state (natively,
    `rust/state/mandates.rs`, which applies the limits) and builds these on demand."""

    id: str
    terms: MandateGrant
    revoked_s: int | None = None
    # The UTC day of the latest debit, and the total debited on that day.
    spent_day: int = 0
    spent: int = 0

    @classmethod
    def from_row(cls, row: MandateRow) -> Mandate:
        return cls(mandate_id(row[0]), MandateGrant(*row[1:7]), row[7], row[8], row[9])

    def expired(self, now_s: int) -> bool:
        expires_at_s = self.terms.expires_at_s
        return expires_at_s is not None and now_s >= expires_at_s

    def spent_on(self, day: int) -> int:
        """The spend counted against `day`. A payment stamped before the latest debit's day (the
        clock stepped back) counts into that later day: never a fresh allowance."""
        return self.spent if day <= self.spent_day else 0

    def status(self, now_s: int) -> str:
        if self.revoked_s is not None:
            return "revoked"
        return "expired" if self.expired(now_s) else "active"

    def to_json(self, now_s: int) -> dict[str, Any]:
        return {
            "object": "mandate",
            "id": self.id,
            **self.terms.record(),
            "revoked_at": self.revoked_s,
            "status": self.status(now_s),
            "amount_spent_today": self.spent_on(utc_day(now_s)),
        }


def mandate_lsn(mandate_id_: str) -> int | None:
    """The LSN a mandate id names, or None when it names none."""
    return number_in_id(mandate_id_, MANDATE_ID_PREFIX)
