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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from instapay.model import Failure

SECONDS_PER_DAY = 86_400
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


@dataclass(slots=True)
class Mandate:
    id: str
    terms: MandateGrant
    revoked_s: int | None = None
    # The UTC day of the latest debit, and the total debited on that day.
    spent_day: int = 0
    spent: int = 0

    def expired(self, now_s: int) -> bool:
        expires_at_s = self.terms.expires_at_s
        return expires_at_s is not None and now_s >= expires_at_s

    def spent_on(self, day: int) -> int:
        """The spend counted against `day`. A payment stamped before the latest debit's day (the
        clock stepped back) counts into that later day: never a fresh allowance."""
        return self.spent if day <= self.spent_day else 0

    def decline(self, amount: int, created_s: int) -> Failure | None:
        """Why this mandate does not cover a payment of `amount` made at `created_s`, if so.
        Written out flat (no helper calls): it runs for every payment."""
        terms = self.terms
        expires_at_s = terms.expires_at_s
        if expires_at_s is not None and created_s >= expires_at_s:
            return Failure.MANDATE_EXPIRED
        if amount > terms.amount_max_per_payment:
            return Failure.MANDATE_AMOUNT_EXCEEDED
        per_day = terms.amount_max_per_day
        if per_day is not None:
            spent = self.spent if created_s // SECONDS_PER_DAY <= self.spent_day else 0
            if spent + amount > per_day:
                return Failure.MANDATE_DAILY_LIMIT_EXCEEDED
        return None

    def record_debit(self, amount: int, created_s: int) -> None:
        day = created_s // SECONDS_PER_DAY
        if day > self.spent_day:
            self.spent_day = day
            self.spent = amount
        else:
            self.spent += amount

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


SNAPSHOT_FIELDS = ("id", *MandateGrant._fields, "revoked_s", "spent_day", "spent")


def mandate_from_record(lsn: int, record: dict[str, Any]) -> Mandate:
    return Mandate(mandate_id(lsn), MandateGrant.from_record(record))


_NONE: dict[str, Mandate] = {}


class Mandates:
    """Every account's mandates, and per payer the one each merchant may use."""

    def __init__(self) -> None:
        self.by_id: dict[str, Mandate] = {}
        self.by_account: dict[str, list[Mandate]] = {}
        # payer -> merchant id -> its newest mandate not revoked: the lookup of every payment.
        self._current: dict[str, dict[str, Mandate]] = {}

    def current(self, payer: str, merchant_id: str) -> Mandate | None:
        """The payer's mandate for the merchant that is not revoked (it may have expired)."""
        return self._current.get(payer, _NONE).get(merchant_id)

    def add(self, mandate: Mandate) -> None:
        """Files a mandate newer than every one held (grants, and snapshot rows in grant order):
        it becomes the pair's current one, or, revoked, leaves the pair none, as its revocation
        did (an older, expired mandate must not come back from a snapshot)."""
        account_id, merchant_id = mandate.terms.account_id, mandate.terms.merchant_id
        self.by_id[mandate.id] = mandate
        self.by_account.setdefault(account_id, []).append(mandate)
        merchants = self._current.setdefault(account_id, {})
        if mandate.revoked_s is None:
            merchants[merchant_id] = mandate
        else:
            merchants.pop(merchant_id, None)

    def revoke(self, mandate_id_: str, revoked_s: int) -> Mandate:
        mandate = self.by_id[mandate_id_]
        mandate.revoked_s = revoked_s
        merchants = self._current.get(mandate.terms.account_id, _NONE)
        if merchants.get(mandate.terms.merchant_id) is mandate:
            del merchants[mandate.terms.merchant_id]
        return mandate

    def check_invariants(self) -> None:
        for mandate in self.by_id.values():
            per_day = mandate.terms.amount_max_per_day
            if per_day is not None and mandate.spent > per_day:
                raise AssertionError(
                    f"mandate {mandate.id} spent {mandate.spent} of {per_day} in a day"
                )
        for account_id, merchants in self._current.items():
            for merchant_id, mandate in merchants.items():
                if mandate.terms[:2] != (account_id, merchant_id):
                    raise AssertionError(f"mandate {mandate.id} is filed under the wrong pair")
                if mandate.revoked_s is not None:
                    raise AssertionError(f"revoked mandate {mandate.id} still allows payments")

    def to_snapshot(self) -> dict[str, Any]:
        """Rows under one header of field names: compact and quick to write (a snapshot pauses
        the pipeline: named objects took three times as long), and read by name, so a field
        appended to the header later shifts none of the others."""
        return {
            "fields": SNAPSHOT_FIELDS,
            "rows": [
                (m.id, *m.terms, m.revoked_s, m.spent_day, m.spent) for m in self.by_id.values()
            ],
        }

    @classmethod
    def from_snapshot(cls, state: dict[str, Any] | None) -> Mandates:
        """From `to_snapshot`'s state; None (a snapshot from before mandates): none."""
        mandates = cls()
        at = {name: index for index, name in enumerate(state["fields"])} if state else {}
        for row in state["rows"] if state else ():
            terms = MandateGrant(*(row[at[name]] for name in MandateGrant._fields))
            spend = (row[at["spent_day"]], row[at["spent"]])
            mandates.add(Mandate(row[at["id"]], terms, row[at["revoked_s"]], *spend))
        return mandates
