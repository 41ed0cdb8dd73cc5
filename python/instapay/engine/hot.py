"""The bounded hot state (`rust/state/evict.rs`): memory holds a window of recent results and
the payments they name, history.db the rest. This module is the engine's side of it, on the
event loop (the state's only mutator): the eviction pass between batches, the prefetch that puts
a payment memory forgot back before a refund of it is queued, the pins that keep a payment a
queued refund names, and the reads of a result memory no longer holds."""

from __future__ import annotations

import logging
from collections import Counter

from instapay import _core
from instapay.engine.records import Deliveries, Record, Redelivery, RefundRecord
from instapay.engine.state import State
from instapay.model import Overloaded, PaymentResult, RefundResult
from instapay.protocol import payment_id, payment_lsn
from instapay.signing import SignedRequest
from instapay.storage.history.prefetch import HistoryPrefetcher, Refundable
from instapay.storage.history.reads import HistoryUnavailableError

log = logging.getLogger(__name__)

# Seconds between eviction passes: memory grows by at most a second of results past the window.
EVICT_EVERY_S = 1
# Reads of a payment a recall found stale (memory forgot a refund since): each read after an
# eviction pass sees what it forgot, so a second read succeeds unless passes race it again.
RECALL_ATTEMPTS_MAX = 8


def refunded_lsn(request: SignedRequest) -> int | None:
    """The LSN of the payment a signed refund request names, None for any other request (the
    batch stage routes it again, and refuses what does not route)."""
    paid = _core.route(request.method, request.path)
    return payment_lsn(paid) if isinstance(paid, str) else None


class HotWindow:
    """What the engine keeps to bound its state: `results_max` results at least, the pins."""

    def __init__(self, results_max: int) -> None:
        self.results_max = results_max
        # Payments that queued refunds name, with how many: an eviction pass keeps them.
        self.pinned: Counter[int] = Counter()
        # Events whose deliveries a queued redelivery names: kept likewise.
        self.pinned_events: Counter[int] = Counter()
        self._evicted_s = 0
        self.results_evicted = 0
        self.payments_evicted = 0

    def pin(self, lsn: int | None, pins: Counter[int] | None = None) -> None:
        """Keeps `lsn` (a payment; of `pins`, when given) until as many `unpin`."""
        pins = self.pinned if pins is None else pins
        if lsn is not None:
            pins[lsn] += 1

    def unpin(self, lsn: int | None, pins: Counter[int] | None = None) -> None:
        pins = self.pinned if pins is None else pins
        if lsn is not None:
            pins[lsn] -= 1
            if pins[lsn] <= 0:
                del pins[lsn]

    def evict_if_due(self, state: State, durable_lsn: int, now_s: int) -> None:
        """One pass a second, between batches."""
        if now_s > self._evicted_s:
            self._evicted_s = now_s
            self.evict(state, durable_lsn)

    def evict(self, state: State, durable_lsn: int) -> None:
        """Forgets what history.db holds durably (to `durable_lsn`) beyond the window."""
        results, payments = state.ledger.native.evict(
            state.results.native, durable_lsn, self.results_max, list(self.pinned)
        )
        self.results_evicted += results
        self.payments_evicted += payments
        first = state.results.first_lsn()
        if first is not None:
            state.outbox.forget_before(first, self.pinned_events)
            forget_admin_results(state, first)


def forget_admin_results(state: State, lsn_below: int) -> None:
    """Forgets the keyed deposits and withdrawals that succeeded older than the window: a retry
    reads them from history.db (their account entry). A declined one has no row there: it stays
    (they are few, and keys expire)."""
    results = state.admin_results
    old = [
        lsn for lsn, result in results.items() if lsn < lsn_below and result.failure_code is None
    ]
    for lsn in old:
        del results[lsn]


def recall(state: State, refundable: Refundable) -> str:
    """Puts a payment read from history.db back into memory (see `_core.Ledger.recall`)."""
    return state.ledger.native.recall(
        state.results.native,
        refundable.lsn,
        refundable.merchant_id,
        refundable.payer,
        refundable.settlement_account,
        refundable.amount,
        refundable.refunded,
        refundable.as_of,
    )


async def prefetch(state: State, history: HistoryPrefetcher, lsn: int) -> None:
    """Before a refund of the payment at `lsn` is queued: if memory does not hold it, reads it
    from history.db and puts it back; a payment the database does not hold either is left to
    the batch stage to refuse, as any unknown payment. Overloaded (503) when the database
    cannot be read: a refund must not be declined for want of a read."""
    for _ in range(RECALL_ATTEMPTS_MAX):
        if state.ledger.native.payment(payment_id(lsn)) is not None:
            return
        try:
            refundable = await history.refundable(lsn)
        except HistoryUnavailableError as error:
            log.warning("cannot prefetch payment %d: %s", lsn, error)
            raise _unreadable(lsn) from error
        if refundable is None or recall(state, refundable) != "stale":
            return
    log.warning("payment %d: history.db kept falling behind memory's evictions", lsn)
    raise _unreadable(lsn)


def _unreadable(lsn: int) -> Overloaded:
    """A refund of a payment memory forgot, which history.db cannot give back now: refused
    for a retry (503), never declined as if the payment did not exist."""
    return Overloaded(f"payment {payment_id(lsn)} cannot be read from history.db now; retry")


def recall_for_replay(state: State, history: HistoryPrefetcher, record: Record, lsn: int) -> None:
    """Recovery, before the record logged at `lsn` is replayed: what it names that memory forgot
    is put back from history.db (memory forgets only what the database holds durably), as it was
    before this record: a refund's payment with the refunds logged before it, the deliveries of
    the events a delivery or redelivery record names."""
    try:
        if isinstance(record, RefundRecord):
            paid = payment_lsn(record.payment_id)
            if paid is not None and state.ledger.native.payment(payment_id(paid)) is None:
                refundable = history.refundable_now(paid, lsn)
                if refundable is not None:
                    recall(state, refundable)
        elif isinstance(record, Deliveries | Redelivery):
            events = (
                record.event_lsns
                if isinstance(record, Redelivery)
                else [outcome.event_lsn for outcome in record.outcomes]
            )
            for event in events:
                if _forgotten_event(state, event):
                    found = history.delivery_now(event, lsn)
                    if found is not None:
                        state.outbox.recall(event, *found)
    except HistoryUnavailableError as error:
        log.warning("cannot recall what the record at LSN %d names: %s", lsn, error)


def _forgotten_event(state: State, lsn: int) -> bool:
    return state.results.merchant_of(lsn) is None and not state.outbox.holds_delivery(lsn)


async def recall_deliveries(state: State, history: HistoryPrefetcher, lsns: list[int]) -> None:
    """Before a redelivery is queued: the deliveries of its events that memory forgot are put
    back from history.db (an event the database does not hold either is refused as today)."""
    for lsn in lsns:
        if _forgotten_event(state, lsn):
            try:
                found = await history.delivery(lsn)
            except HistoryUnavailableError as error:
                log.warning("cannot prefetch the delivery of event %d: %s", lsn, error)
                return
            if found is not None:
                state.outbox.recall(lsn, *found)


async def durable_result(
    state: State, history: HistoryPrefetcher | None, lsn: int
) -> PaymentResult | RefundResult | None:
    """The durable result logged at `lsn` as answered now (a payment with its refunds): from
    memory, or from history.db when memory forgot it."""
    result = state.results.get(lsn)
    if isinstance(result, PaymentResult):
        return state.as_now(result)
    if result is not None or history is None:
        return result
    try:
        return await history.result(lsn)
    except HistoryUnavailableError:
        return None
