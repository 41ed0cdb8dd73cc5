"""Payments while webhooks go out: a slow merchant endpoint must not slow the payment path.

The engine's durable throughput (`submit_many`, as in test_bench_engine) with no webhook URL (the
baseline) and with every event POSTed to a receiver that takes `SLOW_RECEIVER_S` per delivery, so
the dispatcher holds its full window of deliveries in flight and the backlog grows the whole time.
Both run in this process and event loop, as in the server.
"""

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_benchmark.fixture import BenchmarkFixture

from benches.test_bench_engine import (
    BATCH_LEN,
    BATCHES_IN_FLIGHT,
    DEMO,
    RunningEngine,
    submit_rounds,
)
from instapay.model import EngineConfig, Merchant, PaymentResult
from instapay.notify import DeliveryPolicy, Dispatcher

GROUP = "webhooks: durable payments while the merchant endpoint is slow"
SLOW_RECEIVER_S = 1.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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


@pytest.fixture(params=["no webhooks", "slow receiver"])
def running(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[RunningEngine, SlowWebhooks | None]]:
    port = free_port()
    slow = request.param == "slow receiver"
    url = f"http://127.0.0.1:{port}/hooks" if slow else None
    engine = RunningEngine(tmp_path, "always", merchant_config(url))
    webhooks = SlowWebhooks(engine, port) if slow else None
    yield engine, webhooks
    if webhooks is not None:
        webhooks.close()
    engine.close()


@pytest.mark.benchmark(group=GROUP)
def test_payments_while_webhooks_go_out(
    benchmark: BenchmarkFixture, running: tuple[RunningEngine, SlowWebhooks | None]
) -> None:
    engine, webhooks = running
    answers = submit_rounds(benchmark, engine, "w")
    assert all(isinstance(a, PaymentResult) for a in answers)
    pending = engine.engine.outbox.pending
    if webhooks is not None:
        assert pending > 0, "the receiver kept up: it was not slow"
    benchmark.extra_info.update(
        items=BATCH_LEN * BATCHES_IN_FLIGHT,
        unit="payments/s",
        baseline=webhooks is None,
        webhooks_pending=pending,
    )
