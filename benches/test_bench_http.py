"""The HTTP service as a real process under load, against two baselines in the same run.

Single payments: wrk (closed loop, 64 connections) replays pre-signed `POST /v1/payments`, each
sent once (`benches/http/replay.lua`), for DURATION_S against `instapay serve` (its embedded demo,
durable: fsync="always", the default) and against two baselines: `benches/baselines/
bare_aiohttp.py`, which reads the body and answers 200 with the same access log (DESIGN.md's
target is a share of its rate), and `benches/baselines/naive_server.py`, which does a payment's
work the plain way, one fdatasync per request. Batch: 60 pre-signed NDJSON batches of 10 000
payments, four at a time (`benches/http/batch.py`); eight would put 80 000 payments in the
engine's queue at once, more than it takes, and the excess would be answered "overloaded". Its
baseline: the bare aiohttp process answering each line of a batch with one canned line as long
as instapay's, so the gap between the two is the payment work, not HTTP.
Quick mode runs 3 s instead of 15 and 8 batches instead of 60.

Each figure is one run (pedantic, rounds=1): what pytest-benchmark times is only the run's length;
the figures are in `extra_info` for `benches/report.py`: rate, p50/p99, the cores kept busy by
the server, by the load generator and by anything else (they all share this machine's cores), and
for single payments the server's CPU time per request (from /proc/<pid>/stat).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benches.conftest import pedantic, scaled
from benches.http import presign, servers
from benches.http.batch import BatchResult, run_batches
from benches.http.wrk import WrkResult, run_wrk
from instapay.demo import DemoMerchant
from instapay.engine import PAYMENTS_PATH

T = TypeVar("T")
CONNECTIONS = 64
# One wrk thread: it needs about a third of a core here, and a second would only take CPU from
# the server on a 2-core machine.
WRK_THREADS = 1
DURATION_S = scaled(15, 3)
# Sizes the pre-signed set: about twice the fastest rate any of the servers reaches on this machine.
# A faster machine that runs out fails the run (replays) rather than measure a cheaper path.
REQUESTS_PER_S_MAX = 30_000
SINGLE_GROUP = f"http: single POST, {CONNECTIONS} connections"
BATCH_CONNECTIONS = 4
BATCH_LEN = 10_000
BATCH_COUNT = scaled(60, 8)
BATCH_GROUP = f"http: batch, {BATCH_CONNECTIONS} connections x {BATCH_LEN} payments"


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds used during a run: by the server, and by the whole machine."""

    server_s: float
    machine_s: float

    def cores(self, generator_cpu_s: float, duration_s: float) -> dict[str, float]:
        """Cores kept busy by the server, the load generator and everything else (another job on
        the machine shows up here, and makes the run suspect)."""
        rest_s = self.machine_s - self.server_s - generator_cpu_s
        return {
            "server_cores": self.server_s / duration_s,
            "generator_cores": generator_cpu_s / duration_s,
            "rest_cores": rest_s / duration_s,
        }


def timed_on(server: servers.Server, load: Callable[[], T]) -> Callable[[], tuple[T, CpuUse]]:
    """`load`, also returning the CPU time the server and the machine used during it."""

    def run() -> tuple[T, CpuUse]:
        server_started_s, machine_started_s = server.cpu_s(), servers.machine_busy_s()
        result = load()
        server_s = server.cpu_s() - server_started_s
        return result, CpuUse(server_s, servers.machine_busy_s() - machine_started_s)

    return run


def replay_single_payments(
    benchmark: BenchmarkFixture, server: servers.Server, demo: DemoMerchant, directory: Path
) -> WrkResult:
    """Signs a fresh set of payments, has wrk replay them, and records the figures."""
    prefix = directory / "requests"
    count = REQUESTS_PER_S_MAX * DURATION_S
    presign.write_single_payments(
        demo, server.address, prefix, count=count, threads=WRK_THREADS, now_s=int(time.time())
    )

    def load() -> WrkResult:
        return run_wrk(
            server.address,
            PAYMENTS_PATH,
            prefix,
            threads=WRK_THREADS,
            connections=CONNECTIONS,
            duration_s=DURATION_S,
        )

    result, cpu = pedantic(benchmark, timed_on(server, load), rounds=1)
    for path in directory.glob(f"{prefix.name}.*"):
        path.unlink()  # a hundred megabytes or so; pytest keeps its last temp directories
    assert result.socket_errors == result.non_2xx == 0, result
    assert result.replays == 0, f"raise REQUESTS_PER_S_MAX: {result.replays} requests sent twice"
    record_rate(
        benchmark,
        result,
        cpu,
        unit="req/s",
        rate_per_s=result.requests_per_s,
        connections=CONNECTIONS,
        requests=result.requests,
    )
    # What a request costs the server, whatever share of the cores it got (benches/report.py
    # compares it with the baselines').
    benchmark.extra_info.update(server_cpu_us_per_request=cpu.server_s * 1e6 / result.requests)
    return result


