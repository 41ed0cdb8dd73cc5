"""One handler per operation, in one table: how the operation is checked before anything is
logged (`check`), the record it logs (`record`; the record's definition, codec and secrets are
in `records`), how a record changes the state, live and on replay alike (`apply`), and what of
the outcome the record logs (`settle`, checked again on replay).

Adding an operation: its record (a Struct and a `RecordType` number in `records`), its handler
here, its route (`instapay.http`), its test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from instapay.engine.ops import AdminOp, Applied, MerchantOp, Op, PaymentOp, RefundOp
from instapay.engine.records import (
    CURRENT_TYPES,
    AccountRecord,
    Deliveries,
    KeyAdded,
    Keyed,
    KeyRevoked,
    MandateGranted,
    MandateRevoked,
    MerchantCreated,
    PaymentRecord,
    PreviousWebhookSecretRevoked,
    Record,
    RecordType,
    Redelivery,
    RefundRecord,
    WebhookSecretRotated,
    encode,
)
from instapay.ledger import Owner
from instapay.mandates import MANDATES_PER_ACCOUNT_MAX, Mandate, MandateGrant
from instapay.merchants import merchant_from_row, merchant_row
from instapay.model import (
    AdminResult,
    Failure,
    Merchant,
    PaymentResult,
    Recorded,
    RefundResult,
    RequestError,
    Status,
)
from instapay.outbox import event_id
from instapay.protocol import payment_id, refund_id

if TYPE_CHECKING:
    from instapay.engine.state import State


class ReplayMismatchError(ValueError):
    """A logged record does not replay to its logged outcome: a bug, or the configuration
    changed what the record depends on (a configured merchant's settlement account)."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"{detail}; was a configured merchant given an account that existed before, or "
            "removed? Restore the configuration the log was written under"
        )


@dataclass(frozen=True, slots=True)
class Handler:
    """An operation. `op`: the type the engine submits it as; `kinds`: the record types it logs
    (one, or one per variant: an account is opened, credited or debited)."""

    op: type[Any]
    kinds: tuple[RecordType, ...]
    check: Callable[[State, Any], None] | None
    record: Callable[[Any, int], tuple[RecordType, Record]]
    apply: Callable[[State, RecordType, int, Any], Applied]
    settle: Callable[[Any, Any], None] | None = None


def _status(failure: Failure | None) -> Status:
    return Status.FAILED if failure else Status.SUCCEEDED


# A handler without a check (None) refuses nothing up front: the rules were checked when its op
# was made, and what the state decides is its logged outcome (a decline).
def _itself(kind: RecordType) -> Callable[[Any, int], tuple[RecordType, Record]]:
    """An op that is its own record."""
    return lambda op, _now_s: (kind, op)


# ---- payments and refunds (the hot path: no check up front, the outcome is logged) ----------


def _payment_record(op: PaymentOp, now_s: int) -> tuple[RecordType, PaymentRecord]:
    merchant = op.merchant
    record = PaymentRecord(
        merchant.id,
        op.order_id,
        op.payer,
        merchant.settlement_account,
        op.amount,
        op.currency,
        op.description,
        op.metadata,
        now_s,
        op.key.decode(),
        op.fingerprint.hex(),
    )
    return RecordType.PAYMENT_WITH_CONSENT, record


def _apply_payment(state: State, kind: RecordType, lsn: int, record: PaymentRecord) -> Applied:
    """Under the consent rules (PAYMENT_WITH_CONSENT), or as payments were applied before them
    (PAYMENT, only replayed)."""
    pid = payment_id(lsn)
    ledger = state.ledger
    if kind == RecordType.PAYMENT_WITH_CONSENT:
        failure = ledger.pay(
            lsn,
            record.payer,
            record.settlement_account,
            record.amount,
            record.currency,
            merchant_id=record.merchant_id,
            created_s=record.created_s,
        )
    else:
        failure = ledger.pay_as_before_consent(
            lsn, record.payer, record.settlement_account, record.amount, record.currency
        )
    return PaymentResult(
        pid,
        record.merchant_id,
        record.order_id,
        record.payer,
        record.amount,
        record.currency,
        _status(failure),
        failure,
        record.created_s,
        record.description,
        record.metadata,
    )


def _settle_failure(record: PaymentRecord | AccountRecord, result: Any) -> None:
    record.failure_code = result.failure_code


