"""The durable results in native memory (`instapay.engine.results`, `rust/state/results`): they
come back exactly as they were put, with their indexes, through a snapshot too; and engine
snapshots written while the results were JSON rows still load."""

import asyncio
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from instapay.demo import DemoMerchant
from instapay.engine import Engine, recovery
from instapay.engine.results import Durable, Results
from instapay.engine.state import State
from instapay.model import Failure, PaymentResult, RefundResult, Status
from instapay.protocol import PAYMENTS_PATH, payment_id, refund_id
from instapay.storage import snapshots
from legacy_ledger import rewrite_snapshot_with_json_results

DEMO = DemoMerchant()
BALANCE = 10_000
# Written by the engine before the results were native (commit 5d28a8a), `history` below: its
# snapshot at LSN 12 holds them as JSON rows; the log holds the same records.
JSON_RESULTS = Path(__file__).parent / "fixtures" / "json-results"
JSON_RESULTS_CREATED_S = 1796125917

texts = st.text(max_size=20)
optional_texts = st.none() | texts
ints = st.integers(-(2**63), 2**63 - 1)
failures = st.none() | st.sampled_from(Failure)
# A few names, so results share merchants, orders, payers and refunded payments.
names = st.sampled_from(["shop", "", "café ☕", "shop2"])
metadata = st.none() | st.dictionaries(texts, texts, max_size=4)


@st.composite
def a_result(draw: st.DrawFn, lsn: int) -> Durable:
    status = draw(st.sampled_from(Status))
    if draw(st.booleans()):
        return PaymentResult(
            payment_id(lsn),
            draw(names),
            draw(st.sampled_from(["order-1", "order-2", "", "ordre-é"])),
            draw(names),
            draw(ints),
            draw(st.sampled_from(["EUR", "USD", ""])),
            status,
            draw(failures),
            draw(ints),
            draw(optional_texts),
            draw(metadata),
        )
    return RefundResult(
        refund_id(lsn),
        draw(st.sampled_from(["pay_1", "pay_2", "pay_x", "pay_01", ""])),
        draw(names),
        draw(st.integers(0, 2**40)),
        draw(st.sampled_from(["EUR", "USD"])),
        status,
        draw(failures),
        draw(ints),
        draw(optional_texts),
    )


@st.composite
def histories(draw: st.DrawFn) -> dict[int, Durable]:
    lsns = sorted(draw(st.sets(st.integers(1, 2**63 - 1), max_size=25)))
    return {lsn: draw(a_result(lsn)) for lsn in lsns}


def stored(history: dict[int, Durable]) -> Results:
    results = Results()
    for lsn, result in history.items():
        results.add(lsn, result)
    return results


def check_holds(results: Results, history: dict[int, Durable]) -> None:
    """Every result and every index answer as the history gives them."""
    assert len(results) == len(history)
    assert list(results) == list(history)
    for lsn, result in history.items():
        got = results[lsn]
        assert (got, type(got)) == (result, type(result))
        assert [type(field) for field in got] == [type(field) for field in result]
        assert results.merchant_of(lsn) == result.merchant_id
        assert lsn in results
    assert results.get(0) is None
    assert 0 not in results
    payments = [r for r in history.values() if isinstance(r, PaymentResult)]
    for merchant_id, order_id in {(p.merchant_id, p.order_id) for p in payments}:
        key = (merchant_id, order_id)
        expected = [int(p.id[4:]) for p in payments if (p.merchant_id, p.order_id) == key]
        assert results.payments_for_order(merchant_id, order_id) == expected
    refunds = [r for r in history.values() if isinstance(r, RefundResult)]
    for paid in {r.payment_id for r in refunds} | {"pay_3"}:
        of_it = [r for r in refunds if r.payment_id == paid]
        assert results.refunds_of(paid) == [int(r.id[3:]) for r in of_it]
        given_back = sum(r.amount for r in of_it if r.status == Status.SUCCEEDED)
        assert results.amount_refunded(paid) == given_back
    made = [p for p in payments if p.failure_code is None]
    assert results.payments_made() == (
        [int(p.id[4:]) for p in made],
        [p.merchant_id for p in made],
        [p.created_s for p in made],
    )


