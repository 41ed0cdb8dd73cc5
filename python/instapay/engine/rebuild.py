"""What a deleted history.db is rebuilt from when the log no longer starts at LSN 1: the oldest
kept snapshot the log continues (its accounts and the results it holds), loaded with recovery's
own code into a scratch state. The projector seeds the new database with it
(`HistoryProjector.seed`, rust/history/seed.rs) and projects the log after it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import orjson

from instapay.engine import recovery
from instapay.engine.state import State
from instapay.model import PaymentResult, RefundResult
from instapay.storage import snapshots
from instapay.storage.history.projector import HistorySeed, PaymentSeedRow, RefundSeedRow

log = logging.getLogger(__name__)


def history_seed(
    directory: Path, log_first: int, new_state: Callable[[], State]
) -> HistorySeed | None:
    """The seed of the oldest intact snapshot whose next record the log holds (`log_first` is
    the log's first LSN), or None if there is none."""
    for lsn, path in reversed(snapshots.snapshot_paths(directory)):
        if lsn + 1 < log_first:
            continue
        try:
            payload = snapshots.read_snapshot(path, lsn)
        except (OSError, ValueError) as error:
            log.warning("skipping snapshot %s for the history: %s", path, error)
            continue
        state = new_state()
        recovery.restore(state, lsn, payload)
        return _seed_of(state, lsn)
    return None


def _seed_of(state: State, lsn: int) -> HistorySeed:
    accounts = [(a.id, a.currency, a.balance) for a in state.ledger.accounts()]
    payments: list[PaymentSeedRow] = []
    refunds: list[RefundSeedRow] = []
    for at in sorted(state.results):
        result = state.results[at]
        if isinstance(result, PaymentResult):
            payments.append(_payment_row(state, at, state.as_now(result)))
        else:
            refunds.append(_refund_row(at, result))
    return HistorySeed(lsn, accounts, payments, refunds)


def _payment_row(state: State, lsn: int, result: PaymentResult) -> PaymentSeedRow:
    # The ledger keeps a succeeded payment's accounts; a declined one moved nothing and was
    # logged with its merchant's settlement account.
    made = state.ledger.payment(result.id)
    merchant = state.merchants.get(result.merchant_id)
    if made is not None:
        settlement = made.settlement
    else:
        settlement = "" if merchant is None else merchant.settlement_account
    metadata = None if result.metadata is None else orjson.dumps(result.metadata).decode()
    failure = None if result.failure_code is None else result.failure_code.value
    return (
        lsn,
        result.merchant_id,
        result.order_id,
        result.payer,
        settlement,
        result.amount,
        result.currency,
        failure,
        result.amount_refunded,
        result.description,
        metadata,
        result.created_s,
    )


def _refund_row(lsn: int, result: RefundResult) -> RefundSeedRow:
    failure = None if result.failure_code is None else result.failure_code.value
    return (
        lsn,
        result.payment_id,
        result.merchant_id,
        result.amount,
        result.currency,
        failure,
        result.reason,
        result.created_s,
    )
