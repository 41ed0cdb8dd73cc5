"""Fixtures of the micro benchmarks: a loaded key ring and same-run baselines."""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pytest_benchmark.fixture import BenchmarkFixture

from instapay import _core

T = TypeVar("T")


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
