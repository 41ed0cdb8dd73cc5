"""The reads the bounded hot state makes of the history database: a payment's refundable state
for a refund of a payment memory no longer holds (the prefetch before its batch is staged, as
TigerBeetle prefetches), a result by LSN (an idempotent retry of a result memory forgot, an
event; a keyed deposit's or withdrawal's), and the delivery attempts of events whose deliveries
memory forgot. Over `HistoryReader`'s read-only connections and threads
(storage/history/reads.py), so the event loop never waits on SQLite; recovery reads on its own
thread (`*_now`)."""

from __future__ import annotations

from typing import NamedTuple

from instapay.model import AdminResult, PaymentResult, RefundResult, Status
from instapay.outbox import DeliveryOutcome
from instapay.protocol import payment_id
from instapay.storage.history.reads import (
    PAYMENT_SELECT,
    REFUND_SELECT,
    SQLITE_INTEGER_MAX,
    Connection,
    HistoryReader,
    Param,
    first,
    payment_of,
    refund_of,
)


class Refundable(NamedTuple):
    """What a refund of a succeeded payment is checked against: whose it is, its accounts, its
    amount and what its refunds logged before `before_lsn` gave back; `as_of` is the LSN the
    database was projected to when read."""

    lsn: int
    merchant_id: str
    payer: str
    settlement_account: str
    amount: int
    refunded: int
    as_of: int


_PAYMENT = (
    "SELECT merchant_id, payer, settlement_account, amount FROM payments"
    " WHERE lsn = ? AND status = 'succeeded'"
)
_REFUNDED = (
    "SELECT COALESCE(SUM(amount), 0) FROM refunds"
    " WHERE payment_id = ? AND status = 'succeeded' AND lsn < ?"
)


def read_refundable(connection: Connection, lsn: int, before_lsn: int | None) -> Refundable | None:
    """The succeeded payment logged at `lsn` with its refunds before `before_lsn` (None: all
    projected), in one read transaction; None if the database has no such payment."""
    projected = first(connection, "SELECT lsn FROM projection", [])
    row = first(connection, _PAYMENT, [lsn]) if lsn <= SQLITE_INTEGER_MAX else None
    if row is None or projected is None:
        return None
    (as_of,) = projected
    bound = as_of + 1 if before_lsn is None else before_lsn
    refunded = first(connection, _REFUNDED, [payment_id(lsn), bound])
    merchant_id, payer, settlement, amount = row
    total = 0 if refunded is None else refunded[0]
    return Refundable(lsn, merchant_id, payer, settlement, amount, total, as_of)


def read_result(connection: Connection, lsn: int) -> PaymentResult | RefundResult | None:
    """The payment (with what its refunds gave back) or refund logged at `lsn`, if any."""
    if lsn > SQLITE_INTEGER_MAX:
        return None
    row = first(connection, PAYMENT_SELECT + " WHERE lsn = ?", [lsn])
    if row is not None:
        return payment_of(row)
    row = first(connection, REFUND_SELECT + " WHERE lsn = ?", [lsn])
    return None if row is None else refund_of(row)


_ATTEMPTS = (
    "SELECT event_lsn, at_ms, outcome, delivered, next_at_ms, round FROM delivery_attempts"
    " WHERE event_lsn = ? AND logged_lsn < ? ORDER BY logged_lsn, position"
)
# The events of a merchant older than a bound whose last logged attempt failed for good.
_FAILED = (
    "SELECT a.event_lsn FROM delivery_attempts a"
    " WHERE a.event_lsn < ? AND a.delivered = 0 AND a.next_at_ms IS NULL"
    " AND (a.logged_lsn, a.position) = (SELECT b.logged_lsn, b.position FROM delivery_attempts b"
    " WHERE b.event_lsn = a.event_lsn ORDER BY b.logged_lsn DESC, b.position DESC LIMIT 1)"
    " AND a.event_lsn IN (SELECT lsn FROM payments WHERE merchant_id = ?"
    " UNION ALL SELECT lsn FROM refunds WHERE merchant_id = ?)"
    " ORDER BY a.event_lsn"
)


