"""The bounded hot state end to end: a real engine and its projector on real files, the real
HTTP application, a window of 100 results. Memory holds the window (and at most a chunk or two
more), history.db the rest: every old payment still reads the same by id, by order, with its
refunds and its event; a refund of a payment memory forgot succeeds once and only once, live,
after a restart from a trimmed snapshot, and replayed from the log; a retry of a result memory
forgot replays the same answer; snapshots do not grow with history."""

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from instapay import signing
from instapay.engine import Engine, hot
from instapay.model import (
    EngineConfig,
    Merchant,
    Overloaded,
    PaymentResult,
    RefundResult,
    Status,
)
from instapay.outbox import DeliveryOutcome
from instapay.protocol import PAYMENTS_PATH, payment_lsn
from instapay.storage import snapshots
from instapay.storage.history.prefetch import HistoryPrefetcher
from instapay.storage.history.projector import HistoryPolicy
from servers import DEMO, Running, serving

WINDOW = 100
# What memory may hold past the window: the results' newest chunk, the ledger's straddling one.
CHUNK_LEN = 4096
POLICY = HistoryPolicy(hot_results_max=WINDOW)
CONFIG = DEMO.config()
# The merchant with a webhook (never called: no dispatcher runs with a bare engine).
HOOKED = EngineConfig(
    (
        Merchant(
            DEMO.merchant_id,
            DEMO.settlement_account,
            {DEMO.kid: DEMO.secret},
            "http://127.0.0.1:9/hook",
            b"the hooked shop's webhook secret",
        ),
    )
)
# Payments made after the old ones: enough for their chunks to leave memory.
NEWER = 3 * CHUNK_LEN
JSON = dict[str, Any]


async def call(
    api: Running, path: str, *, body: bytes = b"", method: str = "GET", key: str | None = None
) -> tuple[int, JSON, dict[str, str]]:
    signed = DEMO.sign(path, body, method=method, idempotency_key=key)
    headers = {signing.SIGNATURE_HEADER: signed.header or ""}
    if key is not None:
        headers[signing.IDEMPOTENCY_HEADER] = key
    if method == "POST":
        headers["Content-Type"] = "application/json"
    async with api.session.request(
        method, api.base_url + path, data=body, headers=headers
    ) as answer:
        return answer.status, orjson.loads(await answer.read()), dict(answer.headers)


async def post_payment(
    api: Running, order_id: str, amount: int, key: str | None
) -> tuple[JSON, bool]:
    """A payment of payer-0's: its answer, and whether it was a replay."""
    fields = {
        "merchant_id": DEMO.merchant_id,
        "order_id": order_id,
        "payer": DEMO.payer(0),
        "amount": amount,
        "currency": "EUR",
    }
    body = orjson.dumps(fields)
    status, answer, headers = await call(api, PAYMENTS_PATH, body=body, method="POST", key=key)
    assert status == 200, answer
    return answer, headers.get("Idempotent-Replayed") == "true"


async def pay(api: Running, order_id: str, amount: int, key: str | None = None) -> JSON:
    payment, replayed = await post_payment(api, order_id, amount, key)
    assert not replayed
    return payment


async def refund(api: Running, payment_id: str, amount: int | None, key: str) -> tuple[JSON, bool]:
    """A refund's answer, and whether it was a replay."""
    path = f"{PAYMENTS_PATH}/{payment_id}/refunds"
    body = b"" if amount is None else orjson.dumps({"amount": amount})
    status, answer, headers = await call(api, path, body=body, method="POST", key=key)
    assert status == 200, answer
    return answer, headers.get("Idempotent-Replayed") == "true"


async def many_payments(engine: Engine, count: int, prefix: str) -> None:
    requests = [DEMO.payment(f"{prefix}-{n}", DEMO.payer(1), 1) for n in range(count)]
    for start in range(0, count, 1024):
        answers = await engine.submit_many(requests[start : start + 1024])
        assert all(isinstance(a, PaymentResult) for a in answers), answers[:3]


async def forget(engine: Engine) -> None:
    """Waits until history.db holds every durable record durably, then runs an eviction pass."""
    assert await engine.history_caught_up(30)
    history = engine.history
    assert history is not None
    async with asyncio.timeout(30):
        while history.durable_lsn < engine.lsn_next - 1:
            await asyncio.sleep(0.05)
    engine.evict()


def holds_the_window_only(engine: Engine) -> None:
    assert len(engine.results) <= WINDOW + CHUNK_LEN, len(engine.results)
    assert engine.ledger.native.payments_held() <= WINDOW + 2 * CHUNK_LEN