def _refund_record(op: RefundOp, now_s: int) -> tuple[RecordType, RefundRecord]:
    key = op.key.decode() if op.key else None
    record = RefundRecord(
        op.payment_id, op.merchant.id, op.amount, op.reason, now_s, key, op.fingerprint.hex()
    )
    return RecordType.REFUND, record


def _apply_refund(state: State, _kind: RecordType, lsn: int, record: RefundRecord) -> Applied:
    paid = record.payment_id
    applied, failure = state.ledger.refund(paid, record.amount_requested)
    entry = state.ledger.payment(paid)
    currency = entry.currency if entry else ""
    return RefundResult(
        refund_id(lsn),
        paid,
        record.merchant_id,
        applied,
        currency,
        _status(failure),
        failure,
        record.created_s,
        record.reason,
    )


def _settle_refund(record: RefundRecord, result: RefundResult) -> None:
    record.amount = result.amount
    record.failure_code = result.failure_code


# ---- accounts ---------------------------------------------------------------------------------


def _account_record(op: AdminOp, now_s: int) -> tuple[RecordType, AccountRecord]:
    keyed = None if op.key is None else Keyed(op.key.decode(), op.fingerprint.hex(), now_s)
    return op.kind, AccountRecord(op.account_id, op.currency, op.amount, op.overdraft, keyed)


def _apply_account(state: State, kind: RecordType, _lsn: int, record: AccountRecord) -> Applied:
    account_id, ledger = record.account_id, state.ledger
    if kind == RecordType.OPEN_ACCOUNT:
        failure = ledger.open_account(
            account_id, record.currency, record.overdraft, state.owner_of(account_id)
        )
    elif kind == RecordType.DEPOSIT:
        failure = ledger.deposit(account_id, record.amount, record.currency)
    else:
        failure = ledger.withdraw(account_id, record.amount, record.currency)
    account = ledger.account(account_id)
    balance = account.balance if account else 0
    return AdminResult(account_id, _status(failure), failure, balance)


# ---- merchants, keys, webhook secrets ---------------------------------------------------------


def _check_merchant(state: State, op: MerchantOp) -> None:
    state.merchants.check_create(op.merchant)
    settlement = op.merchant.settlement_account
    if state.ledger.account(settlement) is None:
        raise RequestError("account_not_found", f"no account {settlement}", 400)
    if any(m.settlement_account == settlement for m in state.merchants.by_id.values()):
        # Refunds are authorised by the settlement account: it must be one merchant's.
        raise RequestError(
            "settlement_account_in_use", f"{settlement} settles another merchant", 409
        )


def _merchant_record(op: MerchantOp, _now_s: int) -> tuple[RecordType, MerchantCreated]:
    return RecordType.MERCHANT_CREATED, MerchantCreated(*merchant_row(op.merchant))


def _apply_merchant(
    state: State, _kind: RecordType, _lsn: int, record: MerchantCreated
) -> Merchant:
    merchant = merchant_from_row(list(msgspec.structs.astuple(record)))
    state.merchants.create(merchant)
    state.ledger.settles_merchant(merchant.settlement_account)
    return merchant


def _apply_key_added(state: State, _kind: RecordType, _lsn: int, record: KeyAdded) -> Merchant:
    secret = bytes.fromhex(record.secret)
    return state.merchants.add_key(record.merchant_id, record.kid, secret)


def _apply_key_revoked(state: State, _kind: RecordType, _lsn: int, record: KeyRevoked) -> Merchant:
    return state.merchants.revoke_key(record.merchant_id, record.kid)


def _apply_secret_rotated(
    state: State, _kind: RecordType, _lsn: int, record: WebhookSecretRotated
) -> Merchant:
    secret = bytes.fromhex(record.webhook_secret)
    return state.merchants.rotate_webhook_secret(record.merchant_id, secret)


def _apply_previous_revoked(
    state: State, _kind: RecordType, _lsn: int, record: PreviousWebhookSecretRevoked
) -> Merchant:
    return state.merchants.revoke_previous_webhook_secret(record.merchant_id)


# ---- webhook deliveries -----------------------------------------------------------------------


def _check_events(state: State, lsns: list[int]) -> None:
    # An event older than the results memory holds is known by its delivery (engine/hot.py).
    known = state.outbox.holds_delivery
    if unknown := [lsn for lsn in lsns if lsn not in state.results and not known(lsn)]:
        raise RequestError("not_found", f"no event {event_id(unknown[0])}", 404)


