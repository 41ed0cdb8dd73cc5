"""Prometheus metrics: requests by route and status, request latency, and the engine's batches,
log writes (bytes and fsync time) and queue depth, read from `Engine.stats` at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from instapay.engine import BucketCounts, Engine
from instapay.notify import Dispatcher

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Request latency buckets, in seconds: durable payments take one fsync (~0.2 ms here) and more.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _histogram(name: str, help_text: str, histogram: BucketCounts) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for bound, count in zip([*map(str, histogram.bounds), "+Inf"], histogram.counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=histogram.total)


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
        for name, (help_text, value) in counters.items():
            yield CounterMetricFamily(name, help_text, value=value)
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


class Metrics:
    """One registry per application, so several can run in one process (tests)."""

    def __init__(
        self, engine: Callable[[], Engine | None], dispatcher: Callable[[], Dispatcher | None]
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "instapay_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "instapay_http_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine, dispatcher))
        # The counter and histogram children of each (route, status) seen: `labels()` checks and
        # joins its arguments under a lock on every call. Routes are templates and statuses few,
        # so this stays small.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        children = self._children.get((route, status))
        if children is None:
            children = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._children[route, status] = children
        count, latency = children
        count.inc()
        latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