def record_rate(
    benchmark: BenchmarkFixture,
    result: WrkResult | BatchResult,
    cpu: CpuUse,
    *,
    unit: str,
    rate_per_s: float,
    connections: int,
    requests: int,
) -> None:
    """A run's figures, for benches/report.py."""
    benchmark.extra_info.update(
        unit=unit,
        rate_per_s=rate_per_s,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        connections=connections,
        requests=requests,
        duration_s=result.duration_s,
        **cpu.cores(result.cpu_s, result.duration_s),
    )


@pytest.mark.benchmark(group=SINGLE_GROUP)
def test_bare_aiohttp(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    with servers.start_bare_aiohttp(tmp_path) as server:
        # The bare handler checks nothing: any signer will do, these bytes match instapay's.
        replay_single_payments(benchmark, server, DemoMerchant(), tmp_path)
    benchmark.extra_info.update(baseline=True)


def assert_answered_were_applied(applied: int, result: WrkResult) -> None:
    """Every payment wrk counted was applied, and at most one per connection more: wrk stops
    with up to one request per connection sent but not yet answered."""
    assert 0 <= applied - result.requests <= CONNECTIONS, (applied, result.requests)


@pytest.mark.benchmark(group=SINGLE_GROUP)
def test_naive_server(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    server, demo = servers.start_naive_server(tmp_path)
    with server:
        result = replay_single_payments(benchmark, server, demo, tmp_path)
    assert_answered_were_applied(servers.naive_payments_logged(tmp_path), result)
    benchmark.extra_info.update(baseline=True, fsync="per payment")


@pytest.mark.benchmark(group=SINGLE_GROUP)
def test_instapay_single_payment(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    server, demo = servers.start_instapay(tmp_path)
    with server:
        result = replay_single_payments(benchmark, server, demo, tmp_path)
        credited = server.balance(demo.settlement_account) // presign.AMOUNT
    assert_answered_were_applied(credited, result)
    benchmark.extra_info.update(baseline=False, fsync="always")


def send_batches(
    benchmark: BenchmarkFixture, server: servers.Server, demo: DemoMerchant
) -> BatchResult:
    """Signs BATCH_COUNT batches, sends them all, and records the figures."""
    batches = presign.batches(demo, "batch", BATCH_COUNT, BATCH_LEN, int(time.time()))

    def load() -> BatchResult:
        return asyncio.run(run_batches(server.address, batches, BATCH_CONNECTIONS))

    result, cpu = pedantic(benchmark, timed_on(server, load), rounds=1)
    record_rate(
        benchmark,
        result,
        cpu,
        unit="payments/s",
        rate_per_s=result.payments_per_s,
        connections=BATCH_CONNECTIONS,
        requests=BATCH_COUNT,
    )
    return result


@pytest.mark.benchmark(group=BATCH_GROUP)
def test_bare_aiohttp_batch(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    with servers.start_bare_aiohttp(tmp_path) as server:
        result = send_batches(benchmark, server, DemoMerchant())
    assert result.payments == BATCH_COUNT * BATCH_LEN
    benchmark.extra_info.update(baseline=True)


@pytest.mark.benchmark(group=BATCH_GROUP)
def test_instapay_batch(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    server, demo = servers.start_instapay(tmp_path)
    with server:
        result = send_batches(benchmark, server, demo)
        credited = server.balance(demo.settlement_account) // presign.AMOUNT
    assert credited == result.payments == BATCH_COUNT * BATCH_LEN
    benchmark.extra_info.update(baseline=False, fsync="always")