def _merchant_of_event(state: State, lsn: int) -> str:
    """Whose the event is, read natively without building its result (a delivery record names
    many); KeyError if there is no such event (a replayed record that no longer applies)."""
    merchant_id = state.results.merchant_of(lsn) or state.outbox.merchant_of(lsn)
    if merchant_id is None:
        raise KeyError(f"no event {event_id(lsn)}")
    return merchant_id


def _apply_deliveries(state: State, _kind: RecordType, lsn: int, record: Deliveries) -> Recorded:
    for outcome in record.outcomes:
        state.outbox.record(_merchant_of_event(state, outcome.event_lsn), outcome)
    return Recorded(lsn)


def _apply_redelivery(state: State, _kind: RecordType, lsn: int, record: Redelivery) -> Recorded:
    for event_lsn in record.event_lsns:
        merchant_id = _merchant_of_event(state, event_lsn)
        state.outbox.schedule(merchant_id, event_lsn, record.at_ms)
    return Recorded(lsn)


# ---- mandates ---------------------------------------------------------------------------------


def _check_grant(state: State, op: MandateGranted) -> None:
    account = state.ledger.account(op.account_id)
    if account is None:
        raise RequestError("not_found", f"no account {op.account_id}", 404)
    if account.owner is Owner.MERCHANT:
        raise RequestError(
            "account_is_settlement", "a merchant's settlement account never pays", 409
        )
    if state.merchants.get(op.merchant_id) is None:
        raise RequestError("merchant_not_found", f"no merchant {op.merchant_id}")
    current = state.ledger.current_mandate(op.account_id, op.merchant_id)
    if current is not None and not current.expired(op.created):
        raise RequestError(
            "mandate_exists", f"{current.id} lets {op.merchant_id} debit this account", 409
        )
    if len(state.ledger.mandates_of(op.account_id)) >= MANDATES_PER_ACCOUNT_MAX:
        raise RequestError(
            "too_many_mandates", f"an account holds at most {MANDATES_PER_ACCOUNT_MAX}", 409
        )


def _apply_grant(state: State, _kind: RecordType, lsn: int, record: MandateGranted) -> Mandate:
    return state.ledger.grant_mandate(lsn, MandateGrant.from_record(msgspec.structs.asdict(record)))


def _check_revocation(state: State, op: MandateRevoked) -> None:
    if state.ledger.account(op.account_id) is None:
        raise RequestError("not_found", f"no account {op.account_id}", 404)
    mandate = state.ledger.mandate(op.mandate_id)
    if mandate is None or mandate.terms.account_id != op.account_id:
        raise RequestError("not_found", f"no mandate {op.mandate_id} of this account", 404)
    if mandate.revoked_s is not None:
        raise RequestError("mandate_revoked", f"{op.mandate_id} is already revoked", 409)


def _apply_revocation(
    state: State, _kind: RecordType, _lsn: int, record: MandateRevoked
) -> Mandate:
    return state.ledger.revoke_mandate(record.mandate_id, record.revoked_at)


