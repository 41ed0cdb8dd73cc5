"""Payments of history: recovery, reopening from a snapshot, the pause a snapshot makes, and the
memory each payment keeps, each against a baseline measured in the same run.

The history: HISTORY_PAYMENTS payments (1 M; 50 k in quick mode) of the demo merchant over 10 000
funded payers, built once for the module (fsync="off": the log holds the same records), then kept
twice: copied while the engine was still open (what a crash leaves: the log, no snapshot) and
closed (a snapshot of it all). The naive engine (`benches/baselines/naive_engine.py`) gets the same
payments: its JSON-lines log and a JSON snapshot of its dicts.
- Recovery: reopening the crash copy replays every record; baseline, the naive engine replaying its
  log.
- Reopening from the snapshot, until the engine takes requests; baseline, the naive engine loading
  its snapshot.
- Snapshot pause: PAUSE_BATCHES batches of 1000 payments streamed four in flight (durable, as the
  throughput rows) into a copy of the snapshotted history. Baseline: the median gap between two
  answers when no snapshot is due; the row: the longest gap when the engine takes its automatic
  snapshot halfway through (`snapshot_every_records`).
- RSS growth per payment of history at RSS_PAYMENTS payments, each in a fresh process
  (`benches/history_workload.py`), instapay and the naive engine. The issue asks for it at 10 M;
  RSS_PAYMENTS is the largest history that fits in about a minute of the full run at today's
  rate: raise it when the engine is faster. Nothing is extrapolated: the size measured is in the
  row.
Public API only (`Engine.open`, `submit_many`, the snapshot files on disk), so these keep working
whatever the engine's internals become.
"""

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benches.conftest import pedantic, scaled
from benches.engine_workload import (
    ACCOUNTS,
    BATCH_LEN,
    DEMO,
    FUNDS,
    HISTORY_PAYMENTS,
    add_history,
    add_naive_history,
    funded_naive_engine,
    open_engine,
    stream,
)
from benches.http.presign import signed_payments
from instapay.http.server import freeze_survivors_of_full_collections

PAUSE_BATCHES = scaled(40, 16)
PAUSE_PAYMENTS = PAUSE_BATCHES * BATCH_LEN
# Records after the reopened snapshot before the engine takes the next: once, halfway through the
# stream (past a batch boundary, so the stream's end does not reach a second).
PAUSE_SNAPSHOT_EVERY_RECORDS = PAUSE_PAYMENTS // 2 + BATCH_LEN // 2
# About a minute of the full run at today's 30-40 k payments/s; 10 M is the size.
RSS_PAYMENTS = scaled(2_000_000, 100_000)
# What setting up the demo logs: the settlement account, then an account, a deposit and a mandate
# per payer.
SETUP_RECORDS = 1 + 3 * ACCOUNTS
HISTORY = f"{HISTORY_PAYMENTS:,} payments"
RECOVERY_GROUP = f"history: recovery of {HISTORY} from the log"
REOPEN_GROUP = f"history: reopening {HISTORY} from a snapshot"
PAUSE_GROUP = f"history: gaps between answers at {HISTORY}"
MEMORY_GROUP = f"history: RSS growth per payment at {RSS_PAYMENTS:,} payments"


@dataclass(frozen=True)
class History:
    crashed: Path
    """The data directory as a crash leaves it: every payment in the log, no snapshot."""
    snapshotted: Path
    """The same history, closed: one snapshot holds it all."""
    naive_log: Path
    naive_snapshot: Path


def build_instapay_history(live: Path, crashed: Path) -> None:
    async def build() -> None:
        # A reopened engine keeps the index it snapshotted: room for the pause rows' payments.
        room = HISTORY_PAYMENTS + PAUSE_PAYMENTS
        async with open_engine(live, room, fsync="off") as engine:
            await DEMO.set_up(engine, ACCOUNTS, FUNDS)
            await add_history(engine, "history-", HISTORY_PAYMENTS)
            # Every payment is answered, so written: a copy now is what a crash would leave.
            shutil.copytree(live, crashed)
        # Closing took the snapshot.

    asyncio.run(build())


def build_naive_history(log: Path, snapshot: Path) -> None:
    """The same payments as the engine's (the same bodies), checked already."""
    naive = funded_naive_engine(log)
    add_naive_history(naive, "history-", HISTORY_PAYMENTS)
    naive.snapshot(snapshot)
    naive.close()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    freeze_survivors_of_full_collections()  # as `instapay serve` does before it recovers
    root = tmp_path_factory.mktemp("history")
    built = History(root / "crashed", root / "live", root / "naive.log", root / "naive.snapshot")
    build_instapay_history(built.snapshotted, built.crashed)
    build_naive_history(built.naive_log, built.naive_snapshot)
    return built


def median_s(benchmark: BenchmarkFixture) -> float:
    stats = benchmark.stats
    assert stats is not None
    return float(stats.stats.median)


def timed_reopen(benchmark: BenchmarkFixture, directory: Path) -> int:
    """Times reopening `directory` until the engine takes requests; the last LSN it recovered."""
    opened = open_engine(directory, HISTORY_PAYMENTS, snapshot_on_close=False)
    with asyncio.Runner() as runner:
        engine = pedantic(benchmark, lambda: runner.run(opened.__aenter__()), rounds=1)
        last_lsn = engine.lsn_next - 1
        runner.run(opened.__aexit__(None, None, None))
    return last_lsn


