"""The engine's state machine: the ledger, merchants, the outbox, the idempotency index and the
durable results, with the checks and changes each operation makes. The same code applies live
(`check`, then `apply`) and on recovery (`replay_*`); nothing here does I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from instapay import _core
from instapay.engine.ops import (
    AdminOp,
    Applied,
    DeliveriesOp,
    KeyOp,
    MerchantOp,
    Op,
    PaymentOp,
    RedeliveryOp,
    RefundOp,
    WebhookSecretOp,
    control_record,
    mandate_record,
)
from instapay.engine.records import RecordType
from instapay.ledger import Ledger, Owner
from instapay.mandates import (
    MANDATES_PER_ACCOUNT_MAX,
    Mandate,
    MandateGrant,
    MandateRevocation,
)
from instapay.merchants import Merchants, merchant_from_row
from instapay.model import (
    AdminResult,
    EngineConfig,
    Failure,
    Merchant,
    PaymentResult,
    Recorded,
    RefundResult,
    RequestError,
    Status,
)
from instapay.outbox import DeliveryOutcome, Outbox, event_id, event_json
from instapay.protocol import payment_id, payment_lsn, refund_id


def _status(failure: Failure | None) -> Status:
    return Status.FAILED if failure else Status.SUCCEEDED


@dataclass(slots=True)
class _Refunds:
    """The durable refunds of one payment."""

    lsns: list[int] = field(default_factory=list)  # oldest first
    amount: int = 0  # refunded by those that succeeded

    def add(self, lsn: int, refund: RefundResult) -> None:
        self.lsns.append(lsn)
        if refund.status == Status.SUCCEEDED:
            self.amount += refund.amount


class State:
    """Everything a replay of the log rebuilds, and the reads HTTP answers from."""

    def __init__(self, config: EngineConfig, idempotency_capacity: int) -> None:
        self.merchants = Merchants(config.merchants)
        self.outbox = Outbox()
        self.ledger = Ledger()
        self.index = _core.IdempotencyIndex(
            idempotency_capacity, tenant_share_percent=config.idempotency_share_percent
        )
        # Durable payment and refund results by LSN (their ids carry the LSN).
        self.results: dict[int, PaymentResult | RefundResult] = {}
        # Durable deposits and withdrawals sent with an Idempotency-Key, by LSN: what a retry
        # gets again.
        self.admin_results: dict[int, AdminResult] = {}
        # LSNs of the durable payments of each (merchant, order id), oldest first.
        self._orders: dict[tuple[str, str], list[int]] = {}
        # The durable refunds of each payment id.
        self._refunds: dict[str, _Refunds] = {}
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
        self.results[lsn] = result
        if isinstance(result, PaymentResult):
            self._orders.setdefault((result.merchant_id, result.order_id), []).append(lsn)
        else:
            self._refunds.setdefault(result.payment_id, _Refunds()).add(lsn, result)
        self.outbox.add_event(result.merchant_id, lsn)
        merchant = self.merchants.get(result.merchant_id)
        if notify and merchant is not None and merchant.webhook_url is not None:
            self.outbox.schedule_new(merchant.id, lsn, result.created_s * 1000)

    def payments_for_order(self, merchant_id: str, order_id: str) -> list[PaymentResult]:
        """The durable payments a merchant made for one order id, oldest first."""
        lsns = self._orders.get((merchant_id, order_id), [])
        return [
            self.as_now(result)
            for lsn in lsns
            if isinstance(result := self.results[lsn], PaymentResult)
        ]

    def payment(self, payment_id_: str) -> PaymentResult | None:
        """A durable payment by id."""
        lsn = payment_lsn(payment_id_)
        result = None if lsn is None else self.results.get(lsn)
        return self.as_now(result) if isinstance(result, PaymentResult) else None

    def as_now(self, payment: PaymentResult) -> PaymentResult:
        """A stored payment with what its durable refunds gave back so far."""
        refunds = self._refunds.get(payment.id)
        if refunds is None or not refunds.amount:
            return payment
        return payment._replace(amount_refunded=refunds.amount)

    def refund_lsns(self, payment_id_: str) -> list[int]:
        """The LSNs of a payment's durable refunds, declined ones included, oldest first."""
        refunds = self._refunds.get(payment_id_)
        return [] if refunds is None else refunds.lsns

    def refundable_by(self, paid: str, merchant: Merchant) -> bool:
        """Whether `merchant` may refund the payment: a durable payment it made, into its
        settlement account. The account alone does not say whose a payment is: a merchant added
        to the configuration file may settle into an account an admin-created merchant uses."""
        entry = self.ledger.payment(paid)
        made = self.results.get(payment_lsn(paid) or 0)
        return (
            entry is not None
            and made is not None
            and made.merchant_id == merchant.id
            and entry.settlement == merchant.settlement_account
        )

    def check(self, op: Op) -> None:
        """Refuses a change that cannot be applied, before anything is logged (RequestError)."""
        if isinstance(op, MerchantOp):
            self.merchants.check_create(op.merchant)
            settlement = op.merchant.settlement_account
            if self.ledger.account(settlement) is None:
                raise RequestError("account_not_found", f"no account {settlement}", 400)
            if any(m.settlement_account == settlement for m in self.merchants.by_id.values()):
                # Refunds are authorised by the settlement account: it must be one merchant's.
                raise RequestError(
                    "settlement_account_in_use", f"{settlement} settles another merchant", 409
                )
        elif isinstance(op, KeyOp) and op.kind == RecordType.KEY_ADDED:
            self.merchants.check_add_key(op.merchant_id, op.kid)
        elif isinstance(op, KeyOp):
            self.merchants.check_revoke_key(op.merchant_id, op.kid)
        elif isinstance(op, WebhookSecretOp) and op.kind == RecordType.WEBHOOK_SECRET_ROTATED:
            self.merchants.check_rotate_webhook_secret(op.merchant_id)
        elif isinstance(op, WebhookSecretOp):
            self.merchants.check_revoke_previous_webhook_secret(op.merchant_id)
        elif isinstance(op, DeliveriesOp | RedeliveryOp):
            lsns = (
                [outcome.event_lsn for outcome in op.outcomes]
                if isinstance(op, DeliveriesOp)
                else op.event_lsns
            )
            if unknown := [lsn for lsn in lsns if lsn not in self.results]:
                raise RequestError("not_found", f"no event {event_id(unknown[0])}", 404)
        elif isinstance(op, MandateGrant | MandateRevocation):
            self._check_mandate(op)

    def _check_mandate(self, op: MandateGrant | MandateRevocation) -> None:
        account = self.ledger.account(op.account_id)
        if account is None:
            raise RequestError("not_found", f"no account {op.account_id}", 404)
        if isinstance(op, MandateRevocation):
            mandate = self.ledger.mandate(op.mandate_id)
            if mandate is None or mandate.terms.account_id != op.account_id:
                raise RequestError("not_found", f"no mandate {op.mandate_id} of this account", 404)
            if mandate.revoked_s is not None:
                raise RequestError("mandate_revoked", f"{op.mandate_id} is already revoked", 409)
            return
        if account.owner is Owner.MERCHANT:
            raise RequestError(
                "account_is_settlement", "a merchant's settlement account never pays", 409
            )
        if self.merchants.get(op.merchant_id) is None:
            raise RequestError("merchant_not_found", f"no merchant {op.merchant_id}")
        current = self.ledger.current_mandate(op.account_id, op.merchant_id)
        if current is not None and not current.expired(op.created_s):
            raise RequestError(
                "mandate_exists", f"{current.id} lets {op.merchant_id} debit this account", 409
            )
        if len(self.ledger.mandates_of(op.account_id)) >= MANDATES_PER_ACCOUNT_MAX:
            raise RequestError(
                "too_many_mandates", f"an account holds at most {MANDATES_PER_ACCOUNT_MAX}", 409
            )

    def apply(self, op: Op, now_s: int, types: list[int], payloads: list[bytes]) -> Applied:
        """Applies a checked change and appends its record to `types` and `payloads`."""
        lsn = self.lsn_next
        self.lsn_next += 1
        result: Applied
        record: list[Any] | dict[str, Any]
        if isinstance(op, PaymentOp):
            record = [
                op.merchant.id,
                op.order_id,
                op.payer,
                op.merchant.settlement_account,
                op.amount,
                op.currency,
                op.description,
                op.metadata,
                now_s,
                op.key.decode(),
                op.fingerprint.hex(),
            ]
            paid = self.replay_payment(lsn, record, consent=True)
            record.append(paid.failure_code)
            kind, result = RecordType.PAYMENT_WITH_CONSENT, paid
        elif isinstance(op, RefundOp):
            record = [
                op.payment_id,
                op.merchant.id,
                op.amount,
                op.reason,
                now_s,
                op.key.decode() if op.key else None,
                op.fingerprint.hex(),
            ]
            refunded = self.replay_refund(lsn, record)
            record += [refunded.amount, refunded.failure_code]
            kind, result = RecordType.REFUND, refunded
        elif isinstance(op, AdminOp):
            record = [op.account_id, op.currency, op.amount, op.overdraft]
            done = self.replay_admin(op.kind, record)
            if op.key is not None:
                keyed = {"key": op.key.decode(), "fingerprint": op.fingerprint.hex()}
                record.append({**keyed, "created_s": now_s})
            record.append(done.failure_code)
            kind, result = op.kind, done
        elif isinstance(op, MandateGrant | MandateRevocation):
            kind, record = mandate_record(op)
            result = self.replay_mandate(kind, lsn, record)
        else:
            kind, record = control_record(op)
            result = self.replay_control(kind, lsn, record)
        types.append(kind)
        payloads.append(orjson.dumps(record))
        return result

    def replay_payment(self, lsn: int, record: list[Any], *, consent: bool) -> PaymentResult:
        """Applies a payment record; `consent`: under the consent rules (PAYMENT_WITH_CONSENT),
        else as payments were applied before them (PAYMENT)."""
        (
            merchant_id,
            order_id,
            payer,
            settlement,
            amount,
            currency,
            description,
            metadata,
            created_s,
        ) = record[:9]
        pid = payment_id(lsn)
        failure = (
            self.ledger.pay(
                lsn,
                payer,
                settlement,
                amount,
                currency,
                merchant_id=merchant_id,
                created_s=created_s,
            )
            if consent
            else self.ledger.pay_as_before_consent(lsn, payer, settlement, amount, currency)
        )
        return PaymentResult(
            pid,
            merchant_id,
            order_id,
            payer,
            amount,
            currency,
            _status(failure),
            failure,
            created_s,
            description,
            metadata,
        )

    def replay_refund(self, lsn: int, record: list[Any]) -> RefundResult:
        paid, merchant_id, amount, reason, created_s = record[:5]
        applied, failure = self.ledger.refund(paid, amount)
        entry = self.ledger.payment(paid)
        currency = entry.currency if entry else ""
        return RefundResult(
            refund_id(lsn),
            paid,
            merchant_id,
            applied,
            currency,
            _status(failure),
            failure,
            created_s,
            reason,
        )

    def replay_admin(self, kind: RecordType, record: list[Any]) -> AdminResult:
        account_id, currency, amount, overdraft = record[:4]
        if kind == RecordType.OPEN_ACCOUNT:
            failure = self.ledger.open_account(
                account_id, currency, overdraft, self._owner_of(account_id)
            )
        elif kind == RecordType.DEPOSIT:
            failure = self.ledger.deposit(account_id, amount, currency)
        else:
            failure = self.ledger.withdraw(account_id, amount, currency)
        account = self.ledger.account(account_id)
        balance = account.balance if account else 0
        return AdminResult(account_id, _status(failure), failure, balance)

    def replay_control(self, kind: RecordType, lsn: int, record: list[Any]) -> Applied:
        """Applies a merchant, key or delivery change; its check has passed (or it is logged)."""
        if kind == RecordType.MERCHANT_CREATED:
            merchant = merchant_from_row(record)
            self.merchants.create(merchant)
            self.ledger.settles_merchant(merchant.settlement_account)
            return merchant
        if kind == RecordType.KEY_ADDED:
            merchant_id, kid, secret = record
            return self.merchants.add_key(merchant_id, kid, bytes.fromhex(secret))
        if kind == RecordType.KEY_REVOKED:
            return self.merchants.revoke_key(*record)
        if kind == RecordType.WEBHOOK_SECRET_ROTATED:
            merchant_id, secret = record
            return self.merchants.rotate_webhook_secret(merchant_id, bytes.fromhex(secret))
        if kind == RecordType.PREVIOUS_WEBHOOK_SECRET_REVOKED:
            return self.merchants.revoke_previous_webhook_secret(*record)
        if kind == RecordType.DELIVERIES:
            for outcome in record:
                event_lsn = outcome[0]
                self.outbox.record(self.results[event_lsn].merchant_id, DeliveryOutcome(*outcome))
        elif kind == RecordType.REDELIVERY:
            at_ms, event_lsns = record
            for event_lsn in event_lsns:
                self.outbox.schedule(self.results[event_lsn].merchant_id, event_lsn, at_ms)
        else:
            raise ValueError(f"record type {kind!r} is not a control record")
        return Recorded(lsn)

    def replay_mandate(self, kind: RecordType, lsn: int, record: dict[str, Any]) -> Mandate:
        """Applies a checked (or logged) mandate grant or revocation."""
        if kind == RecordType.MANDATE_GRANTED:
            return self.ledger.grant_mandate(lsn, MandateGrant.from_record(record))
        return self.ledger.revoke_mandate(record["mandate_id"], record["revoked_at"])

    def _owner_of(self, account_id: str) -> Owner:
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
        made = [
            (lsn, result.merchant_id, result.created_s)
            for lsn, result in self.results.items()
            if result.failure_code is None and result.__class__ is PaymentResult
        ]
        self.ledger.check_payments_made(
            [lsn for lsn, _, _ in made], [m for _, m, _ in made], [c for _, _, c in made]
        )