_HANDLERS = (
    Handler(
        op=PaymentOp,
        kinds=(RecordType.PAYMENT_WITH_CONSENT, RecordType.PAYMENT),
        check=None,
        record=_payment_record,
        apply=_apply_payment,
        settle=_settle_failure,
    ),
    Handler(
        op=RefundOp,
        kinds=(RecordType.REFUND,),
        check=None,
        record=_refund_record,
        apply=_apply_refund,
        settle=_settle_refund,
    ),
    Handler(
        op=AdminOp,
        kinds=(RecordType.OPEN_ACCOUNT, RecordType.DEPOSIT, RecordType.WITHDRAW),
        check=None,
        record=_account_record,
        apply=_apply_account,
        settle=_settle_failure,
    ),
    Handler(
        op=MerchantOp,
        kinds=(RecordType.MERCHANT_CREATED,),
        check=_check_merchant,
        record=_merchant_record,
        apply=_apply_merchant,
    ),
    Handler(
        op=KeyAdded,
        kinds=(RecordType.KEY_ADDED,),
        check=lambda state, op: state.merchants.check_add_key(op.merchant_id, op.kid),
        record=_itself(RecordType.KEY_ADDED),
        apply=_apply_key_added,
    ),
    Handler(
        op=KeyRevoked,
        kinds=(RecordType.KEY_REVOKED,),
        check=lambda state, op: state.merchants.check_revoke_key(op.merchant_id, op.kid),
        record=_itself(RecordType.KEY_REVOKED),
        apply=_apply_key_revoked,
    ),
    Handler(
        op=WebhookSecretRotated,
        kinds=(RecordType.WEBHOOK_SECRET_ROTATED,),
        check=lambda state, op: state.merchants.check_rotate_webhook_secret(op.merchant_id),
        record=_itself(RecordType.WEBHOOK_SECRET_ROTATED),
        apply=_apply_secret_rotated,
    ),
    Handler(
        op=PreviousWebhookSecretRevoked,
        kinds=(RecordType.PREVIOUS_WEBHOOK_SECRET_REVOKED,),
        check=lambda state, op: state.merchants.check_revoke_previous_webhook_secret(
            op.merchant_id
        ),
        record=_itself(RecordType.PREVIOUS_WEBHOOK_SECRET_REVOKED),
        apply=_apply_previous_revoked,
    ),
    Handler(
        op=Deliveries,
        kinds=(RecordType.DELIVERIES,),
        check=lambda state, op: _check_events(
            state, [outcome.event_lsn for outcome in op.outcomes]
        ),
        record=_itself(RecordType.DELIVERIES),
        apply=_apply_deliveries,
    ),
    Handler(
        op=Redelivery,
        kinds=(RecordType.REDELIVERY,),
        check=lambda state, op: _check_events(state, op.event_lsns),
        record=_itself(RecordType.REDELIVERY),
        apply=_apply_redelivery,
    ),
    Handler(
        op=MandateGranted,
        kinds=(RecordType.MANDATE_GRANTED,),
        check=_check_grant,
        record=_itself(RecordType.MANDATE_GRANTED),
        apply=_apply_grant,
    ),
    Handler(
        op=MandateRevoked,
        kinds=(RecordType.MANDATE_REVOKED,),
        check=_check_revocation,
        record=_itself(RecordType.MANDATE_REVOKED),
        apply=_apply_revocation,
    ),
)
# The one table: by the op the engine is handed, and by the record type the log holds.
BY_OP: dict[type[Any], Handler] = {handler.op: handler for handler in _HANDLERS}
BY_KIND: dict[RecordType, Handler] = {
    kind: handler for handler in _HANDLERS for kind in handler.kinds
}


def check(state: State, op: Op) -> None:
    """Refuses an op that cannot be applied, before anything is logged (RequestError)."""
    checks = BY_OP[op.__class__].check
    if checks is not None:
        checks(state, op)


def apply(state: State, op: Op, now_s: int, types: list[int], payloads: list[bytes]) -> Applied:
    """Applies a checked op at LSN `state.lsn_next`; appends its record, outcome included, to
    `types` and `payloads` (the current version of each)."""
    handler = BY_OP[op.__class__]
    kind, record = handler.record(op, now_s)
    lsn = state.lsn_next
    state.lsn_next += 1
    result = handler.apply(state, kind, lsn, record)
    if handler.settle is not None:
        handler.settle(record, result)
    types.append(CURRENT_TYPES[kind])
    payloads.append(encode(record))
    return result


def replay(state: State, kind: RecordType, lsn: int, record: Record) -> Applied:
    """Applies a logged record; ReplayMismatchError if its outcome is not the logged one."""
    handler = BY_KIND[kind]
    result = handler.apply(state, kind, lsn, record)
    if handler.settle is not None:
        replayed = msgspec.structs.replace(record)
        handler.settle(replayed, result)
        if replayed != record:
            raise _mismatch(lsn, record, replayed)
    return result


def _mismatch(lsn: int, logged: Record, replayed: Record) -> ReplayMismatchError:
    """What differs between a logged outcome and the replayed one (`settle`'s fields)."""
    if (
        isinstance(logged, RefundRecord)
        and isinstance(replayed, RefundRecord)
        and replayed.amount != logged.amount
    ):
        return ReplayMismatchError(
            f"replay of LSN {lsn} refunded {replayed.amount}, the log says {logged.amount}"
        )
    said, gave = getattr(logged, "failure_code", None), getattr(replayed, "failure_code", None)
    return ReplayMismatchError(
        f"replay of LSN {lsn} gave {gave or 'success'}, "
        f"the log says {'it succeeded' if said is None else said}"
    )
