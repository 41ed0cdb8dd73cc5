"""The history projector thread: one writer of `history.db`, owning the native projector
(`_core.HistoryProjector`, rust/history/), fed every durable batch by the engine's log thread.

Each step projects what is queued in one transaction (at most `TRANSACTION_RECORDS_MAX`
records), the projected LSN in the same transaction. Records the queue does not hold (at start:
those after `projection.lsn` the log already had; later: batches offered while the queue was
full) are read back from the log's segments: the log is the truth, the queue only spares the
read. Only durable records are projected (none above the log end the engine reported), so a
crash never leaves a row the log lost.

A failed write (a full disk, a lock another writer holds) is logged and retried with backoff;
the engine goes on, the lag grows, and the engine's backpressure refuses new payments once it
passes its bound. This module knows nothing of the engine: the engine hands it the log's end,
the frames, and the conversion of version-0 (JSON) records.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from instapay import _core
from instapay.storage import wal
from instapay.storage.history import history_path

log = logging.getLogger(__name__)

# One transaction's records: large transactions are what makes the projector fast, and this
# bounds the WAL file a transaction grows (about 200 bytes a record).
TRANSACTION_RECORDS_MAX = 65_536
# Records queued for the projector (about 200 bytes each); beyond, a batch is left to be read
# back from the log, so a projector far behind costs no memory.
QUEUE_RECORDS_MAX = 262_144
# How far the projector may fall behind the log before new payments are refused (503): about
# 2 s of projection at its measured rate (~85 k payments/s), so reads that wait for their writes
# (`Engine.history_caught_up`) wait seconds at most, and the log kept for the projector beyond
# the snapshots' stays small.
LAG_RECORDS_MAX_DEFAULT = 200_000
# Results kept in memory past what history.db holds: idempotent retries come within minutes
# (250 000 results is over 4 minutes at 1 000 payments/s, as long as the harness's runs), and a
# result takes about 80 bytes natively: 20 MB. What is older is read from the database.
HOT_RESULTS_MAX_DEFAULT = 250_000
# A transaction waits this long for this many records to be queued: under load several batches
# go in one, idle it costs a reader waiting for its write this much.
GATHER_S = 0.005
GATHER_RECORDS = 8192
RETRY_DELAY_S_MIN = 0.05
RETRY_DELAY_S_MAX = 5.0
# A thread with nothing to project makes its commits durable after this long.
IDLE_SYNC_S = 1.0
# Attempts at close before the rest is left to the next start's catch-up (a full disk must not
# keep the process from stopping).
CLOSE_ATTEMPTS_MAX = 3

# (logged type, payload) of a version-0 record -> (type, payload) of the current version.
LegacyConverter = Callable[[int, bytes], tuple[int, bytes]]
# A seeded account (id, currency, balance), payment (LSN, merchant, order id, payer, settlement
# account, amount, currency, failure code, amount refunded, description, metadata as JSON,
# created) and refund (LSN, payment id, merchant, amount, currency, failure code, reason,
# created), as `_core.HistoryProjector.seed` takes them.
AccountSeedRow = tuple[str, str, int]
PaymentSeedRow = tuple[
    int, str, str, str, str, int, str, str | None, int, str | None, str | None, int
]
RefundSeedRow = tuple[int, str, str, int, str, str | None, str | None, int]


@dataclass(frozen=True, slots=True)
class HistorySeed:
    """What a new history.db starts from when the log no longer reaches LSN 1: the accounts
    and the results a snapshot at `lsn` holds."""

    lsn: int
    accounts: list[AccountSeedRow]
    payments: list[PaymentSeedRow]
    refunds: list[RefundSeedRow]


# The log's first LSN -> the seed of the oldest kept snapshot it continues, or None.
SeedSource = Callable[[int], HistorySeed | None]


class HistoryUnreachableError(Exception):
    """history.db and the log do not meet: the records the database lacks are no longer (or
    not yet) in the log."""


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """The `[history]` settings: the lag bound of the backpressure, the log kept below what
    both the snapshots and the projector have passed, and the records of one transaction."""

    lag_records_max: int = LAG_RECORDS_MAX_DEFAULT
    log_keep_records: int = 0
    transaction_records_max: int = TRANSACTION_RECORDS_MAX
    # The results memory holds (the bounded hot state, engine/hot.py); older ones are read
    # from history.db.
    hot_results_max: int = HOT_RESULTS_MAX_DEFAULT

    def __post_init__(self) -> None:
        if self.lag_records_max < 1:
            raise ValueError("history lag_records_max must be at least 1")
        if self.log_keep_records < 0:
            raise ValueError("history log_keep_records must be at least 0")
        if self.transaction_records_max < 1:
            raise ValueError("history transaction_records_max must be at least 1")
        if self.hot_results_max < 1:
            raise ValueError("history hot_results_max must be at least 1")


@dataclass(slots=True)
class ProjectorStats:
    """The projector's LSNs and running totals, for monitoring (`/metrics`, `engine.stats`).
    Written by the projector's thread only; plain ints and floats, read from any thread."""

    # The last LSN committed in history.db, and the last one a synced commit made durable.
    lsn: int = 0
    durable_lsn: int = 0
    records: int = 0
    rows: int = 0
    transactions: int = 0
    failures: int = 0
    # Time spent in projection calls (the projector's own rate is rows / seconds).
    seconds: float = 0.0
    last_error: str | None = None

    @property
    def rows_per_s(self) -> float:
        """The projector's own rate: rows written per second spent projecting."""
        return self.rows / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class _Batch:
    lsn_first: int
    count: int
    frames: Sequence[bytes]

    @property
    def lsn_last(self) -> int:
        return self.lsn_first + self.count - 1


