"""The history database: every payment, refund, account entry and delivery attempt ever logged,
in SQLite (WAL mode) in the data directory, projected from the write-ahead log
(`rust/history/schema.sql` is its schema). Derived data: the log is the truth."""

from __future__ import annotations

from pathlib import Path

HISTORY_FILE_NAME = "history.db"


def history_path(directory: Path) -> Path:
    """Where a data directory's history database is."""
    return directory / HISTORY_FILE_NAME
