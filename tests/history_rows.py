"""History databases made by hand for the reader's unit tests: `rust/history/schema.sql` and
rows shaped as its comments say (the end-to-end tests use the real projector)."""

import sqlite3
from pathlib import Path

SCHEMA = Path(__file__).parents[1] / "rust" / "history" / "schema.sql"


class HistoryRows:
    """A history database at `path` with the projector's schema and rows, each statement
    committed at once. Written through Python's `sqlite3` while the reader reads through the
    core's SQLite, a second copy in this process: so in rollback-journal mode, not WAL. Two
    copies share a WAL index without seeing each other's locks (a reader then found no tables
    at all, now and then); between two statements here nothing is locked, and a reader's next
    transaction reads the file afresh. The WAL-mode database the projector writes is read by
    the end-to-end tests (tests/test_history_reads.py)."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode = DELETE")
        self.connection.executescript(SCHEMA.read_text())
        self.connection.execute("INSERT INTO projection VALUES (1, 1, 0)")
        self.balances: dict[str, int] = {}

    def account(self, account_id: str, lsn: int, currency: str = "EUR") -> None:
        self.connection.execute(
            "INSERT INTO accounts VALUES (?, ?, 0, ?)", (account_id, currency, lsn)
        )
        self.balances[account_id] = 0
        self.applied(lsn)

    def entry(self, account_id: str, lsn: int, kind: str, amount: int) -> None:
        self.balances[account_id] += amount
        balance = self.balances[account_id]
        self.connection.execute(
            "INSERT INTO account_entries VALUES (?, ?, ?, ?, ?)",
            (account_id, lsn, kind, amount, balance),
        )
        self.connection.execute(
            "UPDATE accounts SET balance = ? WHERE account_id = ?", (balance, account_id)
        )

    def payment(
        self,
        lsn: int,
        merchant_id: str = "shop",
        *,
        order_id: str | None = None,
        payer: str = "alice",
        amount: int = 100,
        status: str = "succeeded",
        created: int = 1_700_000_000,
        metadata: str | None = None,
    ) -> None:
        failure = None if status == "succeeded" else "insufficient_funds"
        self.connection.execute(
            "INSERT INTO payments VALUES (?, ?, ?, ?, ?, ?, 'EUR', ?, ?, 0, ?, ?, ?)",
            (
                lsn,
                merchant_id,
                order_id or f"order-{lsn}",
                payer,
                f"{merchant_id}-settles",
                amount,
                status,
                failure,
                f"payment {lsn}",
                metadata,
                created,
            ),
        )
        self.applied(lsn)

    def refund(
        self, lsn: int, payment_lsn: int, merchant_id: str = "shop", amount: int = 10
    ) -> None:
        self.connection.execute(
            "INSERT INTO refunds VALUES (?, ?, ?, ?, 'EUR', 'succeeded', NULL, 'asked', ?)",
            (lsn, f"pay_{payment_lsn}", merchant_id, amount, 1_700_000_100),
        )
        self.connection.execute(
            "UPDATE payments SET amount_refunded = amount_refunded + ? WHERE lsn = ?",
            (amount, payment_lsn),
        )
        self.applied(lsn)

    def applied(self, lsn: int) -> None:
        self.connection.execute("UPDATE projection SET lsn = ? WHERE lsn < ?", (lsn, lsn))