class HistoryProjector:
    """Opens history.db in `directory` and checks that the log (durable to `log_end`) reaches
    back to what it lacks (a new database the log does not reach from LSN 1 is first seeded
    from `seed_source`); `start` runs the thread, `offer` feeds it, `close` drains it."""

    def __init__(
        self,
        directory: Path,
        log_end: int,
        convert_legacy: LegacyConverter,
        *,
        notify: Callable[[], None] = lambda: None,
        transaction_records_max: int = TRANSACTION_RECORDS_MAX,
        seed_source: SeedSource | None = None,
    ) -> None:
        self.directory = directory
        self.path = history_path(directory)
        self._native = _core.HistoryProjector(self.path)
        # The native LSNs mirrored, read without waiting for a projection call to finish.
        self.stats = ProjectorStats(self._native.lsn, self._native.durable_lsn)
        self._log_end = log_end
        self._check_reaches(log_end, seed_source)
        self._convert_legacy = convert_legacy
        self._notify = notify
        self._records_max = transaction_records_max
        self._queue: deque[_Batch] = deque()
        self._queued_records = 0
        self._overflowed = False
        self._changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="instapay-history", daemon=True)

    def _check_reaches(self, log_end: int, seed_source: SeedSource | None) -> None:
        if self.lsn > log_end:
            self._native.close()
            raise HistoryUnreachableError(
                f"{self.path} is projected to LSN {self.lsn}, beyond the end of the log (LSN "
                f"{log_end}): it belongs to another log; move it away and restart to rebuild it"
            )
        segments = wal.segment_paths(self.directory / "wal")
        first = segments[0][0] if segments else log_end + 1
        if self.lsn == 0 and first > 1 and seed_source is not None:
            self._seed(first, seed_source)
        if self.lsn < log_end and first > self.lsn + 1:
            self._native.close()
            raise HistoryUnreachableError(
                f"{self.path} is projected to LSN {self.lsn}, but the log starts at LSN {first}: "
                f"records {self.lsn + 1} to {first - 1} are in no segment. Restore history.db "
                f"from a backup (or from before it was deleted), or run without a history "
                f"([history] enabled = false); with a history the log is kept until it is "
                f"projected ([history] log_keep_records keeps more)"
            )

    def _seed(self, log_first: int, seed_source: SeedSource) -> None:
        """A new (or empty) history.db when the log starts at `log_first` > 1: seeded from the
        oldest kept snapshot the log continues, then projected from the log after it."""
        try:
            seed = seed_source(log_first)
            if seed is None:
                return
            self._native.seed(seed.lsn, seed.accounts, seed.payments, seed.refunds)
        except BaseException:
            self._native.close()
            raise
        self.stats.lsn = self.stats.durable_lsn = seed.lsn
        log.warning(
            "history.db rebuilt from the snapshot at LSN %d: rows before it are only those the "
            "snapshot held (%d accounts with their balances, %d payments, %d refunds)",
            seed.lsn,
            len(seed.accounts),
            len(seed.payments),
            len(seed.refunds),
        )

    @property
    def lsn(self) -> int:
        """Every record up to this LSN is committed in history.db."""
        return self.stats.lsn

    @property
    def durable_lsn(self) -> int:
        """Every record up to this LSN is durable in history.db: the log below may go."""
        return self.stats.durable_lsn

    @property
    def log_end(self) -> int:
        """The last durable LSN the engine reported."""
        return self._log_end

    def start(self) -> None:
        self._thread.start()

    def offer(self, lsn_first: int, frames: Sequence[bytes], count: int) -> None:
        """Called by the log thread once `count` records from `lsn_first` are durable."""
        with self._changed:
            self._log_end = lsn_first + count - 1
            if not self._overflowed and self._queued_records + count <= QUEUE_RECORDS_MAX:
                self._queue.append(_Batch(lsn_first, count, frames))
                self._queued_records += count
            else:
                # This batch and every later one until the queue drains are left to the log:
                # the queue never holds a gap (a transaction across one would fail for good).
                self._overflowed = True
            self._changed.notify()

    def close(self) -> None:
        """Projects what is durable (a few attempts, then the next start catches up), makes it
        durable and closes the database."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.stats.durable_lsn = self._native.close()
        except OSError as error:
            log.error("closing the history database failed: %s", error)

    def _behind(self) -> bool:
        return self.lsn < self._log_end

    def _run(self) -> None:
        failures = 0
        while True:
            with self._changed:
                if not self._behind() and not self._closing:
                    self._changed.wait(IDLE_SYNC_S)
                if not self._behind() and self._closing:
                    return
                self._gather()
                batches = list(self._queue)
                log_end = self._log_end
            try:
                if self._behind():
                    self._step(batches, log_end)
                elif self.durable_lsn < self.lsn:
                    self.stats.durable_lsn = self._native.sync()
                failures = 0
            except Exception as error:  # logged and retried: the log keeps everything
                failures += 1
                self._failed(error, failures)
                if self._closing and failures >= CLOSE_ATTEMPTS_MAX:
                    log.warning(
                        "history projected to LSN %d of %d at close; the next start catches up",
                        self.lsn,
                        log_end,
                    )
                    return

    def _gather(self) -> None:
        """Waits up to GATHER_S for GATHER_RECORDS records to be queued (holding the lock):
        one transaction of several batches writes each page it changes once, where a
        transaction per batch writes the accounts' pages again for each."""
        deadline_s = time.monotonic() + GATHER_S
        while self._queued_records < GATHER_RECORDS and not self._closing:
            left_s = deadline_s - time.monotonic()
            if left_s <= 0:
                return
            self._changed.wait(left_s)

    def _failed(self, error: Exception, failures: int) -> None:
        self.stats.failures += 1
        self.stats.last_error = str(error)
        delay_s = min(RETRY_DELAY_S_MAX, RETRY_DELAY_S_MIN * 2 ** (failures - 1))
        log.error(
            "the history projector failed at LSN %d (attempt %d, next in %.2f s): %s",
            self.lsn + 1,
            failures,
            delay_s,
            error,
        )
        with self._changed:
            self._changed.wait(delay_s)

    def _step(self, batches: list[_Batch], log_end: int) -> None:
        """One transaction's worth: from the queue when it holds the next record, else from the
        log up to the first queued batch."""
        first_queued = batches[0].lsn_first if batches else log_end + 1
        if first_queued > self.lsn + 1:
            self._catch_up(min(first_queued - 1, log_end))
        else:
            taken: list[bytes] = []
            records = 0
            for batch in batches:
                if records >= self._records_max:
                    break
                taken.extend(batch.frames)
                records += batch.count
            data = taken[0] if len(taken) == 1 else b"".join(taken)
            self._project_all(data, 0, log_end)
        with self._changed:
            while self._queue and self._queue[0].lsn_last <= self.lsn:
                self._queued_records -= self._queue.popleft().count
            if not self._queue:
                self._overflowed = False
        self._notify()

    def _catch_up(self, lsn_last: int) -> None:
        """Projects the log's records after `lsn` up to `lsn_last`, segment by segment."""
        for scan in wal.scan_log(self.directory, self.lsn):
            # A segment being appended to may end in a record cut short: stop before it.
            data = scan.data if scan.end == len(scan.data) else scan.data[: scan.end]
            self._project_all(data, wal.SEGMENT_HEADER.size, lsn_last)
            if self.lsn >= lsn_last:
                return

    def _project_all(self, data: bytes, offset: int, lsn_last: int) -> None:
        """Projects the frames of `data` from `offset` up to `lsn_last`, a transaction of at most
        `_records_max` records at a time."""
        while offset < len(data) and self.lsn < lsn_last:
            end = self._project(data, offset, lsn_last)
            if end == offset:
                return
            offset = end

    def _project(self, data: bytes, offset: int, lsn_last: int) -> int:
        """One transaction; a version-0 record it stops at is converted and projected on its
        own. Returns the offset after what was projected."""
        started_s = time.perf_counter()
        end, lsn, durable, records, rows, legacy = self._native.project(
            data, offset, self._records_max, lsn_last
        )
        if legacy is not None:
            legacy_lsn, logged, payload = legacy
            current, converted = self._convert_legacy(logged, payload)
            frame = _core.wal_encode(legacy_lsn, [current], [converted])
            _, lsn, durable, more, more_rows, _ = self._native.project(frame, 0, 1, legacy_lsn)
            records, rows = records + more, rows + more_rows
            end += _core.WAL_HEADER_LEN + len(payload)
        self.stats.lsn, self.stats.durable_lsn = lsn, durable
        self.stats.seconds += time.perf_counter() - started_s
        self.stats.records += records
        self.stats.rows += rows
        self.stats.transactions += 1
        return end
