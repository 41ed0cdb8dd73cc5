"""The history projector (history.db): sustained durable throughput with it and without it in
the same run, and its own rate catching up a log.

Sustained: SUSTAINED_ROUNDS of the engine benchmark's rounds (BATCHES_IN_FLIGHT batches of
BATCH_LEN payments over 10 000 funded accounts, fsync="always") one after the other, timed until
their payments are answered and, with the projector, also committed in history.db
(`Engine.history_caught_up`): a projector that only queued would not be sustained, and the
projection of the last batch, which follows the engine, weighs less over several rounds.
Without: the same engine with `history=False` (the baseline).
Catch-up: a log of CATCH_UP_PAYMENTS payments (after the 10 000 payers' set-up records) written
without the projector, then a fresh history.db projected from it (open, project, close):
records/s, and the projector's rows/s in the details.
"""

import asyncio
from collections.abc import Iterator
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
    add_history,
    open_engine,
)
from benches.test_bench_engine import RunningEngine, round_batches
from instapay.engine.records import as_current
from instapay.model import PaymentResult
from instapay.signing import SignedRequest
from instapay.storage.history import history_path
from instapay.storage.history.projector import HistoryProjector

ROUNDS = scaled(5, 2)
SUSTAINED_ROUNDS = scaled(5, 3)
CATCH_UP_PAYMENTS = scaled(500_000, 20_000)
CATCH_UP_ROUNDS = scaled(3, 1)
CAUGHT_UP_TIMEOUT_S = 600.0
SUSTAINED_GROUP = "history: sustained durable payments, with the projector and without"
CATCH_UP_GROUP = "history: the projector catching up a log"


@pytest.fixture(params=[True, False], ids=["with projector", "without"])
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[bool, RunningEngine]]:
    engine = RunningEngine(tmp_path, "always", history=request.param)
    yield request.param, engine
    engine.close()


@pytest.mark.benchmark(group=SUSTAINED_GROUP)
def test_sustained_payments(
    benchmark: BenchmarkFixture, running: tuple[bool, RunningEngine]
) -> None:
    history, engine = running
    rounds = count()

    def setup() -> tuple[tuple[object, ...], dict[str, object]]:
        return ([round_batches("h", next(rounds)) for _ in range(SUSTAINED_ROUNDS)],), {}

    def projected(engine_rounds: list[list[list[SignedRequest]]]) -> list[object]:
        answers: list[object] = []
        for batches in engine_rounds:
            answers += engine.submit(batches)
        if history:
            caught_up = engine.engine.history_caught_up(CAUGHT_UP_TIMEOUT_S)
            assert engine.loop.run_until_complete(caught_up)
        return answers

    answers = pedantic(benchmark, projected, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    assert all(isinstance(a, PaymentResult) and not a.replayed for a in answers)
    benchmark.extra_info.update(
        items=BATCH_LEN * BATCHES_IN_FLIGHT * SUSTAINED_ROUNDS,
        unit="payments/s",
        baseline=not history,
        fsync="always",
    )
    stats = engine.engine.stats.history
    if stats is not None:
        benchmark.extra_info["history_rows_per_s"] = stats.rows_per_s


def written_log(directory: Path) -> int:
    """A log of the funded payers and CATCH_UP_PAYMENTS payments, without a history; its last
    LSN. No snapshot at close: it would drop the segments the projector is to catch up from."""

    async def write() -> int:
        opened = open_engine(directory, CATCH_UP_PAYMENTS, fsync="off", snapshot_on_close=False)
        async with opened as engine:
            await DEMO.set_up(engine, ACCOUNTS, FUNDS)
            await add_history(engine, "c", CATCH_UP_PAYMENTS)
            return engine.lsn_next - 1

    return asyncio.run(write())


@pytest.mark.benchmark(group=CATCH_UP_GROUP)
def test_projector_catch_up(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    log_end = written_log(tmp_path)
    projected: list[HistoryProjector] = []

    def setup() -> tuple[tuple[object, ...], dict[str, object]]:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{history_path(tmp_path)}{suffix}").unlink(missing_ok=True)
        return (), {}

    def catch_up() -> None:
        projector = HistoryProjector(tmp_path, log_end, as_current)
        projector.start()
        projector.close()  # drains: projects the log to its end first
        assert projector.lsn == log_end
        projected.append(projector)

    pedantic(benchmark, catch_up, setup=setup, rounds=CATCH_UP_ROUNDS)
    stats = projected[-1].stats
    benchmark.extra_info.update(
        items=log_end,
        unit="records/s",
        baseline=False,
        history_payments=CATCH_UP_PAYMENTS,
        history_rows_per_s=stats.rows_per_s,
        history_rows=stats.rows,
    )
