"""The engine in-process: durable payments per second against a naive engine, and recovery.

Throughput: `submit_many` with batches of 1000 signed payments over 10 000 funded accounts, four
batches in flight (a server has many clients), fsync="always" (the default) and "off" (unsafe, for
comparison); the naive baseline (`benches/baselines/naive_engine.py`) fdatasyncs each payment.
Recovery: reopening a data directory whose log holds 1 M payment records (50 k in quick mode) and
no snapshot.
Snapshot: writing one for 10 000 funded accounts, and its size per account.
"""

import asyncio
import contextlib
import gc
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benches.baselines.naive_engine import NaiveEngine
from benches.conftest import pedantic, scaled
from instapay import _core
from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.http.server import freeze_survivors_of_full_collections
from instapay.model import EngineConfig, PaymentResult
from instapay.signing import SignedRequest

ACCOUNTS = 10_000
BATCH_LEN = 1000
BATCHES_IN_FLIGHT = 4
ROUNDS = scaled(12, 3)
NAIVE_PAYMENTS = scaled(300, 100)
THROUGHPUT_GROUP = "engine: durable payments"
RECOVERY_GROUP = "engine: recovery"
SNAPSHOT_GROUP = "engine: snapshot of 10 000 funded accounts"
RECOVERY_RECORDS = scaled(1_000_000, 50_000)
DEMO = DemoMerchant()


def lone_merchant_capacity(keys: int) -> int:
    """An idempotency capacity in which one merchant alone can hold `keys` keys: it borrows all
    but one share of the index (`idempotency_share_percent`, at least the floor of a share)."""
    share_percent = EngineConfig().idempotency_share_percent
    return -(-keys * 100 // (100 - share_percent)) + _core.IDEMPOTENCY_TENANT_KEYS_MIN


# Every engine here has room for the recovery log's payments, the most any of them writes.
IDEMPOTENCY_CAPACITY = lone_merchant_capacity(RECOVERY_RECORDS)


def payments(prefix: str, length: int, first_payer: int = 0) -> list[SignedRequest]:
    return [
        DEMO.payment(f"{prefix}-{n}", DEMO.payer((first_payer + n) % ACCOUNTS), 100)
        for n in range(length)
    ]


class RunningEngine:
    """An engine open in its own event loop across benchmark rounds."""

    def __init__(self, directory: Path, fsync: str, config: EngineConfig | None = None) -> None:
        freeze_survivors_of_full_collections()  # as `instapay serve` does
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        config = config or DEMO.config()
        opened = Engine.open(
            directory,
            config=config,
            fsync=fsync,  # type: ignore[arg-type]
            idempotency_capacity=IDEMPOTENCY_CAPACITY,
        )
        self.engine = self.loop.run_until_complete(self.stack.enter_async_context(opened))
        self.loop.run_until_complete(DEMO.set_up(self.engine, ACCOUNTS, 10**12))

    def submit(self, batches: list[list[SignedRequest]]) -> list[object]:
        async def all_batches() -> list[object]:
            answers = await asyncio.gather(*(self.engine.submit_many(b) for b in batches))
            return [answer for batch in answers for answer in batch]

        return self.loop.run_until_complete(all_batches())

    def close(self) -> None:
        self.loop.run_until_complete(self.stack.aclose())
        self.loop.close()
        # What this engine left frozen goes now, so the next benchmark starts on a clean heap.
        gc.unfreeze()
        gc.collect()


def round_batches(prefix: str, number: int) -> list[list[SignedRequest]]:
    """One round: BATCHES_IN_FLIGHT batches of BATCH_LEN new payments."""
    return [
        payments(f"{prefix}{number}-b{b}", BATCH_LEN, b * BATCH_LEN)
        for b in range(BATCHES_IN_FLIGHT)
    ]


def submit_rounds(
    benchmark: BenchmarkFixture,
    engine: RunningEngine,
    prefix: str,
    between: Callable[[int], None] | None = None,
) -> list[object]:
    """Times ROUNDS rounds on `engine` (`between(n)` runs untimed before round n); the answers
    of the last round."""
    rounds = count()

    def setup() -> tuple[tuple[object, ...], dict[str, object]]:
        number = next(rounds)
        if between is not None:
            between(number)
        return (round_batches(prefix, number),), {}

    return pedantic(benchmark, engine.submit, setup=setup, rounds=ROUNDS, warmup_rounds=1)


@pytest.fixture(params=["always", "off"])
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, RunningEngine]]:
    engine = RunningEngine(tmp_path, request.param)
    yield request.param, engine
    engine.close()


