"""Payments while webhooks go out: a slow merchant endpoint must not slow the payment path.

The engine's durable throughput (`submit_many`, as in test_bench_engine) with no webhook URL (the
baseline) and with every event POSTed to a receiver that takes `SLOW_RECEIVER_S` per delivery, so
the dispatcher holds its full window of deliveries in flight and the backlog grows the whole time.
Both engines stay open side by side, and each test alternates its timed rounds with untimed
rounds on the other engine, so both see the same machine and process state; the slow-endpoint
row also reports its ratio against the baseline's rounds run in alternation with it, the figure
to trust on a noisy machine. Each engine runs its dispatcher in its own event loop, as the
server does.
"""

import asyncio
import statistics
import time
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_benchmark.fixture import BenchmarkFixture

from benches.engine_workload import BATCH_LEN, BATCHES_IN_FLIGHT, DEMO
from benches.http.servers import free_port
from benches.test_bench_engine import RunningEngine, round_batches, submit_rounds
from instapay.model import EngineConfig, Merchant, PaymentResult
from instapay.notify import DeliveryPolicy, Dispatcher

GROUP = "webhooks: durable payments while the merchant endpoint is slow"
SLOW_RECEIVER_S = 1.0


def slow_receiver() -> web.Application:
    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(SLOW_RECEIVER_S)
        return web.Response()

    app = web.Application()
    app.router.add_post("/hooks", slow)
    return app


class SlowWebhooks:
    """The receiver and the dispatcher feeding it, in the engine's event loop."""

    def __init__(self, running: RunningEngine, port: int) -> None:
        self.loop = running.loop
        self.receiver = TestServer(slow_receiver(), host="127.0.0.1", port=port)

        async def start() -> tuple[aiohttp.ClientSession, Dispatcher]:
            await self.receiver.start_server()
            session = aiohttp.ClientSession()
            return session, Dispatcher(running.engine, DeliveryPolicy(), session)

        self.session, self.dispatcher = self.loop.run_until_complete(start())
        self.task = self.loop.create_task(self.dispatcher.run())

    def close(self) -> None:
        async def stop() -> None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            await self.session.close()
            await self.receiver.close()

        self.loop.run_until_complete(stop())


def merchant_config(webhook_url: str | None) -> EngineConfig:
    secret = b"webhook secret of the benchmark." if webhook_url else None
    merchant = Merchant(
        DEMO.merchant_id, DEMO.settlement_account, {DEMO.kid: DEMO.secret}, webhook_url, secret
    )
    return EngineConfig((merchant,))


VARIANTS = ("no webhooks", "slow receiver")


@pytest.fixture(scope="module")
def variants(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[RunningEngine, SlowWebhooks | None]]]:
    """Both engines, open side by side for the whole module: each test runs its rounds in
    alternation with rounds on the other, so the two see the same machine and process state."""
    port = free_port()
    plain = RunningEngine(tmp_path_factory.mktemp("plain"), "always", merchant_config(None))
    url = f"http://127.0.0.1:{port}/hooks"
    slow = RunningEngine(tmp_path_factory.mktemp("slow"), "always", merchant_config(url))
    webhooks = SlowWebhooks(slow, port)
    yield {"no webhooks": (plain, None), "slow receiver": (slow, webhooks)}
    webhooks.close()
    slow.close()
    plain.close()


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("variant", VARIANTS)
def test_payments_while_webhooks_go_out(
    benchmark: BenchmarkFixture,
    variants: dict[str, tuple[RunningEngine, SlowWebhooks | None]],
    variant: str,
) -> None:
    engine, webhooks = variants[variant]
    other, _ = variants[next(name for name in VARIANTS if name != variant)]
    prefix = "s" if webhooks else "p"
    other_round_s: list[float] = []

    def other_round(number: int) -> None:
        batches = round_batches(f"{prefix}-other-", number)
        started_s = time.perf_counter()
        other.submit(batches)
        other_round_s.append(time.perf_counter() - started_s)

    answers = submit_rounds(benchmark, engine, f"{prefix}-", between=other_round)
    assert all(isinstance(a, PaymentResult) for a in answers)
    pending = engine.engine.outbox.pending
    if webhooks is not None:
        assert pending > 0, "the receiver kept up: it was not slow"
        # This row's throughput over the baseline's in the rounds run in alternation with it.
        stats = benchmark.stats
        assert stats is not None
        ratio = statistics.median(other_round_s) / stats.stats.median
        benchmark.extra_info.update(alternating_ratio=ratio)
    benchmark.extra_info.update(
        items=BATCH_LEN * BATCHES_IN_FLIGHT,
        unit="payments/s",
        baseline=webhooks is None,
        webhooks_pending=pending,
    )
