"""Prometheus metrics: requests by route and status, request latency, and the engine's batches,
log writes (bytes and fsync time) and queue depth, read from `Engine.stats` at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from instapay.engine import BucketCounts, Engine
from instapay.notify import Dispatcher

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Request latency buckets, in seconds: durable payments take one fsync (~0.2 ms here) and more.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _buckets(histogram: BucketCounts) -> list[tuple[str, float]]:
    """Prometheus's buckets: each bound with the count of values at or under it."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip([*map(str, histogram.bounds), "+Inf"], histogram.counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return buckets


def _histogram(name: str, help_text: str, histogram: BucketCounts) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, help_text, buckets=_buckets(histogram), sum_value=histogram.total
    )


def _counters(counters: Mapping[str, tuple[str, float]]) -> Iterator[Metric]:
    """A counter per name: (help text, value)."""
    for name, (help_text, value) in counters.items():
        yield CounterMetricFamily(name, help_text, value=value)


class _EngineCollector(Collector):
    def __init__(
        self, engine: Callable[[], Engine | None], dispatcher: Callable[[], Dispatcher | None]
    ) -> None:
        self.engine = engine
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[Metric]:
        engine = self.engine()
        if engine is None:
            return
        yield from self._webhooks(engine)
        yield from self._history(engine)
        stats = engine.stats
        counters = {
            "instapay_engine_batches": ("Batches the pipeline has staged.", stats.batches),
            "instapay_engine_requests": ("Requests taken into batches.", stats.requests),
            "instapay_engine_records": ("Records written to the log.", stats.records),
            "instapay_wal_writes": ("Group-commit writes (one fdatasync each).", stats.log_writes),
            "instapay_wal_bytes": ("Bytes written to the log.", stats.log_bytes),
            "instapay_wal_write_seconds": (
                "Time spent writing and syncing the log.",
                stats.log_write_seconds,
            ),
        }
        yield from _counters(counters)
        yield GaugeMetricFamily(
            "instapay_wal_write_seconds_max",
            "Slowest log write so far.",
            stats.log_write_seconds_max,
        )
        yield GaugeMetricFamily(
            "instapay_engine_queue_depth", "Requests waiting for a batch.", engine.queue_depth()
        )
        yield _histogram(
            "instapay_engine_batch_size", "Requests per staged batch.", stats.batch_sizes
        )
        yield _histogram(
            "instapay_wal_write_latency_seconds",
            "Duration of one group-commit write and its fdatasync.",
            stats.log_write_latency,
        )

    def _history(self, engine: Engine) -> Iterator[Metric]:
        history = engine.stats.history
        if history is None:
            return
        gauges = {
            "instapay_history_lsn": ("Last LSN committed in history.db.", history.lsn),
            "instapay_history_durable_lsn": (
                "Last LSN durable in history.db (the log below it may go).",
                history.durable_lsn,
            ),
            "instapay_history_lag_records": (
                "Records logged but not yet in history.db.",
                engine.lsn_next - 1 - history.lsn,
            ),
            "instapay_history_rows_per_second": (
                "Rows the projector writes per second it spends projecting.",
                history.rows_per_s,
            ),
        }
        for name, (help_text, value) in gauges.items():
            yield GaugeMetricFamily(name, help_text, value)
        counters = {
            "instapay_history_records": ("Records projected.", history.records),
            "instapay_history_rows": ("Rows written to history.db.", history.rows),
            "instapay_history_transactions": ("Projection transactions.", history.transactions),
            "instapay_history_failures": (
                "Failed projection attempts (retried).",
                history.failures,
            ),
        }
        yield from _counters(counters)

    def _webhooks(self, engine: Engine) -> Iterator[Metric]:
        outbox = engine.outbox
        yield GaugeMetricFamily(
            "instapay_webhook_pending", "Events waiting to be delivered.", outbox.pending
        )
        oldest_ms = outbox.oldest_pending_ms()
        age_s = 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)
        yield GaugeMetricFamily(
            "instapay_webhook_oldest_pending_seconds",
            "How long the longest-waiting pending delivery has waited.",
            age_s,
        )
        dispatcher = self.dispatcher()
        attempts = CounterMetricFamily(
            "instapay_webhook_attempts",
            "Delivery attempts by result: delivered, retry (failed, will retry), failed (gave up).",
            labels=["result"],
        )
        for result in ("delivered", "retry", "failed"):
            attempts.add_metric([result], dispatcher.attempts[result] if dispatcher else 0)
        yield attempts


class _Counted:
    """What is known of the requests of one label set: how many, and since when."""

    __slots__ = ("count", "created_s")

    def __init__(self) -> None:
        self.count = 0
        self.created_s = time.time()


class _Latency(BucketCounts):
    __slots__ = ("created_s",)

    def __init__(self) -> None:
        super().__init__(LATENCY_BUCKETS_S)
        self.created_s = time.time()


class _RequestCollector(Collector):
    """Requests by route and status and their latency by route, counted in plain numbers (the
    event loop's thread alone counts and scrapes) and exported as the counter and histogram
    prometheus_client's Counter and Histogram would, `_created` samples included: those take a
    lock per count, three per request (3 µs of it)."""

    def __init__(self) -> None:
        # Routes are templates and statuses few, so these stay small.
        self.counted: dict[tuple[str, int], _Counted] = {}
        self.latencies: dict[str, _Latency] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        counted = self.counted.get((route, status))
        if counted is None:
            counted = self.counted[route, status] = _Counted()
        counted.count += 1
        latency = self.latencies.get(route)
        if latency is None:
            latency = self.latencies[route] = _Latency()
        latency.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        help_text = "HTTP requests by route and status."
        requests = CounterMetricFamily(
            "instapay_http_requests", help_text, labels=["route", "status"]
        )
        for (route, status), counted in self.counted.items():
            requests.add_metric([route, str(status)], counted.count, created=counted.created_s)
        yield requests
        name = "instapay_http_request_seconds"
        latency = HistogramMetricFamily(name, "HTTP request latency by route.", labels=["route"])
        for route, histogram in self.latencies.items():
            latency.add_metric([route], _buckets(histogram), sum_value=histogram.total)
            # HistogramMetricFamily has no `created`: the sample prometheus_client's Histogram adds.
            latency.samples.append(Sample(f"{name}_created", {"route": route}, histogram.created_s))
        yield latency


class Metrics:
    """One registry per application, so several can run in one process (tests)."""

    def __init__(
        self, engine: Callable[[], Engine | None], dispatcher: Callable[[], Dispatcher | None]
    ) -> None:
        self.registry = CollectorRegistry()
        self._requests = _RequestCollector()
        self.registry.register(self._requests)
        self.registry.register(_EngineCollector(engine, dispatcher))
        self.observe = self._requests.observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
