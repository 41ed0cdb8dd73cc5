"""The probe of benches/test_bench_hot_state.py, in a fresh process: a history of LARGE payments
built in one engine with its history database, measured at SMALL (= LARGE / 10) and at LARGE
payments: the process RSS, a snapshot's size and write time; then the restart (open to ready)
with LARGE payments of history.

`python -m benches.hot_state_workload LARGE DIRECTORY` prints JSON. fsync="off" (durability
costs time, not memory); no automatic snapshot; idempotency keys live IDEMPOTENCY_TTL_S (the
index is bounded by its capacity and its keys' TTL, not by the history: it is not what this
measures, and its keys have expired when the snapshot is taken). Before each measure the
projector's commits are made durable and an eviction pass runs, as the engine's once-a-second
pass would. SMALL is at least a signing chunk of payments (`add_history` signs 50 000 at a
time), so both measures follow the same bursts.
"""

import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from benches.engine_workload import ACCOUNTS, DEMO, FUNDS, add_history, lone_merchant_capacity
from benches.history_workload import status_bytes
from instapay.engine import Engine
from instapay.http.server import freeze_survivors_of_full_collections
from instapay.storage.history.projector import HOT_RESULTS_MAX_DEFAULT, HistoryPolicy

IDEMPOTENCY_TTL_S = 5
IDEMPOTENCY_KEYS_MAX = 1_000_000
HISTORY_TIMEOUT_S = 600.0
LAG_RECORDS_MAX = 10**12


def hot_window(small: int) -> int:
    """The default window, or less when the small history would not fill it (quick mode)."""
    return min(HOT_RESULTS_MAX_DEFAULT, small // 4)


def open_engine(directory: Path, window: int) -> Any:
    return Engine.open(
        directory,
        config=DEMO.config(),
        fsync="off",
        idempotency_capacity=lone_merchant_capacity(IDEMPOTENCY_KEYS_MAX),
        idempotency_ttl_s=IDEMPOTENCY_TTL_S,
        snapshot_every_records=10**12,
        # The build outruns the projector on two cores: its backpressure would refuse payments
        # (what a client retries); here the history waits instead, and `settle` lets it catch up
        # before each measure.
        history_policy=HistoryPolicy(hot_results_max=window, lag_records_max=LAG_RECORDS_MAX),
    )


async def settle(engine: Engine) -> None:
    """The history database holds every record durably; memory forgot what it may."""
    history = engine.history
    assert history is not None
    assert await engine.history_caught_up(HISTORY_TIMEOUT_S)
    async with asyncio.timeout(HISTORY_TIMEOUT_S):
        while history.durable_lsn < engine.lsn_next - 1:
            await asyncio.sleep(0.05)
    engine.evict()
    # The keys of the history just sent expire, so the snapshot holds the hot state alone.
    await asyncio.sleep(IDEMPOTENCY_TTL_S + 1)
    engine.state.index.expire(int(time.time()))
    gc.collect()


def measure(engine: Engine, label: str, figures: dict[str, Any]) -> None:
    figures[f"rss_{label}_bytes"] = status_bytes("VmRSS")
    figures[f"results_held_{label}"] = len(engine.results)
    started_s = time.perf_counter()
    path = engine.snapshot()
    figures[f"snapshot_{label}_s"] = time.perf_counter() - started_s
    figures[f"snapshot_{label}_bytes"] = path.stat().st_size


async def build(directory: Path, large: int) -> dict[str, Any]:
    small = large // 10
    window = hot_window(small)
    figures: dict[str, Any] = {"small": small, "large": large, "hot_results_max": window}
    async with open_engine(directory, window) as engine:
        await DEMO.set_up(engine, ACCOUNTS, FUNDS)
        await add_history(engine, "small-", small)
        await settle(engine)
        measure(engine, "small", figures)
        await add_history(engine, "large-", large - small)
        await settle(engine)
        measure(engine, "large", figures)
    started_s = time.perf_counter()
    async with open_engine(directory, window) as engine:
        figures["restart_s"] = time.perf_counter() - started_s
        figures["restart_lsn"] = engine.lsn_next - 1
    growth = figures["rss_large_bytes"] / figures["rss_small_bytes"] - 1
    figures["rss_growth_percent"] = 100 * growth
    return figures


if __name__ == "__main__":
    freeze_survivors_of_full_collections()  # as `instapay serve` does
    print(json.dumps(asyncio.run(build(Path(sys.argv[2]), int(sys.argv[1])))))
