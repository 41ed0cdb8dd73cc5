"""What a load run measured: latency histograms (HdrHistogram, in microseconds, mergeable across
worker processes), per-second timelines, and the counts of what came back."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

# 1 µs to an hour at 3 significant digits: about 30 KiB per histogram.
LATENCY_US_MIN = 1
LATENCY_US_MAX = 3_600_000_000
SIGNIFICANT_FIGURES = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LATENCY_US_MIN, LATENCY_US_MAX, SIGNIFICANT_FIGURES)


def record_s(histogram: HdrHistogram, seconds: float) -> None:
    histogram.record_value(min(max(round(seconds * 1e6), LATENCY_US_MIN), LATENCY_US_MAX))


def merged(encoded: list[bytes]) -> HdrHistogram:
    histogram = new_histogram()
    for one in encoded:
        histogram.decode_and_add(one)
    return histogram


def percentiles_ms(histogram: HdrHistogram) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max, in milliseconds (0 for an empty histogram)."""
    if histogram.get_total_count() == 0:
        return {**{f"p{p:g}": 0.0 for p in PERCENTILES}, "max": 0.0}
    values = {f"p{p:g}": histogram.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
    return {**values, "max": histogram.get_max_value() / 1000}


@dataclass
class Counts:
    """What came back, summed over requests (and payments, for the batch endpoint)."""

    sent: int = 0
    # Requests that got an HTTP answer, by status; `failures` are those that got none.
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    # Payments by outcome: succeeded / failed (declined), and error codes of refused ones.
    payments: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    replays_matched: int = 0
    replays_mismatched: int = 0
    # New payments acknowledged for requests sent after the warm-up.
    acknowledged_measured: int = 0

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def add(self, other: Counts) -> None:
        self.sent += other.sent
        self.statuses.update(other.statuses)
        self.failures.update(other.failures)
        self.payments.update(other.payments)
        self.error_codes.update(other.error_codes)
        self.replays_matched += other.replays_matched
        self.replays_mismatched += other.replays_mismatched
        self.acknowledged_measured += other.acknowledged_measured

    def to_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "answered": self.answered,
            "failed": self.failed,
            "statuses": {str(status): n for status, n in sorted(self.statuses.items())},
            "failures": dict(self.failures),
            "payments": dict(self.payments),
            "error_codes": dict(self.error_codes),
            "replays": {"matched": self.replays_matched, "mismatched": self.replays_mismatched},
        }


@dataclass
class Second:
    """One second of the run: the latencies of what completed in it, and the counts."""

    histogram: HdrHistogram = field(default_factory=new_histogram)
    requests_ok: int = 0
    requests_failed: int = 0
    payments_ok: int = 0

    def add_encoded(self, encoded: bytes, ok: int, failed: int, payments_ok: int) -> None:
        self.histogram.decode_and_add(encoded)
        self.requests_ok += ok
        self.requests_failed += failed
        self.payments_ok += payments_ok
