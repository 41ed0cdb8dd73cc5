"""The engine in-process: durable payments per second against a naive engine, and a snapshot.

Throughput: `submit_many` with batches of 1000 signed payments over 10 000 funded accounts (each
round's payers follow the last round's, so every account pays), four batches in flight (a server
has many clients), fsync="always" (the default) and "off" (unsafe, for comparison); the naive
baseline (`benches/baselines/naive_engine.py`) fdatasyncs each payment.
Snapshot: writing one for 10 000 funded accounts, and its size per account.
Recovery, reopening from a snapshot, the snapshot pause and memory per payment of history:
benches/test_bench_history.py.
"""

import asyncio
import contextlib
import gc
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benches.conftest import pedantic, scaled
from benches.engine_workload import (
    ACCOUNTS,
    BATCH_LEN,
    BATCHES_IN_FLIGHT,
    DEMO,
    FUNDS,
    HISTORY_PAYMENTS,
    funded_naive_engine,
    lone_merchant_capacity,
)
from instapay.engine import Engine
from instapay.http.server import freeze_survivors_of_full_collections
from instapay.model import EngineConfig, PaymentResult
from instapay.signing import SignedRequest

ROUNDS = scaled(12, 3)
NAIVE_PAYMENTS = scaled(300, 100)
THROUGHPUT_GROUP = "engine: durable payments"
SNAPSHOT_GROUP = "engine: snapshot of 10 000 funded accounts"
# An index with room for a history of HISTORY_PAYMENTS, as the history benchmarks' engines have.
IDEMPOTENCY_CAPACITY = lone_merchant_capacity(HISTORY_PAYMENTS)


def payments(prefix: str, length: int, first_payer: int = 0) -> list[SignedRequest]:
    return [
        DEMO.payment(f"{prefix}-{n}", DEMO.payer((first_payer + n) % ACCOUNTS), 100)
        for n in range(length)
    ]


class RunningEngine:
    """An engine open in its own event loop across benchmark rounds."""

    def __init__(
        self,
        directory: Path,
        fsync: str,
        config: EngineConfig | None = None,
        *,
        history: bool = True,
    ) -> None:
        freeze_survivors_of_full_collections()  # as `instapay serve` does
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        config = config or DEMO.config()
        opened = Engine.open(
            directory,
            config=config,
            fsync=fsync,  # type: ignore[arg-type]
            idempotency_capacity=IDEMPOTENCY_CAPACITY,
            history=history,
        )
        self.engine = self.loop.run_until_complete(self.stack.enter_async_context(opened))
        self.loop.run_until_complete(DEMO.set_up(self.engine, ACCOUNTS, FUNDS))

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
    """One round: BATCHES_IN_FLIGHT batches of BATCH_LEN new payments, their payers following
    the previous round's."""
    first = number * BATCHES_IN_FLIGHT
    return [
        payments(f"{prefix}{number}-b{b}", BATCH_LEN, (first + b) * BATCH_LEN)
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
    naive = funded_naive_engine(tmp_path / "naive.log")
    rounds = count()

    def setup() -> tuple[tuple[object, ...], dict[str, object]]:
        return (payments(f"naive-{next(rounds)}", NAIVE_PAYMENTS),), {}

    def run(requests: list[SignedRequest]) -> list[dict[str, object]]:
        return [naive.submit(request) for request in requests]

    answers = pedantic(benchmark, run, setup=setup, rounds=5)
    naive.close()
    assert all(answer["status"] == "succeeded" for answer in answers)
    benchmark.extra_info.update(items=NAIVE_PAYMENTS, unit="payments/s", baseline=True)


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