@pytest.mark.benchmark(group=RECOVERY_GROUP)
def test_naive_recovery(benchmark: BenchmarkFixture, history: History) -> None:
    naive = funded_naive_engine(history.naive_log)
    records = pedantic(benchmark, naive.recover, rounds=1)
    naive.close()
    assert records == len(naive.orders) == HISTORY_PAYMENTS
    benchmark.extra_info.update(items=records, unit="records/s", baseline=True)


@pytest.mark.benchmark(group=RECOVERY_GROUP)
def test_recovery(benchmark: BenchmarkFixture, history: History) -> None:
    last_lsn = timed_reopen(benchmark, history.crashed)
    assert last_lsn == SETUP_RECORDS + HISTORY_PAYMENTS
    benchmark.extra_info.update(items=last_lsn, unit="records/s", baseline=False)


@pytest.mark.benchmark(group=REOPEN_GROUP)
def test_naive_reopen_from_snapshot(
    benchmark: BenchmarkFixture, history: History, tmp_path: Path
) -> None:
    naive = funded_naive_engine(tmp_path / "naive.log")
    pedantic(benchmark, lambda: naive.restore(history.naive_snapshot), rounds=1)
    naive.close()
    assert len(naive.orders) == HISTORY_PAYMENTS
    benchmark.extra_info.update(seconds=median_s(benchmark), unit="s", baseline=True)


@pytest.mark.benchmark(group=REOPEN_GROUP)
def test_reopen_from_snapshot(benchmark: BenchmarkFixture, history: History) -> None:
    last_lsn = timed_reopen(benchmark, history.snapshotted)
    assert last_lsn == SETUP_RECORDS + HISTORY_PAYMENTS
    benchmark.extra_info.update(seconds=median_s(benchmark), unit="s", baseline=False)


def snapshot_files(directory: Path) -> set[str]:
    """The snapshots on disk (their names carry their LSN)."""
    return {path.name for path in (directory / "snapshots").glob("*.snap")}


def stream_gaps_ms(
    benchmark: BenchmarkFixture, directory: Path, snapshot_every_records: int | None
) -> tuple[list[float], int]:
    """Times PAUSE_BATCHES batches streamed into the history in `directory`: the gaps between
    consecutive answers (ms), and how many snapshots the engine took meanwhile."""
    opened = open_engine(
        directory,
        HISTORY_PAYMENTS + PAUSE_PAYMENTS,
        snapshot_every_records=snapshot_every_records,
        snapshot_on_close=False,
    )
    with asyncio.Runner() as runner:
        engine = runner.run(opened.__aenter__())
        before = snapshot_files(directory)

        def setup() -> tuple[tuple[object, ...], dict[str, object]]:
            now_s = int(time.time())
            requests = signed_payments(DEMO, "pause-", PAUSE_PAYMENTS, payers=ACCOUNTS, now_s=now_s)
            return (requests,), {}

        answered_s = pedantic(
            benchmark, lambda requests: runner.run(stream(engine, requests)), setup=setup, rounds=1
        )
        runner.run(opened.__aexit__(None, None, None))
    gaps_ms = [(later - sooner) * 1e3 for sooner, later in pairwise(answered_s)]
    return gaps_ms, len(snapshot_files(directory) - before)


def record_gaps(benchmark: BenchmarkFixture, gaps_ms: list[float], snapshots: int) -> None:
    benchmark.extra_info.update(
        unit="ms",
        gap_p50_ms=statistics.median(gaps_ms),
        gap_max_ms=max(gaps_ms),
        snapshots_taken=snapshots,
    )


@pytest.fixture
def history_copy(history: History, tmp_path: Path) -> Path:
    """The snapshotted history in a directory of its own: the stream adds to it."""
    copy = tmp_path / "data"
    shutil.copytree(history.snapshotted, copy)
    return copy


@pytest.mark.benchmark(group=PAUSE_GROUP)
def test_gap_between_batches(benchmark: BenchmarkFixture, history_copy: Path) -> None:
    gaps_ms, snapshots = stream_gaps_ms(benchmark, history_copy, None)
    assert snapshots == 0
    record_gaps(benchmark, gaps_ms, snapshots)
    benchmark.extra_info.update(milliseconds=statistics.median(gaps_ms), baseline=True)


@pytest.mark.benchmark(group=PAUSE_GROUP)
def test_snapshot_pause(benchmark: BenchmarkFixture, history_copy: Path) -> None:
    gaps_ms, snapshots = stream_gaps_ms(benchmark, history_copy, PAUSE_SNAPSHOT_EVERY_RECORDS)
    assert snapshots == 1
    record_gaps(benchmark, gaps_ms, snapshots)
    benchmark.extra_info.update(milliseconds=max(gaps_ms), baseline=False)


@pytest.mark.benchmark(group=MEMORY_GROUP)
@pytest.mark.parametrize("implementation", ["naive", "instapay"])
def test_rss_per_payment(benchmark: BenchmarkFixture, implementation: str, tmp_path: Path) -> None:
    module = "benches.history_workload"
    command = [sys.executable, "-m", module, implementation, str(RSS_PAYMENTS), str(tmp_path)]
    # The command is this interpreter and literal arguments, nothing from outside.
    probe = lambda: subprocess.run(command, check=True, capture_output=True, text=True)  # noqa: E731, S603
    result = pedantic(benchmark, probe, rounds=1)
    benchmark.extra_info.update(json.loads(result.stdout))
    benchmark.extra_info.update(
        unit="B/payment", baseline=implementation == "naive", history_payments=RSS_PAYMENTS
    )
