"""The double-entry ledger: accounts, and the payments and refunds that move money between them.

Single writer and deterministic: the same operations in the same (WAL) order give the same
balances and the same results, which is what recovery relies on. Money is integers in minor
units. A payment debits the payer and credits the merchant's settlement account, so the sum of
the balances of a currency changes only by deposits and withdrawals (`check_invariants`).

Consent: a payment debits a payer only under a mandate the payer granted that merchant
(instapay.mandates), and a merchant's settlement account (owner `merchant`) never pays.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from instapay.mandates import Mandate, Mandates
from instapay.model import Failure

# No balance may exceed this (amounts are at most 10**15), nor go below minus this on overdraft.
BALANCE_MAX = 10**18


class Owner(StrEnum):
    """Whose an account is: a customer's (it may pay, under its mandates) or a merchant's
    settlement account (it receives payments and pays refunds, never a payment)."""

    CUSTOMER = "customer"
    MERCHANT = "merchant"


# A module constant: the member lookup through the enum class costs more than the whole check.
_MERCHANT = Owner.MERCHANT


@dataclass(slots=True)
class Account:
    id: str
    currency: str
    overdraft: bool
    balance: int = 0
    owner: Owner = Owner.CUSTOMER


@dataclass(slots=True)
class PaymentEntry:
    """A succeeded payment, kept so refunds can be checked against it."""

    payer: str
    settlement: str
    amount: int
    currency: str
    refunded: int = 0
    # The mandate that allowed it; None for a payment logged before consent was checked.
    mandate: str | None = None


class Ledger:
    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.payments: dict[str, PaymentEntry] = {}
        self.mandates = Mandates()
        # Deposits minus withdrawals per currency: what the balances must sum to.
        self.net_inflow: dict[str, int] = {}

    def open_account(
        self, account_id: str, currency: str, overdraft: bool, owner: Owner = Owner.CUSTOMER
    ) -> Failure | None:
        if account_id in self.accounts:
            return Failure.ACCOUNT_EXISTS
        self.accounts[account_id] = Account(account_id, currency, overdraft, owner=owner)
        self.net_inflow.setdefault(currency, 0)
        return None

    def settles_merchant(self, account_id: str) -> None:
        """The account has become a merchant's settlement account (if it is open)."""
        if (account := self.accounts.get(account_id)) is not None:
            account.owner = Owner.MERCHANT

    def grant_mandate(self, mandate: Mandate) -> None:
        """Records a checked mandate; it replaces the payer's expired one for that merchant."""
        self.mandates.add(mandate)

    def revoke_mandate(self, mandate_id: str, revoked_s: int) -> Mandate:
        return self.mandates.revoke(mandate_id, revoked_s)

    def _account(self, account_id: str, currency: str) -> Account | Failure:
        account = self.accounts.get(account_id)
        if account is None:
            return Failure.ACCOUNT_NOT_FOUND
        if account.currency != currency:
            return Failure.CURRENCY_MISMATCH
        return account

    @staticmethod
    def _can_debit(account: Account, amount: int) -> Failure | None:
        floor = -BALANCE_MAX if account.overdraft else 0
        return Failure.INSUFFICIENT_FUNDS if account.balance - amount < floor else None

    @staticmethod
    def _can_credit(account: Account, amount: int) -> Failure | None:
        return Failure.AMOUNT_TOO_LARGE if account.balance + amount > BALANCE_MAX else None

    def deposit(self, account_id: str, amount: int, currency: str) -> Failure | None:
        account = self._account(account_id, currency)
        if isinstance(account, Failure):
            return account
        if failure := self._can_credit(account, amount):
            return failure
        account.balance += amount
        self.net_inflow[currency] += amount
        return None

    def withdraw(self, account_id: str, amount: int, currency: str) -> Failure | None:
        account = self._account(account_id, currency)
        if isinstance(account, Failure):
            return account
        if failure := self._can_debit(account, amount):
            return failure
        account.balance -= amount
        self.net_inflow[currency] -= amount
        return None

    def _transfer(  # noqa: PLR0911 (one return per way to decline, flat for speed)
        self, source: str, target: str, amount: int, currency: str
    ) -> Failure | None:
        """Moves `amount` or declines. Written out flat: it runs for every payment and refund."""
        debit = self.accounts.get(source)
        if debit is None:
            return Failure.ACCOUNT_NOT_FOUND
        if debit.currency != currency:
            return Failure.CURRENCY_MISMATCH
        credit = self.accounts.get(target)
        if credit is None:
            return Failure.ACCOUNT_NOT_FOUND
        if credit.currency != currency:
            return Failure.CURRENCY_MISMATCH
        if debit.balance - amount < (-BALANCE_MAX if debit.overdraft else 0):
            return Failure.INSUFFICIENT_FUNDS
        if credit.balance + amount > BALANCE_MAX:
            return Failure.AMOUNT_TOO_LARGE
        debit.balance -= amount
        credit.balance += amount
        return None

    def pay(
        self,
        payment_id: str,
        payer: str,
        settlement: str,
        amount: int,
        currency: str,
        *,
        merchant_id: str,
        created_s: int,
    ) -> Failure | None:
        """Debits the payer under its mandate for the merchant and credits the settlement
        account, or declines and changes nothing. An unknown payer is `mandate_missing`, like a
        known one without a mandate: a merchant learns nothing of accounts that never consented."""
        if payer == settlement:
            return Failure.PAYER_IS_MERCHANT
        account = self.accounts.get(payer)
        if account is not None and account.owner is _MERCHANT:
            return Failure.PAYER_NOT_AUTHORIZED
        mandate = self.mandates.current(payer, merchant_id)
        if mandate is None:
            return Failure.MANDATE_MISSING
        if failure := mandate.decline(amount, created_s):
            return failure
        if failure := self._transfer(payer, settlement, amount, currency):
            return failure
        mandate.record_debit(amount, created_s)
        # Positional: keywords cost a tenth of the whole payment here.
        self.payments[payment_id] = PaymentEntry(payer, settlement, amount, currency, 0, mandate.id)
        return None

    def pay_as_before_consent(
        self, payment_id: str, payer: str, settlement: str, amount: int, currency: str
    ) -> Failure | None:
        """A payment as logged before mandates existed (a PAYMENT record): replayed by the rules
        it was applied under, so old logs give their logged outcomes."""
        if payer == settlement:
            return Failure.PAYER_IS_MERCHANT
        if failure := self._transfer(payer, settlement, amount, currency):
            return failure
        self.payments[payment_id] = PaymentEntry(payer, settlement, amount, currency)
        return None

    def refund(self, payment_id: str, amount: int | None) -> tuple[int, Failure | None]:
        """Moves `amount` (None: all not yet refunded) back from the settlement account to the
        payer; returns the amount and the failure, if declined."""
        payment = self.payments.get(payment_id)
        if payment is None:
            return amount or 0, Failure.PAYMENT_NOT_REFUNDABLE
        remaining = payment.amount - payment.refunded
        wanted = remaining if amount is None else amount
        if wanted == 0 or wanted > remaining:
            return wanted, Failure.REFUND_EXCEEDS_PAYMENT
        failure = self._transfer(payment.settlement, payment.payer, wanted, payment.currency)
        if failure is None:
            payment.refunded += wanted
        return wanted, failure

    def check_invariants(self) -> None:
        """Per currency, balances sum to deposits minus withdrawals; no balance breaks its floor;
        no payment is refunded beyond its amount; no money left an account without its owner's
        consent. Raises AssertionError naming the breach."""
        sums = dict.fromkeys(self.net_inflow, 0)
        for account in self.accounts.values():
            sums[account.currency] += account.balance
            floor = -BALANCE_MAX if account.overdraft else 0
            if not floor <= account.balance <= BALANCE_MAX:
                raise AssertionError(f"account {account.id} balance {account.balance} out of range")
        if sums != self.net_inflow:
            raise AssertionError(f"balances {sums} differ from net inflows {self.net_inflow}")
        mandates = self.mandates.by_id
        consented = False  # whether a payment under the consent rules came before (log order)
        for payment_id, payment in self.payments.items():
            if not 0 <= payment.refunded <= payment.amount:
                raise AssertionError(f"payment {payment_id} refunded {payment.refunded}")
            # Consent: a mandate of the payer allowed the payment, within its per-payment limit
            # (the daily one is checked on the mandate's spend). Inline: it runs per payment.
            if payment.mandate is None and not consented:
                continue  # logged before consent was checked: such payments all come first
            consented = True
            mandate = None if payment.mandate is None else mandates.get(payment.mandate)
            if (
                mandate is None
                or mandate.terms.account_id != payment.payer
                or payment.amount > mandate.terms.amount_max_per_payment
            ):
                raise AssertionError(
                    f"payment {payment_id} debited {payment.payer} without consent"
                )
        self.mandates.check_invariants()

    def to_snapshot(self) -> dict[str, Any]:
        return {
            # Fields added later are appended, so rows of older snapshots still read.
            "accounts": [
                [a.id, a.currency, a.overdraft, a.balance, a.owner.value]
                for a in self.accounts.values()
            ],
            "payments": [
                [pid, p.payer, p.settlement, p.amount, p.currency, p.refunded, p.mandate]
                for pid, p in self.payments.items()
            ],
            "net_inflow": self.net_inflow,
            "mandates": self.mandates.to_snapshot(),
        }

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> Ledger:
        """A ledger from `to_snapshot`'s state, or from that of a snapshot written before
        consent: its accounts are customers' (the engine marks settlement accounts from its
        merchants), its payments carry no mandate, and it holds no mandates."""
        ledger = cls()
        for account_id, currency, overdraft, balance, *owner in state["accounts"]:
            ledger.accounts[account_id] = Account(
                account_id,
                currency,
                overdraft,
                balance,
                Owner(owner[0]) if owner else Owner.CUSTOMER,
            )
        for payment_id, payer, settlement, amount, currency, refunded, *mandate in state[
            "payments"
        ]:
            ledger.payments[payment_id] = PaymentEntry(
                payer, settlement, amount, currency, refunded, *mandate
            )
        ledger.net_inflow = dict(state["net_inflow"])
        ledger.mandates = Mandates.from_snapshot(state.get("mandates"))
        ledger.check_invariants()
        return ledger