@pytest.mark.benchmark(group=THROUGHPUT_GROUP)
def test_engine_submit_many(
    benchmark: BenchmarkFixture, running: tuple[str, RunningEngine]
) -> None:
    fsync, engine = running
    answers = submit_rounds(benchmark, engine, "r")
    assert all(isinstance(a, PaymentResult) and not a.replayed for a in answers)
    benchmark.extra_info.update(
        items=BATCH_LEN * BATCHES_IN_FLIGHT, unit="payments/s", baseline=False, fsync=fsync
    )


@pytest.mark.benchmark(group=THROUGHPUT_GROUP)
def test_naive_engine(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    balances = {DEMO.payer(n): 10**12 for n in range(ACCOUNTS)}
    naive = NaiveEngine(tmp_path / "naive.log", {DEMO.kid: DEMO.secret}, balances)
    rounds = count()

    def setup() -> tuple[tuple[object, ...], dict[str, object]]:
        return (payments(f"naive-{next(rounds)}", NAIVE_PAYMENTS),), {}

    def run(requests: list[SignedRequest]) -> list[dict[str, object]]:
        return [naive.submit(request) for request in requests]

    answers = pedantic(benchmark, run, setup=setup, rounds=5)
    naive.close()
    assert all(answer["status"] == "succeeded" for answer in answers)
    benchmark.extra_info.update(items=NAIVE_PAYMENTS, unit="payments/s", baseline=True)


def write_log_without_snapshot(directory: Path, records: int) -> None:
    """A data directory as a crash leaves it: funded accounts and `records` payments in the log,
    no snapshot, so reopening must replay every record."""

    async def build() -> None:
        opened = Engine.open(
            directory,
            config=DEMO.config(),
            fsync="off",
            snapshot_on_close=False,
            idempotency_capacity=IDEMPOTENCY_CAPACITY,
        )
        async with opened as engine:
            await DEMO.set_up(engine, ACCOUNTS, 10**12)
            for first in range(0, records, 10 * BATCH_LEN):
                batches = [
                    payments(f"log-{first}-{b}", BATCH_LEN, b * BATCH_LEN) for b in range(10)
                ]
                await asyncio.gather(*(engine.submit_many(batch) for batch in batches))

    asyncio.run(build())


@pytest.mark.benchmark(group=RECOVERY_GROUP)
def test_recovery(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    freeze_survivors_of_full_collections()  # as `instapay serve` does before it recovers
    write_log_without_snapshot(tmp_path, RECOVERY_RECORDS)

    def reopen() -> int:
        async def opened() -> int:
            opened = Engine.open(
                tmp_path,
                config=DEMO.config(),
                snapshot_on_close=False,
                idempotency_capacity=IDEMPOTENCY_CAPACITY,
            )
            async with opened as engine:
                return engine.lsn_next - 1

        return asyncio.run(opened())

    last_lsn = pedantic(benchmark, reopen, rounds=1)
    assert last_lsn >= RECOVERY_RECORDS
    benchmark.extra_info.update(items=last_lsn, unit="records/s", baseline=False)


@pytest.mark.benchmark(group=SNAPSHOT_GROUP)
def test_snapshot_of_funded_accounts(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    engine = RunningEngine(tmp_path, "always")
    path = pedantic(benchmark, engine.engine.snapshot, rounds=3)
    size = path.stat().st_size
    engine.close()
    benchmark.extra_info.update(
        items=ACCOUNTS,
        unit="accounts/s",
        baseline=False,
        snapshot_bytes=size,
        bytes_per_account=size / ACCOUNTS,
    )
