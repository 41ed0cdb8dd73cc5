"""The bounded hot state: what memory, snapshots and the restart cost as history grows.

One probe in a fresh process (`benches/hot_state_workload.py`) builds a history of
HISTORY_LARGE payments (2 M; 500 k in quick mode; INSTAPAY_BENCH_HISTORY=10000000 for the
issue's 10 M) in one engine with its history database, and measures at a tenth of it and at
all of it: the RSS (flat: the results past the window are in history.db), a snapshot's size and
write time (the snapshot holds the hot state only), and the restart with the whole history.
Each row is one figure of that probe; the sizes are in the details.
"""

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benches.conftest import pedantic, scaled

HISTORY_ENV = "INSTAPAY_BENCH_HISTORY"
HISTORY_LARGE = int(os.environ.get(HISTORY_ENV, "0")) or scaled(2_000_000, 500_000)
HISTORY = f"{HISTORY_LARGE // 10:,} and {HISTORY_LARGE:,} payments"
MEMORY_GROUP = f"hot state: RSS from {HISTORY} of history"
SNAPSHOT_GROUP = f"hot state: snapshot at {HISTORY} of history"
RESTART_GROUP = f"hot state: restart with {HISTORY_LARGE:,} payments of history"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("hot-state")
    module = "benches.hot_state_workload"
    command = [sys.executable, "-m", module, str(HISTORY_LARGE), str(directory)]
    # The command is this interpreter and literal arguments, nothing from outside.
    result = subprocess.run(command, check=True, capture_output=True, text=True)  # noqa: S603
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def row(benchmark: BenchmarkFixture, probe: dict[str, Any], **figures: Any) -> None:
    """A row of one of the probe's figures (`figures`: the figure, its unit, its details), with
    the sizes measured."""
    pedantic(benchmark, lambda: None, rounds=1)
    keys = ("small", "large", "hot_results_max", "results_held_small", "results_held_large")
    benchmark.extra_info.update({key: probe[key] for key in keys}, **figures)


@pytest.mark.benchmark(group=MEMORY_GROUP)
def test_rss_growth(benchmark: BenchmarkFixture, probe: dict[str, Any]) -> None:
    row(
        benchmark,
        probe,
        percent=probe["rss_growth_percent"],
        unit="%",
        baseline=False,
        rss_small_bytes=probe["rss_small_bytes"],
        rss_large_bytes=probe["rss_large_bytes"],
    )


@pytest.mark.benchmark(group=SNAPSHOT_GROUP)
@pytest.mark.parametrize("size", ["small", "large"])
def test_snapshot(benchmark: BenchmarkFixture, probe: dict[str, Any], size: str) -> None:
    row(
        benchmark,
        probe,
        seconds=probe[f"snapshot_{size}_s"],
        unit="s",
        baseline=size == "small",
        snapshot_bytes=probe[f"snapshot_{size}_bytes"],
        history_payments=probe[size],
    )


@pytest.mark.benchmark(group=RESTART_GROUP)
def test_restart(benchmark: BenchmarkFixture, probe: dict[str, Any]) -> None:
    row(
        benchmark,
        probe,
        seconds=probe["restart_s"],
        unit="s",
        baseline=False,
        history_payments=probe["large"],
    )
