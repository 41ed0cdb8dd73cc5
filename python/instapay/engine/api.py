"""What HTTP, the webhook dispatcher, embedders and tests call besides submitting signed
requests: the admin and dispatcher operations, each made into an op for `engine.handlers` after
the input rules (`instapay.rules`), and the reads of the state. `Engine` (`engine.pipeline`)
provides the two things this needs: the state, and `control`, which logs an op in order with
the payments."""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Sequence
from typing import Any, TypeVar

from instapay import _core
from instapay.engine.ops import AdminOp, Applied, ControlOp, MerchantOp, money_op
from instapay.engine.records import (
    Deliveries,
    KeyAdded,
    KeyRevoked,
    MandateGranted,
    MandateRevoked,
    PreviousWebhookSecretRevoked,
    RecordType,
    Redelivery,
    WebhookSecretRotated,
)
from instapay.engine.results import Results
from instapay.engine.state import State
from instapay.ledger import Ledger
from instapay.mandates import EXPIRES_AT_MAX_S, Mandate
from instapay.merchants import Merchants, new_kid, new_secret
from instapay.model import AdminResult, Merchant, PaymentResult, RequestError
from instapay.outbox import DeliveryOutcome, Outbox
from instapay.rules import check_account, check_amount, check_id, check_webhook_url


