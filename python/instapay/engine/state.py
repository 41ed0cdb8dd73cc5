"""The engine's state: the ledger, merchants, the outbox, the idempotency index and the durable
results, and the reads HTTP answers from. What each operation checks and changes is in
`handlers`; nothing here does I/O."""

from __future__ import annotations

from typing import Any

from instapay import _core
from instapay.engine.results import Results
from instapay.ledger import Ledger, Owner
from instapay.mandates import (
    Mandate,
)
from instapay.merchants import Merchants
from instapay.model import (
    AdminResult,
    EngineConfig,
    PaymentResult,
    RefundResult,
)
from instapay.outbox import Outbox, event_json
from instapay.protocol import payment_lsn


class State:
    """Everything a replay of the log rebuilds, and the reads HTTP answers from."""

    def __init__(
        self,
        config: EngineConfig,
        idempotency_capacity: int,
        idempotency_ttl_s: int = _core.IDEMPOTENCY_TTL_SECONDS_DEFAULT,
    ) -> None:
        self.merchants = Merchants(config.merchants)
        self.outbox = Outbox()
        self.ledger = Ledger()
        self.index = _core.IdempotencyIndex(
            idempotency_capacity,
            idempotency_ttl_s,
            tenant_share_percent=config.idempotency_share_percent,
        )
        # Durable payment and refund results by LSN (their ids carry the LSN), native, with the
        # payments of each (merchant, order id) and the refunds of each payment.
        self.results = Results()
        # Durable deposits and withdrawals sent with an Idempotency-Key, by LSN: what a retry
        # gets again.
        self.admin_results: dict[int, AdminResult] = {}
        # The LSN the next record applied gets.
        self.lsn_next = 1

    def mandates_of(self, account_id: str) -> list[Mandate] | None:
        """An account's mandates, oldest first (revoked and expired ones too); None if there is
        no such account."""
        if self.ledger.account(account_id) is None:
            return None
        return self.ledger.mandates_of(account_id)

    def event(self, lsn: int) -> dict[str, Any] | None:
        result = self.results.get(lsn)
        return None if result is None else event_json(lsn, result)

    def balance(self, account_id: str) -> tuple[str, int] | None:
        """(currency, balance) of an account, including the batch being made durable."""
        account = self.ledger.account(account_id)
        return None if account is None else (account.currency, account.balance)

    def remember(
        self, lsn: int, result: PaymentResult | RefundResult, *, notify: bool = True
    ) -> None:
        """Keeps a durable result for replays and reads; its event goes to the outbox, and to
        the merchant's webhook if it has one (`notify=False`: a snapshot restores deliveries)."""
        self.results.add(lsn, result)
        self.outbox.add_event(result.merchant_id, lsn)
        merchant = self.merchants.get(result.merchant_id)
        if notify and merchant is not None and merchant.webhook_url is not None:
            self.outbox.schedule_new(merchant.id, lsn, result.created_s * 1000)

    def payments_for_order(self, merchant_id: str, order_id: str) -> list[PaymentResult]:
        """The durable payments a merchant made for one order id, oldest first."""
        lsns = self.results.payments_for_order(merchant_id, order_id)
        return [self.as_now(result) for lsn in lsns if (result := self.results.payment(lsn))]

    def payment(self, payment_id_: str) -> PaymentResult | None:
        """A durable payment by id."""
        lsn = payment_lsn(payment_id_)
        result = None if lsn is None else self.results.payment(lsn)
        return None if result is None else self.as_now(result)

    def as_now(self, payment: PaymentResult) -> PaymentResult:
        """A stored payment with what its durable refunds gave back so far."""
        refunded = self.results.amount_refunded(payment.id)
        return payment._replace(amount_refunded=refunded) if refunded else payment

    def refund_lsns(self, payment_id_: str) -> list[int]:
        """The LSNs of a payment's durable refunds, declined ones included, oldest first."""
        return self.results.refunds_of(payment_id_)

    def owner_of(self, account_id: str) -> Owner:
        """A merchant's settlement account is the merchant's; any other account a customer's."""
        settles = any(m.settlement_account == account_id for m in self.merchants.by_id.values())
        return Owner.MERCHANT if settles else Owner.CUSTOMER

    def mark_settlement_accounts(self) -> None:
        """Gives the settlement accounts of all merchants their owner: a snapshot written before
        owners were kept has none, and a merchant may be new in the configuration file."""
        for merchant in self.merchants.by_id.values():
            self.ledger.settles_merchant(merchant.settlement_account)

    def check_invariants(self) -> None:
        """The ledger's invariants, and what only the payments' results tell (the ledger knows
        neither whose a payment is nor when it was made): each payment under a mandate was made
        by the mandate's merchant, before the mandate's expiry. Raises AssertionError."""
        self.ledger.check_invariants()
        # From the durable results (payments not yet durable have none): the ledger holds every
        # payment that succeeded, and checks them all in one native call.
        self.ledger.check_payments_made(self.results.native)
