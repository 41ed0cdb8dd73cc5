"""Idempotency keys leave the index once their TTL has passed while the engine runs, not only at
a restart: an index filled by one day's payments frees up for the next day's. A restart rebuilds
the index from the log the way it was live, so a key logged after older ones expired is still
there after the restart: its retry is a replay, never a second charge."""

import asyncio
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.model import Overloaded, PaymentResult

DEMO = DemoMerchant()
# The floor of a merchant's share is 1000 keys and a lone merchant leaves one share free: in 2000
# keys it holds 1000.
CAPACITY = 2000
HELD = 1000
TTL_S = 2
# Past the TTL: a key reserved at second t is dropped from second t + TTL_S + 1 on.
AGED_S = TTL_S + 1.2


def open_engine(directory: Path) -> AbstractAsyncContextManager[Engine]:
    return Engine.open(
        directory,
        config=DEMO.config(),
        idempotency_capacity=CAPACITY,
        idempotency_ttl_s=TTL_S,
        snapshot_on_close=False,
    )


async def pay(engine: Engine, prefix: str, count: int) -> list[object]:
    requests = [DEMO.payment(f"{prefix}-{n}", DEMO.payer(0), 1) for n in range(count)]
    return list(await engine.submit_many(requests))


def test_a_full_index_frees_up_as_its_keys_pass_their_ttl(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_engine(tmp_path) as engine:
            await DEMO.set_up(engine, payers=1, balance=10**9)
            assert all(isinstance(a, PaymentResult) for a in await pay(engine, "day1", HELD))
            [refused] = await pay(engine, "day1-more", 1)
            assert isinstance(refused, Overloaded), refused
            await asyncio.sleep(AGED_S)
            [paid] = await pay(engine, "day2", 1)
            assert isinstance(paid, PaymentResult), f"the aged keys still fill the index: {paid}"

    asyncio.run(scenario())


def test_a_key_logged_after_older_ones_expired_survives_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_engine(tmp_path) as engine:
            await DEMO.set_up(engine, payers=1, balance=10**9)
            # More keys in the log than the index holds: only expiry made room for the last.
            for day in ("day1", "day2"):
                assert all(isinstance(a, PaymentResult) for a in await pay(engine, day, HELD))
                await asyncio.sleep(AGED_S)
            [last] = await pay(engine, "day3", 1)
            assert isinstance(last, PaymentResult)
        async with open_engine(tmp_path) as engine:  # replays the whole log
            [again] = await pay(engine, "day3", 1)
            assert isinstance(again, PaymentResult)
            assert again.replayed, "the retry after a restart charged the payer again"
            assert again.id == last.id
            balance = engine.state.balance(DEMO.payer(0))
            assert balance == ("EUR", 10**9 - 2 * HELD - 1)

    asyncio.run(scenario())


def test_a_log_holding_more_keys_than_the_capacity_now_refuses_to_start(tmp_path: Path) -> None:
    """Payment keys (replayed natively) and keyed deposits (replayed by the handlers) alike:
    a logged key is never dropped for want of room, or a retry of its request would pay twice."""

    async def scenario() -> None:
        async with open_engine(tmp_path / "payments") as engine:
            await DEMO.set_up(engine, payers=1, balance=10**9)
            assert all(isinstance(a, PaymentResult) for a in await pay(engine, "o", HELD))
        async with open_engine(tmp_path / "deposits") as engine:
            await DEMO.set_up(engine, payers=1, balance=10**9)
            for n in range(20):
                await engine.deposit(DEMO.payer(0), 1, "EUR", idempotency_key=f"d-{n}")
        for directory, capacity in (("payments", HELD - 1), ("deposits", 19)):
            with pytest.raises(ValueError, match=r"idempotency keys.*raise the capacity"):
                async with Engine.open(
                    tmp_path / directory,
                    config=DEMO.config(),
                    idempotency_capacity=capacity,
                    snapshot_on_close=False,
                ):
                    pass

    asyncio.run(scenario())