async def reads(api: Running, payment_id: str, order_id: str) -> list[JSON]:
    """What HTTP answers of a payment: itself, its order's payments, its refunds, its event."""
    event_id = "evt_" + payment_id.removeprefix("pay_")
    answers = []
    for path in (
        f"{PAYMENTS_PATH}/{payment_id}",
        f"{PAYMENTS_PATH}?order_id={order_id}",
        f"{PAYMENTS_PATH}/{payment_id}/refunds",
        f"/v1/events/{event_id}",
    ):
        status, answer, _ = await call(api, path)
        assert status == 200, (path, answer)
        answers.append(answer)
    return answers


async def events_page(api: Running, after_lsn: int) -> JSON:
    status, page, _ = await call(api, f"/v1/events?after=evt_{after_lsn}&limit=4")
    assert status == 200, page
    return page


async def payment_now(api: Running, payment_id: str) -> tuple[int, JSON]:
    status, answer, _ = await call(api, f"{PAYMENTS_PATH}/{payment_id}")
    return status, answer


async def retried_payment(api: Running, order_id: str, amount: int, key: str) -> JSON:
    """The answer to a retry of a payment, which must be a replay."""
    answer, replayed = await post_payment(api, order_id, amount, key)
    assert replayed, answer
    return answer


async def refund_the_rest_once(api: Running, payment_id: str) -> list[JSON]:
    """Refunds what is left of a payment forgotten by memory: once, its retry a replay, a second
    refund declined. Returns the refund and the declined one."""
    rest, was_replayed = await refund(api, payment_id, None, "refund-2")
    assert (rest["status"], rest["amount"], was_replayed) == ("succeeded", 400, False)
    assert await refund(api, payment_id, None, "refund-2") == (rest, True)
    declined, _ = await refund(api, payment_id, None, "refund-3")
    assert declined["failure_code"] == "refund_exceeds_payment"
    status, now = await payment_now(api, payment_id)
    assert (status, now["amount_refunded"]) == (200, 500)
    return [rest, declined]


