"""The double-entry ledger: accounts, and the payments and refunds that move money between them.

Single writer and deterministic: the same operations in the same (WAL) order give the same
balances and the same results, which is what recovery relies on. Money is integers in minor
units. A payment debits the payer and credits the merchant's settlement account, so the sum of
the balances of a currency changes only by deposits and withdrawals (`check_invariants`).

Consent: a payment debits a payer only under a mandate the payer granted that merchant
(instapay.mandates), and a merchant's settlement account (owner `merchant`) never pays.

The state and its rules are native (`rust/state/`, `_core.Ledger`): compact, with the same
declines in the same order as the Python ledger they replace. This module is the typed API over
it: operations return a `Failure` or None, reads return frozen views built on demand
(`Account`, `PaymentEntry`, `Mandate`), never the state itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from instapay import _core
from instapay.mandates import Mandate, MandateGrant, mandate_id
from instapay.model import Failure

# No balance may exceed this (amounts are at most 10**15), nor go below minus this on overdraft.
BALANCE_MAX = _core.BALANCE_MAX

# A decline code of the native ledger (or None) -> its Failure (or None): one dict lookup.
_FAILURES: dict[str | None, Failure] = {failure.value: failure for failure in Failure}


class Owner(StrEnum):
    """Whose an account is: a customer's (it may pay, under its mandates) or a merchant's
    settlement account (it receives payments and pays refunds, never a payment)."""

    CUSTOMER = "customer"
    MERCHANT = "merchant"


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    currency: str
    overdraft: bool
    balance: int = 0
    owner: Owner = Owner.CUSTOMER


@dataclass(frozen=True, slots=True)
class PaymentEntry:
    """A succeeded payment, kept so refunds can be checked against it."""

    payer: str
    settlement: str
    amount: int
    currency: str
    refunded: int = 0
    # The mandate that allowed it; None for a payment logged before consent was checked.
    mandate: str | None = None


def _account(row: tuple[str, str, bool, int, str]) -> Account:
    account_id, currency, overdraft, balance, owner = row
    return Account(account_id, currency, overdraft, balance, Owner(owner))


class Ledger:
    """The ledger's state (native) and the operations that change it."""

    __slots__ = ("_native",)

    def __init__(self, native: _core.Ledger | None = None) -> None:
        self._native = _core.Ledger() if native is None else native

    @property
    def native(self) -> _core.Ledger:
        """The native state, for the native calls that change it in bulk (the batch stage
        `_core.stage_batch`, a replay)."""
        return self._native

    def open_account(
        self,
        account_id: str,
        currency: str,
        overdraft: bool | None,
        owner: Owner = Owner.CUSTOMER,
    ) -> Failure | None:
        """Opens an account; `overdraft` None (an admin request's `"overdraft": null`, logged
        as such) is no overdraft, as the Python ledger read it."""
        native = self._native.open_account(account_id, currency, bool(overdraft), owner)
        return _FAILURES.get(native)

    def settles_merchant(self, account_id: str) -> None:
        """The account has become a merchant's settlement account (if it is open)."""
        self._native.settles_merchant(account_id)

    def grant_mandate(self, lsn: int, terms: MandateGrant) -> Mandate:
        """Records a checked mandate granted at `lsn` (its id is `mdt_<lsn>`); it replaces the
        payer's expired one for that merchant. The payer's account must be open."""
        return Mandate.from_row(self._native.grant_mandate(lsn, *terms))

    def revoke_mandate(self, mandate_id_: str, revoked_s: int) -> Mandate:
        """Ends a mandate; KeyError if there is none of that id."""
        return Mandate.from_row(self._native.revoke_mandate(mandate_id_, revoked_s))

    def deposit(self, account_id: str, amount: int, currency: str) -> Failure | None:
        return _FAILURES.get(self._native.deposit(account_id, amount, currency))

    def withdraw(self, account_id: str, amount: int, currency: str) -> Failure | None:
        return _FAILURES.get(self._native.withdraw(account_id, amount, currency))

    def pay(
        self,
        lsn: int,
        payer: str,
        settlement: str,
        amount: int,
        currency: str,
        *,
        merchant_id: str,
        created_s: int,
    ) -> Failure | None:
        """Debits the payer under its mandate for the merchant and credits the settlement
        account, or declines and changes nothing; the payment's id is `pay_<lsn>`, and LSNs come
        in log order. An unknown payer is `mandate_missing`, like a known one without a mandate:
        a merchant learns nothing of accounts that never consented."""
        return _FAILURES.get(
            self._native.pay(lsn, payer, settlement, amount, currency, merchant_id, created_s)
        )

    def pay_as_before_consent(
        self, lsn: int, payer: str, settlement: str, amount: int, currency: str
    ) -> Failure | None:
        """A payment as logged before mandates existed (a PAYMENT record): replayed by the rules
        it was applied under, so old logs give their logged outcomes."""
        return _FAILURES.get(
            self._native.pay_as_before_consent(lsn, payer, settlement, amount, currency)
        )

    def refund(self, payment_id: str, amount: int | None) -> tuple[int, Failure | None]:
        """Moves `amount` (None: all not yet refunded) back from the settlement account to the
        payer; returns the amount and the failure, if declined."""
        applied, code = self._native.refund(payment_id, amount)
        return applied, _FAILURES.get(code)

    # ---- reads: views built on demand ----------------------------------------------------------

    def account(self, account_id: str) -> Account | None:
        row = self._native.account(account_id)
        return None if row is None else _account(row)

    def accounts(self) -> list[Account]:
        """Every account, in the order they were opened."""
        return [_account(row) for row in self._native.accounts()]

    def __len__(self) -> int:
        """The number of accounts."""
        return len(self._native)

    @property
    def has_accounts(self) -> bool:
        return len(self._native) > 0

    def payment(self, payment_id: str) -> PaymentEntry | None:
        """The succeeded payment of that id (kept for refunds), or None."""
        row = self._native.payment(payment_id)
        if row is None:
            return None
        mandate_lsn = row[5]
        return PaymentEntry(*row[:5], None if mandate_lsn is None else mandate_id(mandate_lsn))

    def mandate(self, mandate_id_: str) -> Mandate | None:
        row = self._native.mandate(mandate_id_)
        return None if row is None else Mandate.from_row(row)

    def mandates_of(self, account_id: str) -> list[Mandate]:
        """An account's mandates, oldest first (revoked and expired ones too)."""
        return [Mandate.from_row(row) for row in self._native.mandates_of(account_id)]

    def current_mandate(self, payer: str, merchant_id: str) -> Mandate | None:
        """The payer's mandate for the merchant that is not revoked (it may have expired)."""
        row = self._native.current_mandate(payer, merchant_id)
        return None if row is None else Mandate.from_row(row)

    # ---- invariants and snapshots --------------------------------------------------------------

    def check_invariants(self) -> None:
        """Per currency, balances sum to deposits minus withdrawals; no balance breaks its floor;
        no payment is refunded beyond its amount; no money left an account without its owner's
        consent. Raises AssertionError naming the breach."""
        self._native.check_invariants()

    def check_payments_made(self, results: _core.Results) -> None:
        """What only the payments' results tell (the ledger knows neither whose a payment is nor
        when it was made): each succeeded payment of `results`, if made under a mandate, was
        made by the mandate's merchant before its expiry. Raises AssertionError."""
        self._native.check_payments_made(results)

    def to_snapshot(self) -> bytes:
        """The whole state in the native snapshot format (`rust/state/snapshot.rs`)."""
        return self._native.to_snapshot()

    @classmethod
    def from_snapshot(cls, state: bytes | dict[str, Any]) -> Ledger:
        """A ledger from `to_snapshot`'s bytes, or from the JSON object of a snapshot written
        before the ledger was native (one written before consent too: its accounts are
        customers', the engine marks settlement accounts from its merchants; its payments carry
        no mandate; it holds no mandates). ValueError for a damaged snapshot, AssertionError for
        a state that breaks the invariants."""
        if isinstance(state, bytes):
            return cls(_core.Ledger.from_snapshot(state))
        return cls(_core.Ledger.from_legacy_json(orjson.dumps(state)))
