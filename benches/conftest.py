"""Fixtures of the micro benchmarks: a loaded key ring and same-run baselines."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

from instapay import _core


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
