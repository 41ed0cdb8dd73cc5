"""The reads of the history database with HISTORY_PAYMENTS payments stored: the p99 latency of a
page of the payments list (`GET /v1/payments?limit=100`) and of the oldest payment by id, read
from history.db, against the issue's bound (p99 <= 10 ms with 10 M payments stored).

The history: HISTORY_PAYMENTS payments of the demo merchant over 10 000 funded payers (1 M by
default, 20 000 in quick mode; `INSTAPAY_BENCH_HISTORY=10000000` for the issue's 10 M, which
takes a few minutes to build and a few GB of memory), sent through the real engine with
fsync="off" (durability costs time here, not the shape of the database) and projected by the
real projector into history.db, the lag bound lifted so the engine need not wait for it; the
engine is then closed, and the reads run on the database it left.
- Reader rows: `HistoryReader` called directly, one read at a time (READS of them): a page of
  100 newest first from a cursor drawn at random over the whole history (deep pages cost what
  the first does: the index seeks), and the oldest payment (`HistoryReader.payment`).
- HTTP row: the list through the real application on a loopback port (signed GETs of the
  newest page, one at a time, answered from the database after waiting for the projector as it
  always does), which adds the signature checks, aiohttp and the client's share of this
  machine. `GET /v1/payments/{id}` still answers from memory in this milestone, so it has no
  HTTP row here: the reader row is its database read.
Each figure is the p99 in milliseconds (lower is better), with the p50 in the details.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pytest_benchmark.fixture import BenchmarkFixture

from benches.conftest import pedantic, scaled
from benches.engine_workload import ACCOUNTS, DEMO, FUNDS, add_history, lone_merchant_capacity
from instapay import signing
from instapay.engine import Engine
from instapay.http import ServerSettings, create_app
from instapay.http.app import HEADER_LIMITS, RUNTIME
from instapay.protocol import PAYMENTS_PATH
from instapay.storage.history import history_path
from instapay.storage.history.projector import HistoryPolicy
from instapay.storage.history.reads import (
    Cursors,
    HistoryReader,
    PaymentFilters,
    connect_read_only,
)

HISTORY_ENV = "INSTAPAY_BENCH_HISTORY"
HISTORY_PAYMENTS = int(os.environ.get(HISTORY_ENV) or scaled(1_000_000, 20_000))
READS = scaled(2000, 300)
PAGE_LEN = 100
GROUP = f"history reads: p99, {HISTORY_PAYMENTS:,} payments stored"
# Long enough for the projector to catch up with 10 M payments at its slowest.
CATCH_UP_TIMEOUT_S = 3600.0

Read = Callable[[], Awaitable[object]]


def percentile_ms(latencies_s: list[float], fraction: float) -> float:
    ordered = sorted(latencies_s)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


async def latencies(read: Read) -> list[float]:
    """READS reads, one after the other, each timed alone."""
    timed = []
    for _ in range(READS):
        started_s = time.perf_counter()
        await read()
        timed.append(time.perf_counter() - started_s)
    return timed


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding HISTORY_PAYMENTS payments, all projected into history.db."""
    directory = tmp_path_factory.mktemp("reads-history")

    async def build() -> None:
        async with Engine.open(
            directory,
            config=DEMO.config(),
            fsync="off",
            idempotency_capacity=lone_merchant_capacity(HISTORY_PAYMENTS),
            snapshot_every_records=2 * (HISTORY_PAYMENTS + 3 * ACCOUNTS),
            history_policy=HistoryPolicy(lag_records_max=2 * HISTORY_PAYMENTS),
        ) as engine:
            await DEMO.set_up(engine, ACCOUNTS, FUNDS)
            await add_history(engine, "read", HISTORY_PAYMENTS)
            if not await engine.history_caught_up(CATCH_UP_TIMEOUT_S):
                raise RuntimeError("the projector did not catch up")

    asyncio.run(build())
    return directory


def lsns_of_payments(directory: Path) -> tuple[int, int]:
    """The oldest and the newest payment's LSNs."""
    connection = connect_read_only(history_path(directory))
    try:
        query = "SELECT min(lsn), max(lsn) FROM payments WHERE merchant_id = ?"
        [(oldest, newest)] = connection.fetch(query, [DEMO.merchant_id])
    finally:
        connection.close()
    return int(oldest), int(newest)


def record(benchmark: BenchmarkFixture, timed: list[float]) -> None:
    p99_ms = percentile_ms(timed, 0.99)
    benchmark.extra_info.update(
        milliseconds=p99_ms,
        unit="ms",
        p50_ms=percentile_ms(timed, 0.5),
        p99_ms=p99_ms,
        history_payments=HISTORY_PAYMENTS,
        baseline=False,
    )


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("read", ["list of 100", "oldest payment"])
def test_reader(benchmark: BenchmarkFixture, history: Path, read: str) -> None:
    oldest, newest = lsns_of_payments(history)
    reader = HistoryReader(history_path(history))
    pick = random.Random(14)

    def list_page() -> Awaitable[object]:
        cursor = Cursors(starting_after=pick.randint(oldest + PAGE_LEN, newest))
        return reader.payments(DEMO.merchant_id, PAGE_LEN, cursor, PaymentFilters())

    def oldest_payment() -> Awaitable[object]:
        return reader.payment(DEMO.merchant_id, oldest)

    reads = {"list of 100": list_page, "oldest payment": oldest_payment}
    try:
        timed = pedantic(benchmark, lambda: asyncio.run(latencies(reads[read])), rounds=1)
    finally:
        reader.close()
    record(benchmark, timed)


@pytest.mark.benchmark(group=GROUP)
def test_http_list(benchmark: BenchmarkFixture, history: Path) -> None:
    path = f"{PAYMENTS_PATH}?limit={PAGE_LEN}"
    timed = pedantic(benchmark, lambda: asyncio.run(http_latencies(history, path)), rounds=1)
    record(benchmark, timed)


async def http_latencies(directory: Path, path: str) -> list[float]:
    """READS signed GETs of `path`, one at a time, through the real application."""
    app = create_app(ServerSettings(directory, DEMO.config(), fsync="off"))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(**HEADER_LIMITS)
    await app[RUNTIME].ready()
    url = str(server.make_url(path))
    try:
        async with aiohttp.ClientSession() as session:

            async def get() -> None:
                header = DEMO.sign(path, b"", method="GET").header or ""
                async with session.get(url, headers={signing.SIGNATURE_HEADER: header}) as got:
                    if got.status != 200:
                        raise RuntimeError(f"GET {path}: {got.status} {await got.text()}")
                    await got.read()

            return await latencies(get)
    finally:
        await server.close()
