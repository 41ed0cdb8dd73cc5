"""The idempotency index against the same logic written with a Python dict, in the same run.

Throughput: batches of 1024 fresh keys (NEW, released again outside the timing so the index keeps
its size) and of 1024 replays, on an index already holding 100 k finished keys. Every round gets
freshly built key objects, as requests do, so the dict cannot reuse cached hashes.

Memory: bytes per finished key for the dict and the index at 1 M keys, and the index at 10 M keys
(the DESIGN.md target), each built in a fresh process (`benches/idempotency_workload.py`). Quick
mode compares the two at 200 k keys but keeps the 10 M row: it takes about 5 s.
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from itertools import count

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benches.conftest import pedantic, scaled
from benches.idempotency_workload import BATCH_LEN, IMPLEMENTATIONS, Index, fill, keys
from instapay._core import RESERVE_NEW, RESERVE_REPLAY, sha256_batch

PREFILLED_KEYS = 100_000
CAPACITY_MAX = 1 << 20
ROUNDS = scaled(400, 50)
COMPARED_KEYS = scaled(1_000_000, 200_000)
TARGET_KEYS = 10_000_000
FRESH_GROUP = f"reserve {BATCH_LEN} fresh keys"
REPLAY_GROUP = f"reserve {BATCH_LEN} replays"
MEMORY_GROUP = "memory per finished key"


def measure_batches(
    benchmark: BenchmarkFixture,
    index: Index,
    batches: Iterator[list[bytes]],
    fingerprints: list[bytes],
    name: str,
) -> list[tuple[int, int]]:
    """Times `reserve_batch` on the next batch each round; releases NEW slots outside the timing."""
    previous: list[tuple[int, int]] = []

    def setup() -> tuple[tuple[list[bytes], list[bytes], int], dict[str, object]]:
        index.release_batch([slot for status, slot in previous if status == RESERVE_NEW])
        return (next(batches), fingerprints, 0), {}

    def run(batch: list[bytes], fps: list[bytes], now_s: int) -> list[tuple[int, int]]:
        previous[:] = index.reserve_batch(batch, fps, now_s)
        return previous

    benchmark.extra_info.update(items=BATCH_LEN, unit="keys/s", baseline=name == "dict")
    pedantic(benchmark, run, setup=setup, rounds=ROUNDS, warmup_rounds=5)
    return previous


@pytest.fixture(params=list(IMPLEMENTATIONS), name="implementation")
def prefilled(request: pytest.FixtureRequest) -> tuple[str, Index]:
    name: str = request.param
    index = IMPLEMENTATIONS[name](CAPACITY_MAX)
    fill(index, "prefilled", PREFILLED_KEYS)
    return name, index


@pytest.mark.benchmark(group=FRESH_GROUP)
def test_reserve_fresh_keys(benchmark: BenchmarkFixture, implementation: tuple[str, Index]) -> None:
    name, index = implementation
    batches = (keys("fresh", n * BATCH_LEN, BATCH_LEN) for n in count())
    fingerprints = sha256_batch(keys("fingerprint", 0, BATCH_LEN))
    answers = measure_batches(benchmark, index, batches, fingerprints, name)
    assert {status for status, _ in answers} == {RESERVE_NEW}


@pytest.mark.benchmark(group=REPLAY_GROUP)
def test_reserve_replays(benchmark: BenchmarkFixture, implementation: tuple[str, Index]) -> None:
    name, index = implementation
    fill(index, "replayed", BATCH_LEN)
    batches = (keys("replayed", 0, BATCH_LEN) for _ in count())
    # `fill` fingerprints each key by its own hash; replays must send the same fingerprints.
    fingerprints = sha256_batch(keys("replayed", 0, BATCH_LEN))
    answers = measure_batches(benchmark, index, batches, fingerprints, name)
    assert {status for status, _ in answers} == {RESERVE_REPLAY}


def memory_case(implementation: str, key_count: int) -> object:
    return pytest.param(implementation, key_count, id=f"{implementation} {key_count / 1e6:g}M keys")


@pytest.mark.benchmark(group=MEMORY_GROUP)
@pytest.mark.parametrize(
    ("implementation", "key_count"),
    [
        memory_case("dict", COMPARED_KEYS),
        memory_case("IdempotencyIndex", COMPARED_KEYS),
        memory_case("IdempotencyIndex", TARGET_KEYS),
    ],
)
def test_memory(benchmark: BenchmarkFixture, implementation: str, key_count: int) -> None:
    command = [sys.executable, "-m", "benches.idempotency_workload", implementation, str(key_count)]
    # The command is this interpreter and literal arguments, nothing from outside.
    probe = lambda: subprocess.run(command, check=True, capture_output=True, text=True)  # noqa: E731, S603
    result = pedantic(benchmark, probe, rounds=1)
    benchmark.extra_info.update(json.loads(result.stdout))
    benchmark.extra_info.update(items=key_count, unit="B/key", baseline=implementation == "dict")
