"""The reads of the history database: a merchant's payments (lists, by id, by order), a
payment's refunds, a merchant's events, an account's statement.

`HistoryReads` is the interface the HTTP layer reads through; `HistoryReader` implements it
over SQLite: read-only connections (one per thread) in a pool of `READ_THREADS` threads, so a
query never runs on the event loop and the projector (the one writer) is never blocked (WAL
mode: readers see the last committed transaction). The connections go through the SQLite the
projector writes with (`_core.HistoryReadConnection`), never Python's `sqlite3`: see
`Connection`. A PostgreSQL backend would be a second class with the same methods, the SQL
below its only change.

Every read is by merchant (or, for statements, by account, which only admins read): a row of
another merchant is never returned, and a cursor naming one is refused as unknown.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import orjson

from instapay import _core
from instapay.model import Failure, PaymentResult, RefundResult, Status
from instapay.protocol import entry_id, payment_id, refund_id

T = TypeVar("T")
Row = tuple[Any, ...]
"""A row as a connection gives it (its columns typed by the schema)."""
Param = int | str | None
"""What a query binds."""

READ_THREADS = 2
# A filtered list (status, payer, created) walks the merchant's payments newest first and keeps
# those that match: at most this many per request, so a rare filter over 10 M payments answers
# in about 14 ms (measured here: ~0.7 µs a row examined; 100 000 took 40 to 60 ms and held one
# of the two reader threads that long). Past it the page holds what was found, `has_more` is
# true and `scanned_to` names the last payment examined, the cursor to continue from.
SCANNED_ROWS_MAX = 20_000
# The first window of a filtered scan (`scanned_page`).
SCAN_WINDOW_MIN = 1000
# SQLite's integers are signed 64-bit: a larger LSN (an id may carry up to a u64) or time is
# in no row, and binding one would raise.
SQLITE_INTEGER_MAX = 2**63 - 1
# How long a read waits for a lock (only a WAL recovery takes one readers wait on).
BUSY_TIMEOUT_MS = 5000

PAYMENT_COLUMNS = (
    "lsn, merchant_id, order_id, payer, amount, currency, status, failure_code, created, "
    "description, metadata, amount_refunded"
)
REFUND_COLUMNS = (
    "lsn, payment_id, merchant_id, amount, currency, status, failure_code, created, reason"
)
# The SQL is these constants and `?` placeholders: every value is bound, none is spliced in.
PAYMENT_SELECT = f"SELECT {PAYMENT_COLUMNS} FROM payments"  # noqa: S608 (constant)
REFUND_SELECT = f"SELECT {REFUND_COLUMNS} FROM refunds"  # noqa: S608 (constant)


class HistoryQueryError(ValueError):
    """A read's parameter the database cannot answer (a cursor it does not hold for this
    merchant, or both cursors): `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


class HistoryUnavailableError(Exception):
    """The history database cannot be read (missing, or not yet created by the projector)."""


@dataclass(frozen=True, slots=True)
class Cursors:
    """Stripe's cursors as LSNs: `starting_after` (older items than it) or `ending_before`
    (newer ones), never both."""

    starting_after: int | None = None
    ending_before: int | None = None

    def __post_init__(self) -> None:
        if self.starting_after is not None and self.ending_before is not None:
            raise HistoryQueryError(
                "ending_before", "starting_after and ending_before exclude each other"
            )


@dataclass(frozen=True, slots=True)
class PaymentFilters:
    """What `payments` keeps; None keeps all. `created_gte` inclusive, `created_lt` exclusive
    (unix seconds)."""

    status: Status | None = None
    payer: str | None = None
    created_gte: int | None = None
    created_lt: int | None = None
    order_id: str | None = None

    def scans(self) -> bool:
        """Whether the filters are checked row by row over the merchant's index (bounded)
        rather than answered by an index (none, or an order id)."""
        row_filters = (self.status, self.payer, self.created_gte, self.created_lt)
        return self.order_id is None and any(value is not None for value in row_filters)

    def sql(self) -> tuple[str, list[Param]]:
        """The conditions (each ` AND ...`) and their parameters."""
        conditions: dict[str, Param] = {
            "status = ?": None if self.status is None else self.status.value,
            "payer = ?": self.payer,
            "created >= ?": self.created_gte,
            "created < ?": self.created_lt,
            "order_id = ?": self.order_id,
        }
        kept = [(text, value) for text, value in conditions.items() if value is not None]
        return "".join(f" AND {text}" for text, _ in kept), [value for _, value in kept]


class Page(NamedTuple, Generic[T]):
    """A list's items, newest first; whether more lie beyond them in the page's direction; and
    when the scan bound stopped a filtered list, the LSN of the last payment examined."""

    items: list[T]
    has_more: bool
    scanned_to: int | None = None


class Entry(NamedTuple):
    """A change of an account's balance: at `lsn`, by `amount` (signed: positive credits),
    leaving `balance_after`; `created` is the payment's or refund's time (None for deposits
    and withdrawals, whose records keep none in the database)."""

    lsn: int
    kind: str
    amount: int
    currency: str
    balance_after: int
    created: int | None


class Event(NamedTuple):
    """An event: the payment or refund result logged at `lsn`, as it was then (a payment's
    `amount_refunded` is 0: its event is its creation)."""

    lsn: int
    result: PaymentResult | RefundResult


class HistoryReads(Protocol):
    """The reads of the history store, whatever holds it (SQLite now; PostgreSQL could be added
    behind the same methods)."""

    async def payments(
        self, merchant_id: str, limit: int, cursors: Cursors, filters: PaymentFilters
    ) -> Page[PaymentResult]: ...

    async def payment(self, merchant_id: str, lsn: int) -> PaymentResult | None: ...

    async def payments_for_order(self, merchant_id: str, order_id: str) -> list[PaymentResult]: ...

    async def refunds(
        self, merchant_id: str, payment_lsn: int, limit: int, cursors: Cursors
    ) -> Page[RefundResult]: ...

    async def events_after(
        self, merchant_id: str, after_lsn: int, limit: int
    ) -> tuple[list[Event], bool]: ...

    async def account_exists(self, account_id: str) -> bool: ...

    async def entries(self, account_id: str, limit: int, cursors: Cursors) -> Page[Entry]: ...

    def close(self) -> None: ...


Connection = _core.HistoryReadConnection
"""A read-only connection through the SQLite the projector writes with (`_core`): Python's
`sqlite3` is a second copy of SQLite, and two copies in one process do not see each other's
locks (rust/history_reads_py.rs says more); the SQL is here, the native side only runs it."""


def connect_read_only(path: Path) -> Connection:
    """A read-only connection; HistoryUnavailableError if there is no database at `path`."""
    if not path.is_file():
        raise HistoryUnavailableError(f"{path}: no history database")
    try:
        connection = Connection(path, BUSY_TIMEOUT_MS)
    except OSError as error:
        raise HistoryUnavailableError(
            f"{path}: cannot open the history database: {error}"
        ) from error
    try:
        connection.fetch("SELECT lsn FROM projection", [])
    except OSError as error:
        connection.close()
        raise HistoryUnavailableError(f"{path}: not a history database: {error}") from error
    return connection


def first(connection: Connection, sql: str, params: Sequence[Param]) -> Row | None:
    rows = connection.fetch(sql, params)
    return rows[0] if rows else None


def payment_of(row: Row) -> PaymentResult:
    """A `PAYMENT_COLUMNS` row as the model's result (what `to_json` answers today)."""
    lsn, merchant, order, payer, amount, currency, status, failure, created, *texts = row
    description, metadata, refunded = texts
    return PaymentResult(
        payment_id(lsn),
        merchant,
        order,
        payer,
        amount,
        currency,
        Status(status),
        None if failure is None else Failure(failure),
        created,
        description,
        None if metadata is None else orjson.loads(metadata),
        refunded,
    )


def refund_of(row: Row) -> RefundResult:
    """A `REFUND_COLUMNS` row as the model's result."""
    lsn, payment, merchant, amount, currency, status, failure, created, reason = row
    return RefundResult(
        refund_id(lsn),
        payment,
        merchant,
        amount,
        currency,
        Status(status),
        None if failure is None else Failure(failure),
        created,
        reason,
    )


@dataclass(frozen=True, slots=True)
class PagedQuery:
    """A list of one table's rows by LSN: `select` (its FROM and WHERE, with `where_params`),
    the column the rows are ordered by, newest first."""

    select: str
    where_params: tuple[Param, ...]
    lsn_column: str = "lsn"

    def rows(self, connection: Connection, limit: int, cursors: Cursors) -> list[Row]:
        """Up to `limit + 1` rows of the page (the extra one tells whether there is more), in
        the page's direction: newest first, or with `ending_before` oldest first."""
        text, params = self.select + self.bound(cursors), [*self.where_params]
        cursor = cursors.ending_before if cursors.starting_after is None else cursors.starting_after
        if cursor is not None:
            params.append(cursor)
        order = "ASC" if cursors.ending_before is not None else "DESC"
        params.append(limit + 1)
        return connection.fetch(f"{text} ORDER BY {self.lsn_column} {order} LIMIT ?", params)

    def bound(self, cursors: Cursors) -> str:
        if cursors.starting_after is not None:
            return f" AND {self.lsn_column} < ?"
        if cursors.ending_before is not None:
            return f" AND {self.lsn_column} > ?"
        return ""

    def page(self, connection: Connection, limit: int, cursors: Cursors) -> Page[Row]:
        """The page's rows newest first, and whether more lie beyond them in its direction."""
        rows = self.rows(connection, limit, cursors)
        has_more = len(rows) > limit
        del rows[limit:]
        if cursors.ending_before is not None:
            rows.reverse()
        return Page(rows, has_more)

    def within(self, lsn: int, cursors: Cursors) -> PagedQuery:
        """The same query, kept to the rows from `lsn` on in the page's direction."""
        comparison = ">=" if cursors.ending_before is None else "<="
        text = f"{self.select} AND {self.lsn_column} {comparison} ?"
        return PagedQuery(text, (*self.where_params, lsn), self.lsn_column)


def check_cursors(
    connection: Connection,
    exists: str,
    params: tuple[Param, ...],
    cursors: Cursors,
    name: Callable[[int], str],
) -> None:
    """HistoryQueryError naming the cursor parameter if `exists` (a query taking the cursor's
    LSN, then `params`) finds no row for it: an unknown and a foreign cursor read the same."""
    for parameter, lsn in (
        ("starting_after", cursors.starting_after),
        ("ending_before", cursors.ending_before),
    ):
        if lsn is not None and not has_row(connection, exists, lsn, params):
            raise HistoryQueryError(parameter, f"{name(lsn)} is not in this list")


def has_row(connection: Connection, exists: str, lsn: int, params: tuple[Param, ...]) -> bool:
    """Whether `exists` finds a row at `lsn` (then `params`)."""
    if lsn > SQLITE_INTEGER_MAX:
        return False
    return first(connection, exists, [lsn, *params]) is not None


def scan_limit(
    connection: Connection, merchant_id: str, cursors: Cursors, window: int
) -> tuple[int, bool] | None:
    """Where a filtered scan of `window` of the merchant's payments stops: the LSN of the
    `window`-th payment in the page's direction and whether any lies beyond it; None if there
    are fewer (read from the index alone)."""
    listed = PagedQuery("SELECT lsn FROM payments WHERE merchant_id = ?", (merchant_id,))
    order = "ASC" if cursors.ending_before is not None else "DESC"
    text = f"{listed.select}{listed.bound(cursors)} ORDER BY lsn {order} LIMIT 2 OFFSET ?"
    cursor = cursors.ending_before if cursors.starting_after is None else cursors.starting_after
    params: list[Param] = [merchant_id, *([] if cursor is None else [cursor])]
    params.append(window - 1)
    found = connection.fetch(text, params)
    return None if not found else (found[0][0], len(found) > 1)


def payments_page(
    connection: Connection,
    merchant_id: str,
    limit: int,
    cursors: Cursors,
    filters: PaymentFilters,
) -> Page[PaymentResult]:
    check_cursors(connection, PAYMENT_OF_MERCHANT, (merchant_id,), cursors, payment_id)
    conditions, params = filters.sql()
    query = PagedQuery(
        PAYMENT_SELECT + " WHERE merchant_id = ?" + conditions,
        (merchant_id, *params),
    )
    if not filters.scans():
        rows, has_more, _ = query.page(connection, limit, cursors)
        return Page([payment_of(row) for row in rows], has_more)
    return scanned_page(connection, merchant_id, query, limit, cursors)


def scanned_page(
    connection: Connection, merchant_id: str, query: PagedQuery, limit: int, cursors: Cursors
) -> Page[PaymentResult]:
    """A filtered page, the scan kept to a window of the merchant's payments: SCAN_WINDOW_MIN
    first, ten times more each time the page is not full, up to SCANNED_ROWS_MAX. A filter
    most payments match answers from the first window; a rare one stops at the bound, saying
    where (`scanned_to`). Each window scans the last one's rows again: 11 % more at most."""
    window = SCAN_WINDOW_MIN
    while True:
        window = min(window, SCANNED_ROWS_MAX)
        stop = scan_limit(connection, merchant_id, cursors, window)
        kept = query if stop is None else query.within(stop[0], cursors)
        rows, has_more, _ = kept.page(connection, limit, cursors)
        payments = [payment_of(row) for row in rows]
        if stop is None or has_more:
            return Page(payments, has_more)
        if window == SCANNED_ROWS_MAX:
            return Page(payments, True, stop[0]) if stop[1] else Page(payments, False)
        window *= 10


PAYMENT_OF_MERCHANT = "SELECT 1 FROM payments WHERE lsn = ? AND merchant_id = ?"
REFUND_OF_PAYMENT = "SELECT 1 FROM refunds WHERE lsn = ? AND payment_id = ? AND merchant_id = ?"
ENTRY_OF_ACCOUNT = "SELECT 1 FROM account_entries WHERE lsn = ? AND account_id = ?"
# An entry, its account's currency, and the time of the payment or refund it belongs to.
ENTRY_SELECT = (
    "SELECT e.lsn, e.kind, e.amount, a.currency, e.balance_after, COALESCE(p.created, r.created)"
    " FROM account_entries AS e JOIN accounts AS a ON a.account_id = e.account_id"
    " LEFT JOIN payments AS p ON e.kind = 'payment' AND p.lsn = e.lsn"
    " LEFT JOIN refunds AS r ON e.kind = 'refund' AND r.lsn = e.lsn"
    " WHERE e.account_id = ?"
)


def refunds_page(
    connection: Connection, merchant_id: str, payment_lsn: int, limit: int, cursors: Cursors
) -> Page[RefundResult]:
    refunded = payment_id(payment_lsn)
    check_cursors(connection, REFUND_OF_PAYMENT, (refunded, merchant_id), cursors, refund_id)
    query = PagedQuery(
        REFUND_SELECT + " WHERE payment_id = ? AND merchant_id = ?",
        (refunded, merchant_id),
    )
    rows, has_more, _ = query.page(connection, limit, cursors)
    return Page([refund_of(row) for row in rows], has_more)


def entries_page(
    connection: Connection, account_id: str, limit: int, cursors: Cursors
) -> Page[Entry]:
    check_cursors(connection, ENTRY_OF_ACCOUNT, (account_id,), cursors, entry_id)
    query = PagedQuery(ENTRY_SELECT, (account_id,), "e.lsn")
    rows, has_more, _ = query.page(connection, limit, cursors)
    return Page([Entry(*row) for row in rows], has_more)


def events_after(
    connection: Connection, merchant_id: str, after_lsn: int, limit: int
) -> tuple[list[Event], bool]:
    """The merchant's events after `after_lsn`, oldest first, and whether more follow: each
    table's first `limit + 1`, merged by LSN (bounded whatever the history)."""
    params = (merchant_id, min(after_lsn, SQLITE_INTEGER_MAX), limit + 1)
    where = "WHERE merchant_id = ? AND lsn > ? ORDER BY lsn LIMIT ?"
    payments = connection.fetch(f"{PAYMENT_SELECT} {where}", params)
    refunds = connection.fetch(f"{REFUND_SELECT} {where}", params)
    events = [Event(row[0], payment_of(row)._replace(amount_refunded=0)) for row in payments]
    events += [Event(row[0], refund_of(row)) for row in refunds]
    events.sort(key=lambda event: event.lsn)
    return events[:limit], len(events) > limit


class HistoryReader:
    """`HistoryReads` over the SQLite history database at `path` (read-only; see the module)."""

    def __init__(self, path: Path, threads: int = READ_THREADS) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="instapay-history")

    def _connection(self) -> Connection:
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = connect_read_only(self.path)
            with self._lock:
                self._connections.append(connection)
            self._local.connection = connection
        return connection

    def _read(self, read: Callable[[Connection], T]) -> T:
        """`read` in one read transaction: its queries see one state of the database."""
        connection = self._connection()
        try:
            connection.execute("BEGIN")
            try:
                return read(connection)
            finally:
                connection.execute("COMMIT")
        except OSError as error:
            raise HistoryUnavailableError(f"{self.path}: a read failed: {error}") from error

    async def _run(self, read: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._read, read)

    async def payments(
        self, merchant_id: str, limit: int, cursors: Cursors, filters: PaymentFilters
    ) -> Page[PaymentResult]:
        """The merchant's payments, newest first (Stripe's list; the scan bound: the module)."""
        return await self._run(lambda c: payments_page(c, merchant_id, limit, cursors, filters))

    async def payment(self, merchant_id: str, lsn: int) -> PaymentResult | None:
        text = PAYMENT_SELECT + " WHERE lsn = ? AND merchant_id = ?"
        if lsn > SQLITE_INTEGER_MAX:
            return None
        row = await self._run(lambda c: first(c, text, [lsn, merchant_id]))
        return None if row is None else payment_of(row)

    async def payments_for_order(self, merchant_id: str, order_id: str) -> list[PaymentResult]:
        """The merchant's payments for one order id, oldest first."""
        text = PAYMENT_SELECT + " WHERE merchant_id = ? AND order_id = ? ORDER BY lsn"
        rows = await self._run(lambda c: c.fetch(text, [merchant_id, order_id]))
        return [payment_of(row) for row in rows]

    async def refunds(
        self, merchant_id: str, payment_lsn: int, limit: int, cursors: Cursors
    ) -> Page[RefundResult]:
        """A payment's refunds, declined ones included, newest first."""
        return await self._run(lambda c: refunds_page(c, merchant_id, payment_lsn, limit, cursors))

    async def events_after(
        self, merchant_id: str, after_lsn: int, limit: int
    ) -> tuple[list[Event], bool]:
        return await self._run(lambda c: events_after(c, merchant_id, after_lsn, limit))

    async def account_exists(self, account_id: str) -> bool:
        text = "SELECT 1 FROM accounts WHERE account_id = ?"
        return await self._run(lambda c: first(c, text, [account_id]) is not None)

    async def entries(self, account_id: str, limit: int, cursors: Cursors) -> Page[Entry]:
        """An account's statement, newest first."""
        return await self._run(lambda c: entries_page(c, account_id, limit, cursors))

    def close(self) -> None:
        """Waits for the reads under way, then closes every connection."""
        self._pool.shutdown(wait=True)
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