@given(histories())
def test_the_store_returns_exactly_what_was_put(history: dict[int, Durable]) -> None:
    check_holds(stored(history), history)


@given(histories())
def test_a_snapshot_round_trip_returns_the_same(history: dict[int, Durable]) -> None:
    encoded = stored(history).to_snapshot()
    restored = Results.from_snapshot(encoded)
    check_holds(restored, history)
    assert restored.to_snapshot() == encoded


def test_none_and_empty_texts_stay_apart() -> None:
    empty = PaymentResult("pay_1", "shop", "", "p", 1, "EUR", Status.SUCCEEDED, None, 0, "", {})
    none = empty._replace(id="pay_2", description=None, metadata=None)
    results = stored({1: empty, 2: none})
    got_empty, got_none = results.payment(1), results.payment(2)
    assert got_empty is not None
    assert got_none is not None
    assert (got_empty.description, got_empty.metadata) == ("", {})
    assert (got_none.description, got_none.metadata) == (None, None)


def test_every_failure_code_is_kept() -> None:
    history: dict[int, Durable] = {
        lsn: PaymentResult(payment_id(lsn), "m", "o", "p", 1, "EUR", Status.FAILED, failure, 0)
        for lsn, failure in enumerate(Failure, start=1)
    }
    check_holds(Results.from_snapshot(stored(history).to_snapshot()), history)


def test_a_bad_result_is_refused_and_changes_nothing() -> None:
    paid = PaymentResult("pay_5", "shop", "o", "p", 1, "EUR", Status.SUCCEEDED, None, 0)
    results = stored({5: paid})
    with pytest.raises(ValueError, match="result LSN 5 is not above every held one's"):
        results.add(5, paid)
    with pytest.raises(ValueError, match="without refunds"):
        results.add(6, paid._replace(id="pay_6", amount_refunded=1))
    unknown: Any = "no_such_failure"
    with pytest.raises(ValueError, match="unknown failure code"):
        results.add(7, paid._replace(id="pay_7", failure_code=unknown))
    assert list(results.items()) == [(5, paid)]


def test_a_number_no_lsn_can_be_names_no_result() -> None:
    paid = PaymentResult("pay_5", "shop", "o", "p", 1, "EUR", Status.SUCCEEDED, None, 0)
    results = stored({5: paid})
    for lsn in (-1, 2**64, 2**70):
        assert (results.get(lsn), results.merchant_of(lsn), lsn in results) == (None, None, False)
        assert (results.payment(lsn), results.refund(lsn)) == (None, None)


def test_an_id_with_a_huge_number_names_no_payment(tmp_path: Path) -> None:
    async def main() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            await DEMO.set_up(engine, payers=1, balance=BALANCE)
            assert engine.payment(payment_id(2**64)) is None
            assert engine.event(2**64) is None
            assert engine.refund_lsns(payment_id(2**64)) == []

    asyncio.run(main())


