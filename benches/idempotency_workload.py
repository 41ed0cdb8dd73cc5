"""The idempotency workload shared by the benchmarks: request keys, the engine's batch pattern,
the dict baseline, and a memory probe that builds an index in a fresh process.

Memory probe: `python -m benches.idempotency_workload dict|IdempotencyIndex KEY_COUNT` prints
JSON with the bytes the structure holds (tracemalloc for the dict, `memory_bytes()` for the
index) and how much the process RSS grew; a fresh process keeps earlier allocations out of it.
"""

import json
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from itertools import count
from pathlib import Path
from typing import Protocol

from instapay._core import (
    RESERVE_FULL,
    RESERVE_IN_FLIGHT,
    RESERVE_MISMATCH,
    RESERVE_NEW,
    RESERVE_REPLAY,
    IdempotencyIndex,
    sha256_batch,
)

BATCH_LEN = 1024


class Index(Protocol):
    def reserve_batch(
        self, keys: Sequence[bytes], fingerprints: Sequence[bytes], now_s: int
    ) -> list[tuple[int, int]]: ...
    def complete_batch(self, slots: Sequence[int], refs: Sequence[int]) -> None: ...
    def release_batch(self, slots: Sequence[int]) -> None: ...


class DictIndex:
    """The index's answers with a dict keyed by the raw key: the baseline to beat."""

    def __init__(self, capacity_max: int) -> None:
        self.capacity_max = capacity_max
        # key -> [fingerprint, created_s, slot or reference, finished]
        self.entries: dict[bytes, list[object]] = {}
        self.keys_by_slot: dict[int, bytes] = {}
        self.slots = count()

    def reserve_batch(
        self, keys: Sequence[bytes], fingerprints: Sequence[bytes], now_s: int
    ) -> list[tuple[int, int]]:
        answers: list[tuple[int, int]] = []
        for key, fingerprint in zip(keys, fingerprints, strict=True):
            entry = self.entries.get(key)
            if entry is None:
                if len(self.entries) >= self.capacity_max:
                    answers.append((RESERVE_FULL, 0))
                    continue
                slot = next(self.slots)
                self.entries[key] = [fingerprint, now_s, slot, False]
                self.keys_by_slot[slot] = key
                answers.append((RESERVE_NEW, slot))
            elif entry[0] != fingerprint:
                answers.append((RESERVE_MISMATCH, 0))
            else:
                status = RESERVE_REPLAY if entry[3] else RESERVE_IN_FLIGHT
                answers.append((status, entry[2]))  # type: ignore[arg-type]
        return answers

    def complete_batch(self, slots: Sequence[int], refs: Sequence[int]) -> None:
        for slot, ref in zip(slots, refs, strict=True):
            entry = self.entries[self.keys_by_slot.pop(slot)]
            entry[2], entry[3] = ref, True

    def release_batch(self, slots: Sequence[int]) -> None:
        for slot in slots:
            del self.entries[self.keys_by_slot.pop(slot)]


IMPLEMENTATIONS: dict[str, Callable[[int], Index]] = {
    "dict": DictIndex,
    "IdempotencyIndex": IdempotencyIndex,
}


def keys(prefix: str, first: int, length: int) -> list[bytes]:
    """Fresh key objects on every call, like keys parsed from requests."""
    return [f"merchant-7/{prefix}-{n}".encode() for n in range(first, first + length)]


def fill(index: Index, prefix: str, key_count: int) -> None:
    """Reserves and completes `key_count` keys in engine-sized batches."""
    for first in range(0, key_count, BATCH_LEN):
        batch = keys(prefix, first, min(BATCH_LEN, key_count - first))
        answers = index.reserve_batch(batch, sha256_batch(batch), 0)
        slots = [slot for _, slot in answers]
        index.complete_batch(slots, slots)


def rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def probe_memory(implementation: str, key_count: int) -> dict[str, float]:
    rss_before = rss_bytes()
    if implementation == "dict":
        tracemalloc.start()
    started_s = time.perf_counter()
    index = IMPLEMENTATIONS[implementation](key_count)
    fill(index, "memory", key_count)
    elapsed_s = time.perf_counter() - started_s
    if isinstance(index, IdempotencyIndex):
        assert len(index) == key_count
        held = index.memory_bytes()
    else:
        held, _ = tracemalloc.get_traced_memory()
    return {
        "bytes_per_key": held / key_count,
        "rss_bytes_per_key": (rss_bytes() - rss_before) / key_count,
        "build_s": elapsed_s,
    }


if __name__ == "__main__":
    print(json.dumps(probe_memory(sys.argv[1], int(sys.argv[2]))))
