"""The reads the bounded hot state makes of the history database: a payment's refundable state
for a refund of a payment memory no longer holds (the prefetch before its batch is staged, as
TigerBeetle prefetches), and a result by LSN (an idempotent retry of a result memory forgot, an
event). Over `HistoryReader`'s read-only connections and threads (storage/history/reads.py), so
the event loop never waits on SQLite; recovery reads on its own thread (`*_now`)."""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

from instapay.model import PaymentResult, RefundResult
from instapay.protocol import payment_id
from instapay.storage.history.reads import (
    PAYMENT_SELECT,
    REFUND_SELECT,
    SQLITE_INTEGER_MAX,
    HistoryReader,
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


def read_refundable(
    connection: sqlite3.Connection, lsn: int, before_lsn: int | None
) -> Refundable | None:
    """The succeeded payment logged at `lsn` with its refunds before `before_lsn` (None: all
    projected), in one read transaction; None if the database has no such payment."""
    (as_of,) = connection.execute("SELECT lsn FROM projection").fetchone()
    row = connection.execute(_PAYMENT, (lsn,)).fetchone() if lsn <= SQLITE_INTEGER_MAX else None
    if row is None:
        return None
    bound = as_of + 1 if before_lsn is None else before_lsn
    (refunded,) = connection.execute(_REFUNDED, (payment_id(lsn), bound)).fetchone()
    merchant_id, payer, settlement, amount = row
    return Refundable(lsn, merchant_id, payer, settlement, amount, refunded, as_of)


def read_result(connection: sqlite3.Connection, lsn: int) -> PaymentResult | RefundResult | None:
    """The payment (with what its refunds gave back) or refund logged at `lsn`, if any."""
    if lsn > SQLITE_INTEGER_MAX:
        return None
    row = connection.execute(PAYMENT_SELECT + " WHERE lsn = ?", (lsn,)).fetchone()
    if row is not None:
        return payment_of(row)
    row = connection.execute(REFUND_SELECT + " WHERE lsn = ?", (lsn,)).fetchone()
    return None if row is None else refund_of(row)


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