def read_attempts(
    connection: Connection, event_lsn: int, before_lsn: int = SQLITE_INTEGER_MAX
) -> list[DeliveryOutcome]:
    """The delivery attempts of an event logged before `before_lsn`, oldest first."""
    if event_lsn > SQLITE_INTEGER_MAX:
        return []
    rows = connection.fetch(_ATTEMPTS, [event_lsn, min(before_lsn, SQLITE_INTEGER_MAX)])
    return [
        DeliveryOutcome(lsn, at_ms, outcome, bool(delivered), next_at_ms, round_)
        for lsn, at_ms, outcome, delivered, next_at_ms, round_ in rows
    ]


_ADMIN_ENTRY = (
    "SELECT account_id, balance_after FROM account_entries"
    " WHERE lsn = ? AND kind IN ('deposit', 'withdrawal')"
)


def read_admin_result(connection: Connection, lsn: int) -> AdminResult | None:
    """The result of the deposit or withdrawal logged at `lsn` that succeeded (a declined one
    changed no balance: history.db has no row of it), if any."""
    row = first(connection, _ADMIN_ENTRY, [lsn]) if lsn <= SQLITE_INTEGER_MAX else None
    if row is None:
        return None
    account_id, balance_after = row
    return AdminResult(account_id, Status.SUCCEEDED, None, balance_after)


def read_delivery(
    connection: Connection, event_lsn: int, before_lsn: int
) -> tuple[str, list[DeliveryOutcome]] | None:
    result = read_result(connection, event_lsn)
    if result is None:
        return None
    return result.merchant_id, read_attempts(connection, event_lsn, before_lsn)


class HistoryPrefetcher(HistoryReader):
    """The engine's reads of history.db (see the module), on the reader's threads."""

    async def refundable(self, lsn: int) -> Refundable | None:
        """A payment's refundable state as projected now (the live prefetch)."""
        return await self._run(lambda c: read_refundable(c, lsn, None))

    def refundable_now(self, lsn: int, before_lsn: int) -> Refundable | None:
        """A payment's refundable state as of the record at `before_lsn`, read on the calling
        thread (recovery's, before the engine serves)."""
        return self._read(lambda c: read_refundable(c, lsn, before_lsn))

    async def result(self, lsn: int) -> PaymentResult | RefundResult | None:
        return await self._run(lambda c: read_result(c, lsn))

    async def admin_result(self, lsn: int) -> AdminResult | None:
        return await self._run(lambda c: read_admin_result(c, lsn))

    async def attempts(self, event_lsn: int) -> list[DeliveryOutcome]:
        return await self._run(lambda c: read_attempts(c, event_lsn))

    async def delivery(self, event_lsn: int) -> tuple[str, list[DeliveryOutcome]] | None:
        """Whose the event is and its delivery attempts, None if there is no such event."""
        return await self._run(lambda c: read_delivery(c, event_lsn, SQLITE_INTEGER_MAX))

    def delivery_now(
        self, event_lsn: int, before_lsn: int
    ) -> tuple[str, list[DeliveryOutcome]] | None:
        """`delivery` with the attempts logged before `before_lsn`, on the calling thread
        (recovery's)."""
        return self._read(lambda c: read_delivery(c, event_lsn, before_lsn))

    async def failed(self, merchant_id: str, before_lsn: int) -> list[int]:
        """The merchant's events before `before_lsn` whose delivery failed for good, as logged
        (a redelivery since is in memory: the caller leaves those out)."""
        params: list[Param] = [min(before_lsn, SQLITE_INTEGER_MAX), merchant_id, merchant_id]
        rows = await self._run(lambda c: c.fetch(_FAILED, params))
        return [lsn for (lsn,) in rows]