class EngineApi(abc.ABC):
    """The operations and reads; see the module docstring."""

    state: State

    @abc.abstractmethod
    async def control(self, op: ControlOp) -> Applied:
        """Applies one control change (an op of `engine.handlers`) in log order with the
        payments, once durable: what an operation without a method of its own is submitted as.
        Raises the RequestError its handler's check refuses it with."""
        raise NotImplementedError

    async def _admin(self, op: AdminOp) -> AdminResult:
        return _expect(AdminResult, await self.control(op))

    async def open_account(
        self, account_id: str, currency: str, *, overdraft: bool = False
    ) -> AdminResult:
        check_account(account_id, currency)
        return await self._admin(
            AdminOp(RecordType.OPEN_ACCOUNT, account_id, currency, 0, overdraft)
        )

    async def deposit(
        self, account_id: str, amount: int, currency: str, *, idempotency_key: str | None = None
    ) -> AdminResult:
        """With a key, a retry (same key, same deposit) gets the first result again
        (`replayed`) and another deposit under the key is refused (`idempotency_key_reused`)."""
        op = money_op(RecordType.DEPOSIT, account_id, amount, currency, idempotency_key)
        return await self._admin(op)

    async def withdraw(
        self, account_id: str, amount: int, currency: str, *, idempotency_key: str | None = None
    ) -> AdminResult:
        """Like `deposit`, the other way."""
        op = money_op(RecordType.WITHDRAW, account_id, amount, currency, idempotency_key)
        return await self._admin(op)

    async def create_merchant(
        self, merchant_id: str, settlement_account: str, webhook_url: str | None = None
    ) -> Merchant:
        """A new merchant with a fresh key (and a webhook secret if it has a webhook URL); the
        returned Merchant holds the secrets, which the caller shows once."""
        check_id("merchant id", merchant_id)
        check_id("settlement_account", settlement_account)
        if webhook_url is not None:
            check_webhook_url(webhook_url)
        merchant = Merchant(
            merchant_id,
            settlement_account,
            {new_kid(): new_secret()},
            webhook_url,
            None if webhook_url is None else new_secret(),
        )
        return _expect(Merchant, await self.control(MerchantOp(merchant)))

    async def add_key(self, merchant_id: str) -> tuple[str, bytes]:
        """A new key for the merchant, valid at once next to its other keys: (kid, secret)."""
        kid, secret = new_kid(), new_secret()
        await self.control(KeyAdded(merchant_id, kid, secret.hex()))
        return kid, secret

    async def revoke_key(self, merchant_id: str, kid: str) -> Merchant:
        """Revokes a key; requests signed with it fail from the next batch on."""
        op = KeyRevoked(merchant_id, kid)
        return _expect(Merchant, await self.control(op))

    async def rotate_webhook_secret(self, merchant_id: str) -> bytes:
        """A new webhook secret; the old one signs deliveries too until it is revoked."""
        secret = new_secret()
        op = WebhookSecretRotated(merchant_id, secret.hex())
        await self.control(op)
        return secret

    async def revoke_previous_webhook_secret(self, merchant_id: str) -> Merchant:
        op = PreviousWebhookSecretRevoked(merchant_id)
        return _expect(Merchant, await self.control(op))

    async def record_deliveries(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """Logs finished webhook attempts (one record), so a restart resumes the schedule."""
        await self.control(Deliveries(list(outcomes)))

    async def redeliver(self, event_lsns: Sequence[int]) -> None:
        """Starts a fresh round of deliveries for these events, due now."""
        lsns = list(dict.fromkeys(event_lsns))  # each event once
        await self.control(Redelivery(int(time.time() * 1000), lsns))

    async def grant_mandate(
        self,
        account_id: str,
        merchant_id: str,
        amount_max_per_payment: int,
        *,
        amount_max_per_day: int | None = None,
        expires_at_s: int | None = None,
    ) -> Mandate:
        """Records that the payer account lets the merchant debit it within these limits."""
        check_id("account id", account_id)
        check_id("merchant_id", merchant_id)
        check_amount(amount_max_per_payment, "amount_max_per_payment")
        if amount_max_per_day is not None:
            check_amount(amount_max_per_day, "amount_max_per_day")
            if amount_max_per_day < amount_max_per_payment:
                raise RequestError(
                    "invalid_request", "amount_max_per_day: at least amount_max_per_payment"
                )
        now_s = int(time.time())
        if expires_at_s is not None and not now_s < expires_at_s <= EXPIRES_AT_MAX_S:
            raise RequestError(
                "invalid_request",
                f"expires_at: unix seconds after now ({now_s}) and at most {EXPIRES_AT_MAX_S}",
            )
        grant = MandateGranted(
            account_id, merchant_id, amount_max_per_payment, amount_max_per_day, expires_at_s, now_s
        )
        return _expect(Mandate, await self.control(grant))

    async def revoke_mandate(self, account_id: str, mandate_id: str) -> Mandate:
        """Ends a mandate: payments under it are declined (`mandate_missing`) from now on."""
        op = MandateRevoked(account_id, mandate_id, int(time.time()))
        return _expect(Mandate, await self.control(op))

    # ---- the state, for reads (HTTP, the dispatcher, tests) --------------------------------

    @property
    def ledger(self) -> Ledger:
        return self.state.ledger

    @property
    def merchants(self) -> Merchants:
        return self.state.merchants

    @property
    def outbox(self) -> Outbox:
        return self.state.outbox

    @property
    def deliveries_due(self) -> asyncio.Event:
        """Set when a webhook delivery becomes due; the dispatcher waits on it and clears it
        before each look at the outbox."""
        return self.state.outbox.due

    @property
    def index(self) -> _core.IdempotencyIndex:
        return self.state.index

    @property
    def results(self) -> Results:
        return self.state.results

    @property
    def lsn_next(self) -> int:
        return self.state.lsn_next

    def balance(self, account_id: str) -> tuple[str, int] | None:
        """(currency, balance) of an account, including the batch being made durable."""
        return self.state.balance(account_id)

    def mandates_of(self, account_id: str) -> list[Mandate] | None:
        """An account's mandates, oldest first (revoked and expired ones too); None if there is
        no such account."""
        return self.state.mandates_of(account_id)

    def event(self, lsn: int) -> dict[str, Any] | None:
        return self.state.event(lsn)

    def payment(self, payment_id_: str) -> PaymentResult | None:
        """A durable payment by id."""
        return self.state.payment(payment_id_)

    def payments_for_order(self, merchant_id: str, order_id: str) -> list[PaymentResult]:
        """The durable payments a merchant made for one order id, oldest first."""
        return self.state.payments_for_order(merchant_id, order_id)

    def refund_lsns(self, payment_id_: str) -> list[int]:
        """The LSNs of a payment's durable refunds, declined ones included, oldest first."""
        return self.state.refund_lsns(payment_id_)

    def check_invariants(self) -> None:
        """The state's invariants (`State.check_invariants`); raises AssertionError."""
        self.state.check_invariants()


T = TypeVar("T")


def _expect(kind: type[T], value: object) -> T:
    """The pipeline's answer, of the type the operation produces; anything else is a bug."""
    if not isinstance(value, kind):
        raise TypeError(f"expected a {kind.__name__}, the pipeline produced {value!r}")
    return value
