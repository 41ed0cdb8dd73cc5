"""The engine's running totals for monitoring; `instapay.http.metrics` exports them."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from instapay.storage.history.projector import ProjectorStats


class BucketCounts:
    """Counts per bucket (value <= bound; the last bucket is +Inf) and the sum: what a Prometheus
    histogram exports, without the engine depending on a metrics library."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


BATCH_SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096)

# fdatasync takes ~0.2 ms on a good SSD; a slow disk shows up in the upper buckets.
LOG_WRITE_BUCKETS_S = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0)


@dataclass(slots=True)
class EngineStats:
    """Running totals for monitoring; `instapay.http` exports them as Prometheus metrics."""

    batches: int = 0
    requests: int = 0
    records: int = 0
    log_writes: int = 0
    log_bytes: int = 0
    # Time spent in write + fdatasync, in the log thread.
    log_write_seconds: float = 0.0
    log_write_seconds_max: float = 0.0
    batch_sizes: BucketCounts = field(default_factory=lambda: BucketCounts(BATCH_SIZE_BUCKETS))
    log_write_latency: BucketCounts = field(
        default_factory=lambda: BucketCounts(LOG_WRITE_BUCKETS_S)
    )
    # The history projector's (None without a history).
    history: ProjectorStats | None = None