def test_a_damaged_snapshot_is_refused() -> None:
    paid = PaymentResult("pay_5", "shop", "o", "p", 1, "EUR", Status.SUCCEEDED, None, 0)
    encoded = bytearray(stored({5: paid}).to_snapshot())
    encoded[len(encoded) // 2] ^= 1
    with pytest.raises(ValueError, match="not a valid results snapshot"):
        Results.from_snapshot(bytes(encoded))


def snapshot_results(directory: Path) -> dict[int, Durable]:
    """The results the directory's one snapshot restores, read from the snapshot alone (an
    engine falls back to the log when a snapshot does not load)."""
    [(lsn, path)] = snapshots.snapshot_paths(directory)
    state = State(DEMO.config(), idempotency_capacity=1024)
    recovery.restore(state, lsn, snapshots.read_snapshot(path, lsn))
    return dict(state.results.items())


def events_of(engine: Engine) -> dict[str, list[int]]:
    """The outbox's event LSNs of each merchant."""
    return {merchant: list(lsns) for merchant, lsns in engine.outbox.events_of.items()}


async def history(engine: Engine) -> dict[int, Durable]:
    """A described payment with metadata, a declined one, refunds of the first (one declined)."""
    await DEMO.set_up(engine, payers=2, balance=BALANCE)
    body = {
        "merchant_id": DEMO.merchant_id,
        "order_id": "order-1",
        "payer": DEMO.payer(0),
        "amount": 300,
        "currency": DEMO.currency,
        "description": "thé ✓",
        "metadata": {"clé": "valeur", "empty": ""},
    }
    paid = await engine.submit(DEMO.sign(PAYMENTS_PATH, orjson.dumps(body)))
    declined = await engine.submit(DEMO.payment("order-2", DEMO.payer(1), BALANCE + 1))
    assert isinstance(paid, PaymentResult)
    assert isinstance(declined, PaymentResult)
    assert (paid.description, paid.metadata) == ("thé ✓", {"clé": "valeur", "empty": ""})
    for amount in (100, 250, 50):
        await engine.submit(DEMO.refund(paid.id, amount))
    return dict(engine.results.items())


def test_a_snapshot_with_the_results_as_json_rows_still_loads(tmp_path: Path) -> None:
    async def main() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            made = await history(engine)
        rewrite_snapshot_with_json_results(tmp_path)
        assert snapshot_results(tmp_path) == made
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            assert dict(engine.results.items()) == made
            [paid_lsn, *_] = engine.results.payments_for_order(DEMO.merchant_id, "order-1")
            paid = engine.payment(payment_id(paid_lsn))
            assert paid is not None
            assert paid.amount_refunded == 150
            refunds = [made[lsn] for lsn in engine.refund_lsns(paid.id)]
            assert [(r.amount, r.status) for r in refunds] == [
                (100, Status.SUCCEEDED),
                (250, Status.FAILED),
                (50, Status.SUCCEEDED),
            ]
            assert events_of(engine) == {DEMO.merchant_id: list(made)}
            engine.check_invariants()

    asyncio.run(main())


def test_an_engine_snapshot_keeps_the_results_natively(tmp_path: Path) -> None:
    async def main() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            made = await history(engine)
            events = events_of(engine)
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            assert dict(engine.results.items()) == made
            assert events_of(engine) == events
            engine.check_invariants()

    asyncio.run(main())


def test_a_snapshot_written_with_the_results_as_json_rows_loads(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    shutil.copytree(JSON_RESULTS, directory)
    for path in (directory, directory / "wal", directory / "snapshots"):
        path.chmod(0o700)
    at = JSON_RESULTS_CREATED_S
    paid = PaymentResult(
        "pay_8",
        DEMO.merchant_id,
        "order-1",
        DEMO.payer(0),
        300,
        "EUR",
        Status.SUCCEEDED,
        None,
        at,
        "thé ✓",
        {"clé": "valeur", "empty": ""},
    )
    declined = PaymentResult(
        "pay_9", "demo", "order-2", DEMO.payer(1), BALANCE + 1, "EUR", Status.FAILED,
        Failure.INSUFFICIENT_FUNDS, at,
    )  # fmt: skip
    refunds = [
        RefundResult("re_10", "pay_8", "demo", 100, "EUR", Status.SUCCEEDED, None, at),
        RefundResult(
            "re_11", "pay_8", "demo", 250, "EUR", Status.FAILED, Failure.REFUND_EXCEEDS_PAYMENT, at
        ),
        RefundResult("re_12", "pay_8", "demo", 50, "EUR", Status.SUCCEEDED, None, at),
    ]

    made = dict(zip(range(8, 13), [paid, declined, *refunds], strict=True))
    assert snapshot_results(directory) == made

    async def main() -> None:
        async with Engine.open(directory, config=DEMO.config()) as engine:
            assert engine.lsn_next == 13
            assert dict(engine.results.items()) == made
            assert engine.payments_for_order("demo", "order-1") == [
                paid._replace(amount_refunded=150)
            ]
            assert engine.refund_lsns("pay_8") == [10, 11, 12]
            assert events_of(engine) == {"demo": [8, 9, 10, 11, 12]}
            again = await engine.submit(DEMO.payment("order-2", DEMO.payer(1), BALANCE + 1))
            assert again == declined._replace(replayed=True)
            assert engine.balance(DEMO.payer(1)) == ("EUR", BALANCE)
            engine.check_invariants()

    asyncio.run(main())
