"""One merchant cannot deny service to another: each holds at most its share of the idempotency
index, through restarts, and the others keep paying (issue 12, section 4)."""

import asyncio
from pathlib import Path

import orjson
from aiohttp import ClientSession

from instapay import _core, signing
from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.model import EngineConfig, Overloaded, PaymentResult, Status
from servers import DEMO, serving

GREEDY = DemoMerchant("greedy", "greedy.k1")
# 25 % of 4000 keys is the floor of a share: 1000 keys.
CAPACITY = 4 * _core.IDEMPOTENCY_TENANT_KEYS_MIN
SHARE = _core.IDEMPOTENCY_TENANT_KEYS_MIN


def config(share_percent: int) -> EngineConfig:
    merchants = DEMO.config().merchants + GREEDY.config().merchants
    return EngineConfig(merchants, idempotency_share_percent=share_percent)


def declined_bodies(count: int, start: int = 0) -> list[bytes]:
    """Payments from a payer that does not exist: declined, and kept like any result."""
    return [
        orjson.dumps(
            {
                "merchant_id": GREEDY.merchant_id,
                "order_id": f"greedy-{n}",
                "payer": "nobody",
                "amount": 1,
                "currency": "EUR",
            }
        )
        for n in range(start, start + count)
    ]


async def set_up(directory: Path, share_percent: int, **options: int) -> None:
    async with Engine.open(directory, config=config(share_percent), **options) as engine:  # type: ignore[arg-type]
        await DEMO.set_up(engine, payers=3, balance=10_000)
        await engine.open_account(GREEDY.settlement_account, "EUR")


async def fill_greedy_share(engine: Engine, count: int) -> None:
    merchant = engine.merchants[GREEDY.merchant_id]
    answers = await engine.submit_authenticated(merchant, declined_bodies(count))
    assert all(isinstance(a, PaymentResult) and a.status == Status.FAILED for a in answers)


async def assert_greedy_refused_and_demo_pays(engine: Engine, order_id: str) -> None:
    merchant = engine.merchants[GREEDY.merchant_id]
    [refused, replayed] = await engine.submit_authenticated(
        merchant, declined_bodies(1, start=SHARE) + declined_bodies(1)
    )
    assert isinstance(refused, Overloaded)
    assert f"holds {SHARE} idempotency keys" in str(refused)
    assert isinstance(replayed, PaymentResult)
    assert replayed.replayed, "its own keys still answer"
    paid = await engine.submit(DEMO.payment(order_id, DEMO.payer(0), 100))
    assert isinstance(paid, PaymentResult)
    assert paid.status == Status.SUCCEEDED


def test_a_merchant_at_its_share_is_overloaded_while_another_pays_also_after_restarts(
    tmp_path: Path,
) -> None:
    options = {"idempotency_capacity": CAPACITY}

    async def scenario() -> None:
        await set_up(tmp_path, 25, **options)
        # Without a snapshot: the next start counts the keys it replays from the log.
        opened = Engine.open(tmp_path, config=config(25), snapshot_on_close=False, **options)  # type: ignore[arg-type]
        async with opened as engine:
            await fill_greedy_share(engine, SHARE)
            assert engine.index.tenant_len(GREEDY.merchant_id) == SHARE
            await assert_greedy_refused_and_demo_pays(engine, "demo-1")
        async with Engine.open(tmp_path, config=config(25), **options) as engine:  # type: ignore[arg-type]
            assert engine.index.tenant_len(GREEDY.merchant_id) == SHARE
            await assert_greedy_refused_and_demo_pays(engine, "demo-2")
        # From the snapshot written on close.
        async with Engine.open(tmp_path, config=config(25), **options) as engine:  # type: ignore[arg-type]
            assert engine.index.tenant_len(GREEDY.merchant_id) == SHARE
            await assert_greedy_refused_and_demo_pays(engine, "demo-3")

    asyncio.run(scenario())


def test_a_smaller_share_configured_since_keeps_every_logged_key(tmp_path: Path) -> None:
    """A key accepted once is never dropped on replay, whatever the share is now: dropping it
    would let a retry of its request apply twice."""
    options = {"idempotency_capacity": 2 * CAPACITY}

    async def scenario() -> None:
        await set_up(tmp_path, 50, **options)
        opened = Engine.open(tmp_path, config=config(50), snapshot_on_close=False, **options)  # type: ignore[arg-type]
        async with opened as engine:
            await fill_greedy_share(engine, 3 * SHARE)
        async with Engine.open(tmp_path, config=config(25), **options) as engine:  # type: ignore[arg-type]
            assert engine.index.tenant_len(GREEDY.merchant_id) == 3 * SHARE
            merchant = engine.merchants[GREEDY.merchant_id]
            answers = await engine.submit_authenticated(merchant, declined_bodies(3 * SHARE))
            assert all(isinstance(a, PaymentResult) and a.replayed for a in answers)

    asyncio.run(scenario())


def test_over_http_a_merchant_filling_its_share_with_declines_leaves_others_paying(
    tmp_path: Path,
) -> None:
    share = 10_000  # 1 % of the default capacity of a million keys

    async def post(
        session: ClientSession, url: str, merchant: DemoMerchant, body: bytes
    ) -> tuple[int, bytes]:
        path = "/v1/payments" if body.count(b"\n") == 0 else "/v1/payments/batch"
        request = merchant.sign(path, body)
        headers = {
            "Content-Type": "application/json"
            if path == "/v1/payments"
            else "application/x-ndjson",
            signing.SIGNATURE_HEADER: request.header or "",
        }
        async with session.post(url + path, data=body, headers=headers) as response:
            return response.status, await response.read()

    async def scenario() -> None:
        await set_up(tmp_path, 1)
        async with serving(tmp_path, config(1)) as api:
            batch = b"".join(body + b"\n" for body in declined_bodies(share))
            status, answers = await post(api.session, api.base_url, GREEDY, batch)
            assert status == 200
            lines = [orjson.loads(line) for line in answers.splitlines()[:-1]]
            assert len(lines) == share
            assert {line["status"] for line in lines} == {"failed"}
            [one_more] = declined_bodies(1, start=share)
            status, refused = await post(api.session, api.base_url, GREEDY, one_more)
            error = orjson.loads(refused)["error"]
            assert (status, error["code"]) == (503, "overloaded")
            assert (
                f"holds {share} idempotency keys, its share of the index (1 %" in error["message"]
            )
            paid_body = DEMO.payment("honest-1", DEMO.payer(0), 100).body
            status, paid = await post(api.session, api.base_url, DEMO, paid_body)
            assert (status, orjson.loads(paid)["status"]) == (200, "succeeded")

    asyncio.run(scenario())
