"""Checks of history.db against what the engine holds and what the log says: the history
projector's tests, its property test and the crash test share them."""

import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

from instapay.engine import Engine, RecordType
from instapay.engine.records import split_type
from instapay.model import PaymentResult, RefundResult
from instapay.storage import wal
from instapay.storage.history import history_path

PAYMENT_COLUMNS = (
    "lsn, merchant_id, order_id, payer, amount, currency, status, failure_code, "
    "amount_refunded, description, metadata, created"
)
REFUND_COLUMNS = (
    "lsn, payment_id, merchant_id, amount, currency, status, failure_code, reason, created"
)
_PAYMENTS = {RecordType.PAYMENT, RecordType.PAYMENT_WITH_CONSENT}


def read_only(directory: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{history_path(directory)}?mode=ro", uri=True)


def rows(directory: Path, query: str) -> list[tuple[Any, ...]]:
    connection = read_only(directory)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def projected_lsn(directory: Path) -> int:
    [(lsn,)] = rows(directory, "SELECT lsn FROM projection")
    return int(lsn)


def payment_row(engine: Engine, result: PaymentResult) -> tuple[Any, ...]:
    now = engine.payment(result.id)
    assert now is not None
    failure = None if result.failure_code is None else result.failure_code.value
    return (
        int(result.id.removeprefix("pay_")),
        result.merchant_id,
        result.order_id,
        result.payer,
        result.amount,
        result.currency,
        result.status.value,
        failure,
        now.amount_refunded,
        result.description,
        result.metadata,
        result.created_s,
    )


def refund_row(result: RefundResult) -> tuple[Any, ...]:
    failure = None if result.failure_code is None else result.failure_code.value
    return (
        int(result.id.removeprefix("re_")),
        result.payment_id,
        result.merchant_id,
        result.amount,
        result.currency,
        result.status.value,
        failure,
        result.reason,
        result.created_s,
    )


def assert_history_matches(engine: Engine) -> None:
    """Every durable result has exactly one equal row and no other row exists; every account's
    balance is the ledger's; each account's entries sum to it, each `balance_after` the running
    sum. The caller waits for the projector first (`history_caught_up`)."""
    directory = engine.directory
    payments = [
        (*row[:10], None if row[10] is None else json.loads(row[10]), row[11])
        for row in rows(directory, f"SELECT {PAYMENT_COLUMNS} FROM payments ORDER BY lsn")  # noqa: S608 (constants)
    ]
    refunds = rows(directory, f"SELECT {REFUND_COLUMNS} FROM refunds ORDER BY lsn")  # noqa: S608 (constants)
    durable = [engine.results[lsn] for lsn in sorted(engine.results)]
    assert payments == [payment_row(engine, r) for r in durable if isinstance(r, PaymentResult)]
    assert refunds == [refund_row(r) for r in durable if isinstance(r, RefundResult)]
    accounts = rows(directory, "SELECT account_id, currency, balance FROM accounts")
    ledger = [(a.id, a.currency, a.balance) for a in engine.ledger.accounts()]
    assert sorted(accounts) == sorted(ledger)
    assert_entries_add_up(directory, {account_id: balance for account_id, _, balance in ledger})


def assert_entries_add_up(directory: Path, balances: dict[str, int]) -> None:
    entries: dict[str, list[tuple[int, int]]] = defaultdict(list)
    query = "SELECT account_id, amount, balance_after FROM account_entries ORDER BY account_id, lsn"
    for account_id, amount, balance_after in rows(directory, query):
        entries[account_id].append((amount, balance_after))
    assert set(entries) <= set(balances)
    for account_id, balance in balances.items():
        running = 0
        for amount, balance_after in entries[account_id]:
            running += amount
            assert balance_after == running, account_id
        assert running == balance, account_id


def logged_lsns(directory: Path) -> tuple[int, dict[str, set[int]]]:
    """The first LSN the log still holds, and the LSNs of its payment, refund and delivery
    records from there (a torn tail left out)."""
    found: dict[str, set[int]] = {"payments": set(), "refunds": set(), "deliveries": set()}
    segments = wal.segment_paths(directory / "wal")
    first = segments[0][0] if segments else 1
    for scan in wal.scan_log(directory, first - 1):
        for record in scan.records:
            kind, _ = split_type(record.type)
            if kind in _PAYMENTS:
                found["payments"].add(record.lsn)
            elif kind == RecordType.REFUND:
                found["refunds"].add(record.lsn)
            elif kind == RecordType.DELIVERIES:
                found["deliveries"].add(record.lsn)
    return first, found


def assert_history_is_a_prefix_of_the_log(directory: Path) -> int:
    """history.db holds exactly the log's payments and refunds up to its projected LSN, each
    once, and none after it (what a kill at any moment must leave), as far back as the log
    still reaches; returns that LSN."""
    lsn = projected_lsn(directory)
    first, logged = logged_lsns(directory)
    for table in ("payments", "refunds"):
        query = f"SELECT lsn FROM {table}"  # noqa: S608 (one of two table names)
        held = [at for (at,) in rows(directory, query) if at >= first]
        assert len(held) == len(set(held))
        assert set(held) == {at for at in logged[table] if at <= lsn}, table
    return lsn
