"""`instapay history export`: every payment and refund of a time window, one row each, with the
fields a merchant reconciles on, as CSV or NDJSON.

It reads the history database read-only, without the data directory's lock, so it runs while
the server does; all of it in one read transaction (one consistent state of the database,
whatever the projector commits meanwhile), streamed row by row: memory stays flat whatever the
window holds. Rows come in log order (by LSN), payments and refunds merged.
"""

from __future__ import annotations

import csv
import heapq
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, NamedTuple

import orjson

from instapay.ascii_digits import ascii_int
from instapay.storage.history.reads import (
    SQLITE_INTEGER_MAX,
    Connection,
    Param,
    Row,
    connect_read_only,
)

FORMATS = ("csv", "ndjson")


class ExportRow(NamedTuple):
    """One payment or refund. A refund's `order_id` and `payer` are its payment's (None for a
    declined refund naming no payment of the merchant); `amount_refunded` is a payment's,
    `reason` a refund's; `created` unix seconds, `created_at` the same in ISO 8601 UTC."""

    type: str
    id: str
    payment_id: str | None
    merchant_id: str
    order_id: str | None
    payer: str | None
    amount: int
    amount_refunded: int | None
    currency: str
    status: str
    failure_code: str | None
    created: int
    created_at: str
    description: str | None
    reason: str | None


class ExportWindow(NamedTuple):
    """`since` (inclusive) to `until` (exclusive), unix seconds; one merchant's, or all."""

    since_s: int
    until_s: int
    merchant_id: str | None = None


# Rows read at a time: memory stays flat whatever the window holds.
CHUNK_ROWS = 10_000
# Each side in LSN order (the table's rowid order, or the merchant's index), a chunk at a time
# after the last LSN read, the two merged by LSN.
# A refund names its payment as 'pay_<lsn>': joined on exactly that id, of the same merchant.
PAYMENT_ROWS = (
    "SELECT lsn, 'payment', 'pay_' || lsn, NULL, merchant_id, order_id, payer, amount,"
    " amount_refunded, currency, status, failure_code, created, description, NULL"
    " FROM payments WHERE created >= ? AND created < ? AND (? IS NULL OR merchant_id = ?)"
    " AND lsn > ? ORDER BY lsn LIMIT ?"
)
REFUND_ROWS = (
    "SELECT r.lsn, 'refund', 're_' || r.lsn, r.payment_id, r.merchant_id, p.order_id, p.payer,"
    " r.amount, NULL, r.currency, r.status, r.failure_code, r.created, NULL, r.reason"
    " FROM refunds AS r LEFT JOIN payments AS p"
    " ON p.lsn = CAST(substr(r.payment_id, 5) AS INTEGER)"
    " AND r.payment_id = 'pay_' || p.lsn AND p.merchant_id = r.merchant_id"
    " WHERE r.created >= ? AND r.created < ? AND (? IS NULL OR r.merchant_id = ?)"
    " AND r.lsn > ? ORDER BY r.lsn LIMIT ?"
)


def unix_seconds(text: str) -> int:
    """`--since` / `--until`: unix seconds, or an ISO 8601 date or time (UTC unless it says
    otherwise: `2026-12-01`, `2026-12-01T09:30:00Z`). ValueError naming what it cannot read."""
    seconds = ascii_int(text)
    if seconds is not None and seconds > SQLITE_INTEGER_MAX:
        raise ValueError(f"{text!r} is past any time the database holds")
    if seconds is not None:
        return seconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither unix seconds nor an ISO 8601 date or time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def iso_utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def export_rows(path: Path, window: ExportWindow) -> Iterator[ExportRow]:
    """The window's rows in LSN order, read in one read transaction. The database is opened
    here, before the first row is asked for: HistoryUnavailableError if there is none."""
    connection = connect_read_only(path)
    connection.execute("BEGIN")
    return window_rows(connection, window)


def window_rows(connection: Connection, window: ExportWindow) -> Iterator[ExportRow]:
    try:
        merchant = window.merchant_id
        params = (window.since_s, window.until_s, merchant, merchant)
        payments = chunked(connection, PAYMENT_ROWS, params)
        refunds = chunked(connection, REFUND_ROWS, params)
        for _, *fields in heapq.merge(payments, refunds, key=lambda row: row[0]):
            created = fields[11]
            yield ExportRow._make([*fields[:12], iso_utc(created), *fields[12:]])
    finally:
        connection.close()


def chunked(connection: Connection, sql: str, params: tuple[Param, ...]) -> Iterator[Row]:
    """The rows of `sql` (its last two parameters: the LSN after which, and how many), read
    CHUNK_ROWS at a time."""
    after = 0
    while True:
        rows = connection.fetch(sql, [*params, after, CHUNK_ROWS])
        yield from rows
        if len(rows) < CHUNK_ROWS:
            return
        after = rows[-1][0]


def write_csv(rows: Iterator[ExportRow], stream: IO[str]) -> int:
    """A header line, then one line per row (an empty field for None); the rows written."""
    writer = csv.writer(stream)
    writer.writerow(ExportRow._fields)
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    return count


def write_ndjson(rows: Iterator[ExportRow], stream: IO[bytes]) -> int:
    """One JSON object per line (null for None); the rows written."""
    count = 0
    for row in rows:
        stream.write(orjson.dumps(row._asdict(), option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count
