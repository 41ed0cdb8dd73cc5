"""One merchant cannot deny service to another: beyond its share of the idempotency index a
merchant only borrows while one share stays free, through restarts, and the others keep paying
(issue 12, section 4); a lone merchant still uses all the index but that share."""

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
REFUSAL = (
    f"holds its share of the idempotency index ({SHARE} keys, 25 % of {CAPACITY}) and the "
    "index keeps one share free for other merchants"
)


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


async def fill_what_greedy_may(engine: Engine) -> int:
    """Declined payments until the first refusal (more than the index holds); the keys it got."""
    merchant = engine.merchants[GREEDY.merchant_id]
    answers = await engine.submit_authenticated(merchant, declined_bodies(CAPACITY))
    held = sum(isinstance(answer, PaymentResult) for answer in answers)
    assert all(a.status == Status.FAILED for a in answers[:held] if isinstance(a, PaymentResult))
    assert all(isinstance(answer, Overloaded) for answer in answers[held:])
    assert len(engine.index) == CAPACITY - SHARE, "one share is left free"
    return held


async def assert_greedy_refused_and_demo_pays(engine: Engine, held: int, order_id: str) -> None:
    merchant = engine.merchants[GREEDY.merchant_id]
    [refused, replayed] = await engine.submit_authenticated(
        merchant, declined_bodies(1, start=held) + declined_bodies(1)
    )
    assert isinstance(refused, Overloaded)
    assert REFUSAL in str(refused)
    assert isinstance(replayed, PaymentResult)
    assert replayed.replayed, "its own keys still answer"
    paid = await engine.submit(DEMO.payment(order_id, DEMO.payer(0), 100))
    assert isinstance(paid, PaymentResult)
    assert paid.status == Status.SUCCEEDED


def test_a_lone_merchant_borrows_beyond_its_share_but_leaves_one_to_the_others_after_restarts(
    tmp_path: Path,
) -> None:
    options = {"idempotency_capacity": CAPACITY}

    async def scenario() -> None:
        await set_up(tmp_path, 25, **options)
        # Without a snapshot: the next start counts the keys it replays from the log.
        opened = Engine.open(tmp_path, config=config(25), snapshot_on_close=False, **options)  # type: ignore[arg-type]
        async with opened as engine:
            held = await fill_what_greedy_may(engine)
            assert held == CAPACITY - SHARE, "alone, it borrows all but one share"
            assert engine.index.tenant_len(GREEDY.merchant_id) == held
            await assert_greedy_refused_and_demo_pays(engine, held, "demo-1")
        async with Engine.open(tmp_path, config=config(25), **options) as engine:  # type: ignore[arg-type]
            assert engine.index.tenant_len(GREEDY.merchant_id) == held
            await assert_greedy_refused_and_demo_pays(engine, held, "demo-2")
        # From the snapshot written on close.
        async with Engine.open(tmp_path, config=config(25), **options) as engine:  # type: ignore[arg-type]
            assert engine.index.tenant_len(GREEDY.merchant_id) == held
            await assert_greedy_refused_and_demo_pays(engine, held, "demo-3")

    asyncio.run(scenario())


def test_a_smaller_share_configured_since_keeps_every_logged_key(tmp_path: Path) -> None:
    """A key accepted once is never dropped on replay, whatever the share is now: dropping it
    would let a retry of its request apply twice."""
    options = {"idempotency_capacity": CAPACITY}
    # Within a share of 100 %; more than the CAPACITY - SHARE keys a share of 25 % lets it borrow.
    logged = CAPACITY - SHARE // 2

    async def scenario() -> None:
        await set_up(tmp_path, 100, **options)
        opened = Engine.open(tmp_path, config=config(100), snapshot_on_close=False, **options)  # type: ignore[arg-type]
        async with opened as engine:
            await fill_greedy_share(engine, logged)
        async with Engine.open(tmp_path, config=config(25), **options) as engine:  # type: ignore[arg-type]
            assert engine.index.tenant_len(GREEDY.merchant_id) == logged
            merchant = engine.merchants[GREEDY.merchant_id]
            answers = await engine.submit_authenticated(merchant, declined_bodies(logged))
            assert all(isinstance(a, PaymentResult) and a.replayed for a in answers)

    asyncio.run(scenario())


def test_over_http_a_merchant_filling_what_it_may_with_declines_leaves_others_paying(
    tmp_path: Path,
) -> None:
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
        await set_up(tmp_path, 25, idempotency_capacity=CAPACITY)
        async with serving(tmp_path, config(25), idempotency_capacity=CAPACITY) as api:
            paid_body = DEMO.payment("honest-1", DEMO.payer(0), 100).body
            status, paid = await post(api.session, api.base_url, DEMO, paid_body)
            assert (status, orjson.loads(paid)["status"]) == (200, "succeeded")
            batch = b"".join(body + b"\n" for body in declined_bodies(CAPACITY))
            status, answers = await post(api.session, api.base_url, GREEDY, batch)
            assert status == 200
            lines = [orjson.loads(line) for line in answers.splitlines()[:-1]]
            held = CAPACITY - SHARE - 1  # the honest merchant's key counts in the free room
            assert held > SHARE, "it borrowed beyond its share"
            assert {line["status"] for line in lines[:held]} == {"failed"}
            refusals = {(line["error"]["code"], line["error"]["message"]) for line in lines[held:]}
            [(code, message)] = refusals
            assert code == "overloaded"
            assert REFUSAL in message
            [one_more] = declined_bodies(1, start=CAPACITY)
            status, refused = await post(api.session, api.base_url, GREEDY, one_more)
            assert (status, orjson.loads(refused)["error"]["code"]) == (503, "overloaded")
            paid_body = DEMO.payment("honest-2", DEMO.payer(0), 100).body
            status, paid = await post(api.session, api.base_url, DEMO, paid_body)
            assert (status, orjson.loads(paid)["status"]) == (200, "succeeded")

    asyncio.run(scenario())
