"""Fixtures of the micro benchmarks (a loaded key ring, same-run baselines) and the quick mode.

Quick mode (`INSTAPAY_BENCH_QUICK=1`, what `make bench-quick` and CI set) runs every suite with
smaller sizes and shorter runs, so the whole set takes a couple of minutes: enough to show that
each benchmark still runs and roughly where it stands, but its figures are not comparable to a
full run's. Each suite picks its sizes with `scaled(full, quick)`.
"""

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from instapay import _core

T = TypeVar("T")
QUICK_ENV = "INSTAPAY_BENCH_QUICK"
QUICK = os.environ.get(QUICK_ENV) == "1"
# pytest-benchmark's default is 1 s of rounds per calibrated benchmark (the crypto suite).
QUICK_MAX_TIME_S = "0.1"


def scaled(full: int, quick: int) -> int:
    """A size or count: `full` normally, `quick` in quick mode."""
    return quick if QUICK else full


def pytest_configure(config: pytest.Config) -> None:
    # Runs before pytest-benchmark's own pytest_configure (trylast), which reads the option.
    if QUICK:
        config.option.benchmark_max_time = QUICK_MAX_TIME_S


def rustc_version() -> str:
    rustc = shutil.which("rustc")
    if rustc is None:
        return "rustc not found"
    version = subprocess.run([rustc, "--version"], capture_output=True, text=True, check=True)  # noqa: S603 (the toolchain's own rustc)
    return version.stdout.strip()


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    """Adds what `benches/report.py` puts in the header besides pytest-benchmark's own facts."""
    machine_info["rustc"] = rustc_version()


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list[Any], output_json: dict[str, Any]
) -> None:
    """Marks a quick run, so it is never reported as a full one, and records the environment that
    reproduces it (for the commands in BENCHMARKS.md)."""
    output_json["quick"] = QUICK
    output_json["environment"] = {QUICK_ENV: "1"} if QUICK else {}


@contextmanager
def threads(count: int) -> Iterator[None]:
    """Caps the native core's threads for one benchmark (1 = the "one core" figures)."""
    available = _core.parallelism()
    _core.set_parallelism(min(count, available))
    try:
        yield
    finally:
        _core.set_parallelism(available)


def random_messages(count: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


def pedantic(
    benchmark: BenchmarkFixture,
    target: Callable[..., T],
    *,
    setup: Callable[[], tuple[tuple[object, ...], dict[str, object]]] | None = None,
    rounds: int,
    warmup_rounds: int = 0,
) -> T:
    """Typed `benchmark.pedantic`: one call of `target` per round, `setup` outside the timing."""
    result: T = benchmark.pedantic(  # type: ignore[no-untyped-call]
        target, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds
    )
    return result