def test_old_payments_read_the_same_and_refund_once_after_memory_forgot_them(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with serving(tmp_path, CONFIG, history=POLICY) as api:
            engine = api.engine
            oldest = await pay(api, "order-old", 500, key="pay-old")
            again = await pay(api, "order-old", 300)
            untouched = await pay(api, "order-plain", 200, key="pay-plain")
            first_refund, _ = await refund(api, oldest["id"], 100, "refund-1")
            before = await reads(api, oldest["id"], "order-old")
            assert [p["id"] for p in before[1]["data"]] == [oldest["id"], again["id"]]
            lsn = payment_lsn(oldest["id"])
            assert lsn is not None
            events_before = await events_page(api, lsn - 1)
            assert not engine.forgot_events_after(lsn - 1), "read from memory"
            await many_payments(engine, NEWER, "newer")
            await forget(engine)
            holds_the_window_only(engine)
            assert engine.results.get(lsn) is None, "memory forgot the oldest payment"
            assert engine.ledger.payment(oldest["id"]) is None
            assert await reads(api, oldest["id"], "order-old") == before
            assert engine.forgot_events_after(lsn - 1), "read from history.db"
            events_after = await events_page(api, lsn - 1)
            # The same four events (the newer payments came after them).
            assert events_after["data"] == events_before["data"]
            assert (events_before["has_more"], events_after["has_more"]) == (False, True)
            # Retries of a payment and a refund memory forgot replay them, from history.db.
            assert await retried_payment(api, "order-plain", 200, "pay-plain") == untouched
            assert await refund(api, oldest["id"], 100, "refund-1") == (first_refund, True)
            rest, declined = await refund_the_rest_once(api, oldest["id"])
            assert (await payment_now(api, f"pay_{engine.lsn_next + 7}"))[0] == 404
            assert (await payment_now(api, "pay_1"))[0] == 404, "LSN 1 opened an account"
            await forget(engine)
            holds_the_window_only(engine)
            status, refunds, _ = await call(api, f"{PAYMENTS_PATH}/{oldest['id']}/refunds")
            listed = [r["id"] for r in refunds["data"]]
            assert listed == [declined["id"], rest["id"], first_refund["id"]]
        # After a restart from the trimmed snapshot: still refunded once.
        async with serving(tmp_path, CONFIG, history=POLICY) as api:
            holds_the_window_only(api.engine)
            assert await refund(api, oldest["id"], None, "refund-2") == (rest, True)
            again_declined, _ = await refund(api, oldest["id"], 1, "refund-4")
            assert again_declined["failure_code"] == "refund_exceeds_payment"
            status, now = await payment_now(api, oldest["id"])
            assert (status, now["amount_refunded"]) == (200, 500)
            api.engine.check_invariants()

    asyncio.run(main())


async def make_old_payment(engine: Engine) -> PaymentResult:
    await DEMO.set_up(engine, payers=2, balance=1_000_000)
    [old] = await engine.submit_many([DEMO.payment("old", DEMO.payer(0), 900)])
    assert isinstance(old, PaymentResult)
    await many_payments(engine, NEWER, "newer")
    await forget(engine)
    assert engine.ledger.payment(old.id) is None
    return old


async def refunded(engine: Engine, payment_id: str, amount: int | None) -> RefundResult:
    result = await engine.submit(DEMO.refund(payment_id, amount))
    assert isinstance(result, RefundResult)
    return result


def test_a_refund_of_a_payment_memory_forgot_replays_from_the_log_once(tmp_path: Path) -> None:
    """The refund is in the log after the last snapshot, which holds neither the payment nor its
    result: recovery recalls the payment from history.db for it, with what was refunded before."""

    async def main() -> None:
        async with Engine.open(
            tmp_path, config=CONFIG, history_policy=POLICY, snapshot_on_close=False
        ) as engine:
            old = await make_old_payment(engine)
            engine.snapshot()
            assert (await refunded(engine, old.id, 400)).status == Status.SUCCEEDED
            assert (await refunded(engine, old.id, 500)).status == Status.SUCCEEDED
        async with Engine.open(tmp_path, config=CONFIG, history_policy=POLICY) as engine:
            entry = engine.ledger.payment(old.id)
            assert entry is not None
            assert (entry.amount, entry.refunded) == (900, 900)
            declined = await refunded(engine, old.id, 1)
            assert declined.failure_code is not None
            assert declined.failure_code.value == "refund_exceeds_payment"
            payment = await engine.payment_anywhere(old.id)
            assert payment is not None
            assert payment.amount_refunded == 900

    asyncio.run(main())


def test_a_payment_put_back_for_a_refund_stays_while_pinned(tmp_path: Path) -> None:
    """The prefetch puts a payment back and pins it before its refund is queued: a pass
    between that and the refund's batch keeps it; once unpinned and unrefunded it goes."""

    async def main() -> None:
        async with Engine.open(tmp_path, config=CONFIG, history_policy=POLICY) as engine:
            old = await make_old_payment(engine)
            lsn = payment_lsn(old.id)
            assert lsn is not None
            prefetcher = engine._prefetcher
            assert prefetcher is not None
            await hot.prefetch(engine.state, prefetcher, lsn)
            engine.hot.pin(lsn)
            engine.evict()
            entry = engine.ledger.payment(old.id)
            assert entry is not None
            assert (entry.amount, entry.refunded) == (900, 0)
            engine.hot.unpin(lsn)
            engine.evict()
            assert engine.ledger.payment(old.id) is None
            # A payment id history.db does not hold either: nothing is put back, 404 as ever.
            await hot.prefetch(engine.state, prefetcher, engine.lsn_next + 5)
            assert engine.ledger.native.payments_held() <= WINDOW + 2 * CHUNK_LEN

    asyncio.run(main())


def test_a_finished_delivery_memory_forgot_reads_the_same_and_redelivers(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with Engine.open(tmp_path, config=HOOKED, history_policy=POLICY) as engine:
            await DEMO.set_up(engine, payers=2, balance=1_000_000)
            [failed, delivered] = await engine.submit_many(
                [DEMO.payment(f"hooked-{n}", DEMO.payer(0), 5) for n in range(2)]
            )
            assert isinstance(failed, PaymentResult)
            assert isinstance(delivered, PaymentResult)
            lsns = [payment_lsn(result.id) or 0 for result in (failed, delivered)]
            outcomes = [
                DeliveryOutcome(lsns[0], 1_000, "500", False, 2_000),
                DeliveryOutcome(lsns[0], 2_000, "timeout", False, None),
                DeliveryOutcome(lsns[1], 1_000, "200", True, None),
            ]
            await engine.record_deliveries(outcomes)
            before = [await engine.delivery_json_anywhere(lsn) for lsn in lsns]
            assert [d["status"] for d in before] == ["failed", "delivered"]
            assert await engine.failed_anywhere(DEMO.merchant_id) == [lsns[0]]
            await many_payments(engine, NEWER, "newer")
            # The new events' deliveries are pending: they stay, the two finished ones go.
            await forget(engine)
            assert not any(engine.outbox.holds_delivery(lsn) for lsn in lsns)
            assert engine.outbox.pending == NEWER
            assert [await engine.delivery_json_anywhere(lsn) for lsn in lsns] == before
            assert await engine.failed_anywhere(DEMO.merchant_id) == [lsns[0]]
            await engine.redeliver([lsns[0]])
            assert engine.outbox.holds_delivery(lsns[0])
            assert await engine.failed_anywhere(DEMO.merchant_id) == []
            redelivered = await engine.delivery_json_anywhere(lsns[0])
            assert redelivered["status"] == "pending"

    asyncio.run(main())


def test_an_old_snapshot_holding_every_result_loads_then_is_trimmed(tmp_path: Path) -> None:
    async def main() -> None:
        async with Engine.open(tmp_path, config=CONFIG, history=False) as engine:
            await DEMO.set_up(engine, payers=2, balance=1_000_000)
            [old] = await engine.submit_many([DEMO.payment("old", DEMO.payer(0), 900)])
            await many_payments(engine, NEWER, "newer")
        async with Engine.open(tmp_path, config=CONFIG, history_policy=POLICY) as engine:
            assert len(engine.results) > NEWER, "the snapshot held every result"
            await forget(engine)
            holds_the_window_only(engine)
            assert isinstance(old, PaymentResult)
            assert await engine.payment_anywhere(old.id) == old
            assert (await refunded(engine, old.id, None)).amount == 900

    asyncio.run(main())


def test_a_snapshot_does_not_grow_with_history(tmp_path: Path) -> None:
    async def size_after(directory: Path, payments: int) -> int:
        async with Engine.open(directory, config=CONFIG, history_policy=POLICY) as engine:
            await DEMO.set_up(engine, payers=2, balance=1_000_000)
            await many_payments(engine, payments, "p")
            await forget(engine)
            holds_the_window_only(engine)
            # The idempotency index is bounded by its capacity and its keys' TTL, not the window.
            index = len(engine.state.index.dump())
            return engine.snapshot().stat().st_size - index

    async def main() -> None:
        small = await size_after(tmp_path / "small", 2 * CHUNK_LEN)
        large = await size_after(tmp_path / "large", 10 * 2 * CHUNK_LEN)
        assert abs(large - small) <= small * 0.1, (small, large)
        assert snapshots.newest_snapshot_lsn(tmp_path / "large") > 10 * 2 * CHUNK_LEN

    asyncio.run(main())


def test_without_a_history_nothing_is_forgotten(tmp_path: Path) -> None:
    async def main() -> None:
        async with Engine.open(
            tmp_path, config=CONFIG, history=False, history_policy=POLICY
        ) as engine:
            await DEMO.set_up(engine, payers=2, balance=1_000_000)
            await many_payments(engine, 2 * CHUNK_LEN, "p")
            engine.evict()
            assert len(engine.results) == 2 * CHUNK_LEN

    asyncio.run(main())


def test_a_retry_of_a_keyed_deposit_memory_forgot_replays_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with Engine.open(tmp_path, config=CONFIG, history_policy=POLICY) as engine:
            await DEMO.set_up(engine, payers=2, balance=1_000_000)
            first = await engine.deposit(DEMO.payer(0), 700, "EUR", idempotency_key="d-1")
            declined = await engine.withdraw(DEMO.payer(0), 10**9, "EUR", idempotency_key="w-1")
            assert declined.failure_code is not None
            await many_payments(engine, NEWER, "newer")
            await forget(engine)
            assert len(engine.state.admin_results) == 1, "the declined one stays"
            again = await engine.deposit(DEMO.payer(0), 700, "EUR", idempotency_key="d-1")
            assert again == replace(first, replayed=True)
            declined_again = await engine.withdraw(
                DEMO.payer(0), 10**9, "EUR", idempotency_key="w-1"
            )
            assert declined_again == replace(declined, replayed=True)
            assert engine.balance(DEMO.payer(0)) == ("EUR", 1_000_700)

    asyncio.run(main())


def test_a_refund_of_a_forgotten_payment_history_cannot_give_back_is_503_not_declined(
    tmp_path: Path,
) -> None:
    """A refund whose payment memory forgot, while history.db cannot be read: refused for a
    retry (Overloaded: 503), nothing logged; it is never declined as if there were no payment.
    Once the database reads again, the same refund succeeds."""

    async def main() -> None:
        async with Engine.open(tmp_path, config=CONFIG, history_policy=POLICY) as engine:
            old = await make_old_payment(engine)
            lsn_next = engine.lsn_next
            unreadable = HistoryPrefetcher(tmp_path / "no-such-history.db")
            readable, engine._prefetcher = engine._prefetcher, unreadable
            with pytest.raises(Overloaded, match=f"payment {old.id} cannot be read"):
                await engine.submit(DEMO.refund(old.id, 100))
            assert engine.lsn_next == lsn_next, "nothing was logged"
            engine._prefetcher = readable
            unreadable.close()
            assert (await refunded(engine, old.id, 100)).status == Status.SUCCEEDED

    asyncio.run(main())
