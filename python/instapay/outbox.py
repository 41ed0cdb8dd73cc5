"""The outbox: every final payment and refund result is an event, and the state of its delivery.

An event is its result's log record seen from the merchant's side: `evt_<LSN>` is the event of the
payment or refund at that LSN, so the event is in the same log batch as the result by
construction, and an acknowledged payment always has its event after any crash. Delivery attempts
and redeliveries are log records too (applied here, live and on replay, in log order), so pending
deliveries resume after a restart where they stopped. Applying never fails: any attempt for any
event can be recorded, which keeps replay trivially deterministic.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
from array import array
from collections.abc import Container
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from instapay.ascii_digits import number_in_id
from instapay.model import PaymentResult, RefundResult

EVENT_ID_PREFIX = "evt_"
# Attempts remembered per event (the schedule has 16; redeliveries add rounds): the oldest go.
ATTEMPTS_KEPT_MAX = 32


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    # The merchant has no webhook URL: it polls `GET /v1/events`.
    NONE = "none"


class Attempt(NamedTuple):
    attempt: int
    at_ms: int
    # An HTTP status ("200", "500") or what went wrong ("timeout", "connection_refused").
    outcome: str
    delivered: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": self.at_ms // 1000,
            "outcome": self.outcome,
            "delivered": self.delivered,
        }


class DeliveryOutcome(NamedTuple):
    """One finished attempt, as the dispatcher reports it and the log records it."""

    event_lsn: int
    at_ms: int
    outcome: str
    delivered: bool
    # When to try again; None once delivered, or when the schedule is spent (then: failed).
    next_at_ms: int | None
    # The round the attempt belonged to: an outcome of a round that a redelivery has replaced
    # joins the history but changes nothing else.
    round: int = 0


@dataclass(slots=True)
class Delivery:
    merchant_id: str
    status: DeliveryStatus
    next_at_ms: int | None
    # Attempts since the event was created or last redelivered: the position in the schedule.
    round_attempts: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    attempts_total: int = 0
    # 0 for the first round, one more for each redelivery.
    round: int = 0


def event_id(lsn: int) -> str:
    return f"{EVENT_ID_PREFIX}{lsn}"


def event_lsn(event_id_: str) -> int | None:
    """The LSN in an event id, or None when it is not one."""
    return number_in_id(event_id_, EVENT_ID_PREFIX)


class Outbox:
    """Events by merchant, in order, and the deliveries still to make."""

    def __init__(self) -> None:
        # Each merchant's event LSNs, oldest first: 8 bytes an event in an array, where a list
        # keeps a pointer and an int object (about 40 bytes) for every payment of the history.
        self.events_of: dict[str, array[int]] = {}
        self.deliveries: dict[int, Delivery] = {}
        # Per merchant, (next attempt time, LSN) of its pending deliveries. An entry is stale once
        # its delivery moved on; `take_due` skips those.
        self._due: dict[str, list[tuple[int, int]]] = {}
        # LSN -> (merchant, when it became pending) of every pending delivery, oldest first (a
        # dict keeps insertion order). A new event's delivery is only this entry and its queue
        # entry until its first attempt: no Delivery object on the payment path.
        self._pending: dict[int, tuple[str, int]] = {}
        # Set when a delivery becomes due: the dispatcher waits on it (and clears it before each
        # look at the queues). A signal up, not a call: the outbox knows nothing of who waits.
        self.due = asyncio.Event()

    def add_event(self, merchant_id: str, lsn: int) -> None:
        """Indexes an event (LSNs arrive in increasing order)."""
        self.events_of.setdefault(merchant_id, array("Q")).append(lsn)

    def index_events(self, by_merchant: dict[str, list[int]]) -> None:
        """Indexes the events of each merchant at once (a snapshot's; LSNs in increasing
        order), in place of one `add_event` each."""
        for merchant_id, lsns in by_merchant.items():
            self.events_of.setdefault(merchant_id, array("Q")).extend(lsns)

    def forget_before(self, lsn: int, keep: Container[int] = ()) -> None:
        """Drops the events older than `lsn` from the index, and their deliveries but pending
        ones and those in `keep`: their results left memory, and the bounded hot state reads
        them from history.db (the events, the delivery attempts)."""
        for lsns in self.events_of.values():
            del lsns[: bisect.bisect_left(lsns, lsn)]
        finished = [
            event
            for event, delivery in self.deliveries.items()
            if event < lsn and delivery.status != DeliveryStatus.PENDING and event not in keep
        ]
        for event in finished:
            del self.deliveries[event]

    def holds_delivery(self, lsn: int) -> bool:
        """Whether the event's delivery is in memory (every pending one is)."""
        return lsn in self.deliveries or lsn in self._pending

    def merchant_of(self, lsn: int) -> str | None:
        """Whose the event is, if its delivery is in memory."""
        delivery = self.deliveries.get(lsn)
        if delivery is not None:
            return delivery.merchant_id
        pending = self._pending.get(lsn)
        return None if pending is None else pending[0]

    def recall(self, lsn: int, merchant_id: str, outcomes: list[DeliveryOutcome]) -> None:
        """Puts back the finished delivery of an event memory forgot, from its logged attempts
        (oldest first), as memory had it: for a redelivery of it."""
        if self.holds_delivery(lsn):
            return
        status = DeliveryStatus.NONE
        if outcomes:
            status = DeliveryStatus.DELIVERED if outcomes[-1].delivered else DeliveryStatus.FAILED
        attempts = [
            Attempt(number, o.at_ms, o.outcome, o.delivered) for number, o in enumerate(outcomes, 1)
        ]
        self.deliveries[lsn] = Delivery(
            merchant_id,
            status,
            None,
            attempts=attempts[-ATTEMPTS_KEPT_MAX:],
            attempts_total=len(outcomes),
            round=outcomes[-1].round if outcomes else 0,
        )

    def schedule_new(self, merchant_id: str, lsn: int, at_ms: int) -> None:
        """Makes a new event's delivery pending from `at_ms` on (the cheap path: one per
        payment)."""
        self._pending[lsn] = (merchant_id, at_ms)
        self._push(merchant_id, lsn, at_ms)

    def schedule_new_many(self, merchant_id: str, lsns: list[int], at_ms: int) -> None:
        """`schedule_new` for a batch's new events of one merchant, all due at `at_ms`."""
        entry = (merchant_id, at_ms)
        due = self._due.setdefault(merchant_id, [])
        for lsn in lsns:
            self._pending[lsn] = entry
            heapq.heappush(due, (at_ms, lsn))
        if lsns:
            self.due.set()

    def schedule(self, merchant_id: str, lsn: int, at_ms: int) -> None:
        """Makes the event's delivery pending from `at_ms` on, as a fresh round of the schedule."""
        delivery = self._delivery(merchant_id, lsn)
        if delivery.status != DeliveryStatus.PENDING:
            self._pending[lsn] = (merchant_id, at_ms)
        delivery.status = DeliveryStatus.PENDING
        delivery.round_attempts = 0
        delivery.round += 1
        self._set_due(delivery, lsn, at_ms)

    def requeue(self, lsn: int) -> None:
        """Puts a pending delivery back in its merchant's queue, due when it was (the dispatcher
        took it while an attempt of it was still in flight)."""
        next_at_ms = self._next_at_ms(lsn)
        delivery = self.deliveries.get(lsn)
        merchant_id = delivery.merchant_id if delivery else self._pending.get(lsn, ("", 0))[0]
        if next_at_ms is not None and merchant_id:
            self._push(merchant_id, lsn, next_at_ms)

    def _delivery(self, merchant_id: str, lsn: int) -> Delivery:
        """The event's Delivery, made on first need: pending if the event is new and pending."""
        delivery = self.deliveries.get(lsn)
        if delivery is None:
            since = self._pending.get(lsn)
            status = DeliveryStatus.NONE if since is None else DeliveryStatus.PENDING
            next_at_ms = None if since is None else since[1]
            delivery = self.deliveries[lsn] = Delivery(merchant_id, status, next_at_ms)
        return delivery

    def _set_due(self, delivery: Delivery, lsn: int, at_ms: int) -> None:
        delivery.next_at_ms = at_ms
        self._push(delivery.merchant_id, lsn, at_ms)

    def _push(self, merchant_id: str, lsn: int, at_ms: int) -> None:
        heapq.heappush(self._due.setdefault(merchant_id, []), (at_ms, lsn))
        self.due.set()

    def _next_at_ms(self, lsn: int) -> int | None:
        """When the event's pending delivery is due; None if it is not pending."""
        delivery = self.deliveries.get(lsn)
        if delivery is not None:
            return delivery.next_at_ms if delivery.status == DeliveryStatus.PENDING else None
        since = self._pending.get(lsn)
        return None if since is None else since[1]

    def round_attempts(self, lsn: int) -> int:
        """Attempts made in the event's current round (0 for a new event)."""
        delivery = self.deliveries.get(lsn)
        return 0 if delivery is None else delivery.round_attempts

    def round_of(self, lsn: int) -> int:
        delivery = self.deliveries.get(lsn)
        return 0 if delivery is None else delivery.round

    def record(self, merchant_id: str, outcome: DeliveryOutcome) -> None:
        """Applies a finished attempt: delivered, failed for good, or due again later."""
        lsn = outcome.event_lsn
        delivery = self._delivery(merchant_id, lsn)
        delivery.attempts_total += 1
        delivery.attempts.append(
            Attempt(delivery.attempts_total, outcome.at_ms, outcome.outcome, outcome.delivered)
        )
        del delivery.attempts[:-ATTEMPTS_KEPT_MAX]
        if outcome.round != delivery.round:
            return  # a redelivery started a new round meanwhile: that round goes on
        delivery.round_attempts += 1
        if outcome.delivered:
            self._finish(delivery, lsn, DeliveryStatus.DELIVERED)
        elif outcome.next_at_ms is None:
            self._finish(delivery, lsn, DeliveryStatus.FAILED)
        else:
            if delivery.status != DeliveryStatus.PENDING:
                self._pending[lsn] = (merchant_id, outcome.at_ms)
            delivery.status = DeliveryStatus.PENDING
            self._set_due(delivery, lsn, outcome.next_at_ms)

    def _finish(self, delivery: Delivery, lsn: int, status: DeliveryStatus) -> None:
        delivery.status = status
        delivery.next_at_ms = None
        self._pending.pop(lsn, None)

    def take_due(self, merchant_id: str, now_ms: int, count_max: int) -> list[int]:
        """Up to `count_max` of the merchant's deliveries due by `now_ms`, oldest due first. They
        leave the queue; an outcome (or `requeue`) puts them back if they must be tried again."""
        heap = self._due.get(merchant_id, [])
        taken: list[int] = []
        while heap and len(taken) < count_max and heap[0][0] <= now_ms:
            at_ms, lsn = heapq.heappop(heap)
            if self._next_at_ms(lsn) == at_ms:
                taken.append(lsn)
        return taken

    def merchants_due(self) -> list[str]:
        return [merchant for merchant, heap in self._due.items() if heap]

    def next_due_ms(self, busy: Container[str] = ()) -> int | None:
        """The earliest time a delivery of a merchant not in `busy` is due (possibly a stale
        entry's: an early wake-up)."""
        return min(
            (heap[0][0] for merchant, heap in self._due.items() if heap and merchant not in busy),
            default=None,
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def oldest_pending_ms(self) -> int | None:
        """When the delivery that has waited longest became pending."""
        oldest = next(iter(self._pending.values()), None)
        return None if oldest is None else oldest[1]

    def events_after(self, merchant_id: str, after_lsn: int, limit: int) -> tuple[list[int], bool]:
        """The merchant's event LSNs after `after_lsn`, oldest first, and whether more follow."""
        lsns = self.events_of.get(merchant_id, array("Q"))
        start = bisect.bisect_right(lsns, after_lsn)
        return lsns[start : start + limit].tolist(), start + limit < len(lsns)

    def failed_of(self, merchant_id: str) -> list[int]:
        return [
            lsn
            for lsn, delivery in self.deliveries.items()
            if delivery.merchant_id == merchant_id and delivery.status == DeliveryStatus.FAILED
        ]

    def delivery_json(self, lsn: int) -> dict[str, Any]:
        delivery = self.deliveries.get(lsn)
        if delivery is None:
            next_at_ms = self._next_at_ms(lsn)
            status = DeliveryStatus.NONE if next_at_ms is None else DeliveryStatus.PENDING
            return {
                "status": status.value,
                "attempts": [],
                "next_attempt_at": None if next_at_ms is None else next_at_ms // 1000,
            }
        next_at_ms = delivery.next_at_ms
        return {
            "status": delivery.status.value,
            "attempts": [attempt.to_json() for attempt in delivery.attempts],
            "next_attempt_at": None if next_at_ms is None else next_at_ms // 1000,
        }

    # ---- snapshots -----------------------------------------------------------------------------

    def to_snapshot(self) -> list[list[Any]]:
        """Every delivery as a row; a new event's pending delivery too."""
        rows = [
            [
                lsn,
                d.merchant_id,
                d.status.value,
                d.next_at_ms,
                d.round_attempts,
                d.attempts_total,
                [list(attempt) for attempt in d.attempts],
                self._pending[lsn][1] if lsn in self._pending else None,
                d.round,
            ]
            for lsn, d in self.deliveries.items()
        ]
        for lsn, (merchant_id, since_ms) in self._pending.items():
            if lsn not in self.deliveries:
                rows.append([lsn, merchant_id, "pending", since_ms, 0, 0, [], since_ms, 0])
        return rows

    def restore(self, rows: list[list[Any]]) -> None:
        # Pending ones oldest first, as they were (for `oldest_pending_ms`).
        for row in sorted(rows, key=lambda row: (row[7] is None, row[7] or 0)):
            lsn, merchant_id, status, next_at_ms, round_attempts, total, attempts, since_ms = row[
                :8
            ]
            delivery = Delivery(
                merchant_id,
                DeliveryStatus(status),
                None,
                round_attempts,
                [Attempt(*attempt) for attempt in attempts],
                total,
                round=row[8] if len(row) > 8 else 0,  # snapshots before rounds have none
            )
            self.deliveries[lsn] = delivery
            if delivery.status == DeliveryStatus.PENDING:
                self._pending[lsn] = (merchant_id, since_ms)
                self._set_due(delivery, lsn, next_at_ms)


def finished_delivery_json(outcomes: list[DeliveryOutcome]) -> dict[str, Any]:
    """`Outbox.delivery_json` of an event whose delivery left memory (it was not pending),
    from its logged attempts, oldest first: its last attempt tells how it ended."""
    if not outcomes:
        return {"status": DeliveryStatus.NONE.value, "attempts": [], "next_attempt_at": None}
    last = outcomes[-1]
    status = DeliveryStatus.DELIVERED if last.delivered else DeliveryStatus.FAILED
    attempts = [
        Attempt(number, o.at_ms, o.outcome, o.delivered).to_json()
        for number, o in enumerate(outcomes, 1)
    ]
    return {
        "status": status.value,
        "attempts": attempts[-ATTEMPTS_KEPT_MAX:],
        "next_attempt_at": None,
    }


def event_json(lsn: int, result: PaymentResult | RefundResult) -> dict[str, Any]:
    """The event of a result, shaped like Stripe's: `data.object` is the payment or refund."""
    kind = "payment" if isinstance(result, PaymentResult) else "refund"
    return {
        "id": event_id(lsn),
        "object": "event",
        "type": f"{kind}.{result.status.value}",
        "created": result.created_s,
        "data": {"object": result.to_json()},
    }
