"""A payment shows what was refunded of it, in every answer that shows the payment, and its
refunds are listed newest first by Stripe's list conventions (issue 12, section 7)."""

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson

from instapay import lists, signing
from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.model import EngineConfig, Status
from servers import DEMO, Running, call, serving

OTHER = DemoMerchant("other", "other.k1")


def config() -> EngineConfig:
    return EngineConfig(DEMO.config().merchants + OTHER.config().merchants)


async def pay(api: Running, order_id: str, amount: int) -> dict[str, Any]:
    body = DEMO.payment(order_id, DEMO.payer(0), amount).body
    status, payment, _ = await call(api, "/v1/payments", body, method="POST")
    assert status == 200
    return dict(payment)


async def refund(api: Running, payment_id: str, amount: int) -> dict[str, Any]:
    body = orjson.dumps({"amount": amount})
    path = f"/v1/payments/{payment_id}/refunds"
    key = f"refund-{uuid.uuid4().hex}"  # a new refund each call
    status, answer, _ = await call(api, path, body, method="POST", idempotency_key=key)
    assert status == 200
    return dict(answer)


async def set_up(directory: Path) -> None:
    async with serving(directory, config()) as api:
        await api.engine.open_account(OTHER.settlement_account, "EUR")


def test_a_payment_shows_its_amount_refunded_in_reads_replays_and_after_restarts(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        await set_up(tmp_path)
        async with serving(tmp_path, config()) as api:
            payment = await pay(api, "order-1", 1000)
            assert payment["amount_refunded"] == 0
            await refund(api, payment["id"], 300)
            await refund(api, payment["id"], 200)
            declined = await refund(api, payment["id"], 600)
            assert declined["status"] == "failed", "over what is left: declined, not counted"
            await assert_refunded(api, payment, 500)
        # Closed with a snapshot; one more refund is only in the log when the next start reads it.
        async with Engine.open(tmp_path, config=config(), snapshot_on_close=False) as engine:
            more = await engine.submit(DEMO.refund(payment["id"], 100))
            assert more.status == Status.SUCCEEDED
        async with serving(tmp_path, config()) as api:
            await assert_refunded(api, payment, 600)

    asyncio.run(scenario())


async def assert_refunded(api: Running, payment: dict[str, Any], amount: int) -> None:
    status, read, _ = await call(api, f"/v1/payments/{payment['id']}")
    assert (status, read["amount_refunded"]) == (200, amount)
    status, listed, _ = await call(api, f"/v1/payments?order_id={payment['order_id']}")
    assert [p["amount_refunded"] for p in listed["data"]] == [amount]
    body = DEMO.payment(payment["order_id"], DEMO.payer(0), payment["amount"]).body
    status, replayed, headers = await call(api, "/v1/payments", body, method="POST")
    assert (status, headers.get("Idempotent-Replayed")) == (200, "true")
    assert replayed == {**payment, "amount_refunded": amount}


def test_the_refunds_of_a_payment_are_listed_newest_first_in_pages(tmp_path: Path) -> None:
    async def scenario() -> None:
        await set_up(tmp_path)
        async with serving(tmp_path, config()) as api:
            payment = await pay(api, "order-1", 100)
            other_payment = await pay(api, "order-2", 100)
            other_refund = await refund(api, other_payment["id"], 1)
            made = [await refund(api, payment["id"], amount) for amount in (10, 20, 30, 90)]
            assert made[-1]["status"] == "failed"
            newest_first = [r["id"] for r in reversed(made)]
            base = f"/v1/payments/{payment['id']}/refunds"
            status, page, headers = await call(api, base)
            assert status == 200
            assert [r["id"] for r in page["data"]] == newest_first
            assert page == {"object": "list", "data": list(reversed(made)), "has_more": False}
            body = orjson.dumps(page)
            signing.verify_payload(body, headers[signing.SIGNATURE_HEADER], [DEMO.secret])
            status, first, _ = await call(api, f"{base}?limit=3")
            assert ([r["id"] for r in first["data"]], first["has_more"]) == (newest_first[:3], True)
            cursor = first["data"][-1]["id"]
            status, second, _ = await call(api, f"{base}?limit=3&starting_after={cursor}")
            assert ([r["id"] for r in second["data"]], second["has_more"]) == (
                newest_first[3:],
                False,
            )
            cursor = second["data"][0]["id"]
            status, back, _ = await call(api, f"{base}?limit=2&ending_before={cursor}")
            assert ([r["id"] for r in back["data"]], back["has_more"]) == (newest_first[1:3], True)
            for query in (
                f"?starting_after={other_refund['id']}",
                "?starting_after=pay_1",
                f"?starting_after={cursor}&ending_before={cursor}",
                "?limit=0",
            ):
                status, error, _ = await call(api, base + query)
                assert (status, error["error"]["code"]) == (400, "invalid_request"), query

    asyncio.run(scenario())


def test_only_the_owning_merchant_lists_a_payments_refunds(tmp_path: Path) -> None:
    async def scenario() -> None:
        await set_up(tmp_path)
        async with serving(tmp_path, config()) as api:
            payment = await pay(api, "order-1", 100)
            await refund(api, payment["id"], 10)
            path = f"/v1/payments/{payment['id']}/refunds"
            status, error, _ = await call(api, path, merchant=OTHER)
            assert (status, error["error"]["code"]) == (404, "not_found")
            async with api.session.get(api.base_url + path) as unsigned:
                assert unsigned.status == 401
            status, _, _ = await call(api, "/v1/payments/pay_999999/refunds")
            assert status == 404

    asyncio.run(scenario())


def test_a_page_is_newest_first_with_cursors_either_way() -> None:
    ordered = [2, 5, 7, 9, 12]
    assert lists.newest_first(ordered, 2) == lists.Page([12, 9], has_more=True)
    assert lists.newest_first(ordered, 2, starting_after=9) == lists.Page([7, 5], has_more=True)
    assert lists.newest_first(ordered, 9, starting_after=5) == lists.Page([2], has_more=False)
    assert lists.newest_first(ordered, 2, ending_before=2) == lists.Page([7, 5], has_more=True)
    assert lists.newest_first(ordered, 2, ending_before=7) == lists.Page([12, 9], has_more=False)
    assert lists.newest_first([], 10) == lists.Page([], has_more=False)
