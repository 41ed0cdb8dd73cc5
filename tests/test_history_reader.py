"""The history reader on databases written by hand to the schema (`tests/history_rows.py`):
pages, cursors, filters, the scan bound, merchants kept apart, read-only connections. The
same reads over a real engine's history: tests/test_history_reads.py."""

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from history_rows import HistoryRows
from instapay.model import Failure, PaymentResult, RefundResult, Status
from instapay.storage.history import history_path, reads
from instapay.storage.history.reads import (
    Cursors,
    HistoryQueryError,
    HistoryReader,
    HistoryUnavailableError,
    PaymentFilters,
)

T = TypeVar("T")


def read(path: Path, reading: Callable[[HistoryReader], Coroutine[Any, Any, T]]) -> T:
    reader = HistoryReader(path)
    try:
        return asyncio.run(reading(reader))
    finally:
        reader.close()


def lsns(payments: list[PaymentResult] | list[RefundResult]) -> list[int]:
    return [int(result.id.split("_")[1]) for result in payments]


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """Payments 1..20 of `shop` (odd ones failed, from bob), 21..25 of `other`."""
    path = history_path(tmp_path)
    rows = HistoryRows(path)
    for lsn in range(1, 21):
        failed = lsn % 2 == 1
        rows.payment(
            lsn,
            status="failed" if failed else "succeeded",
            payer="bob" if failed else "alice",
            created=1_700_000_000 + lsn,
        )
    for lsn in range(21, 26):
        rows.payment(lsn, "other", order_id="order-3")
    return path


def page_of(
    path: Path, limit: int, cursors: Cursors, filters: PaymentFilters | None = None
) -> reads.Page[PaymentResult]:
    return read(path, lambda r: r.payments("shop", limit, cursors, filters or PaymentFilters()))


def test_payments_come_newest_first_in_pages_both_ways(shop: Path) -> None:
    first = page_of(shop, 3, Cursors())
    assert (lsns(first.items), first.has_more) == ([20, 19, 18], True)
    older = page_of(shop, 3, Cursors(starting_after=18))
    assert (lsns(older.items), older.has_more) == ([17, 16, 15], True)
    newer = page_of(shop, 3, Cursors(ending_before=15))
    assert (lsns(newer.items), newer.has_more) == ([18, 17, 16], True)
    newest = page_of(shop, 3, Cursors(ending_before=18))
    assert (lsns(newest.items), newest.has_more) == ([20, 19], False)
    last = page_of(shop, 5, Cursors(starting_after=4))
    assert (lsns(last.items), last.has_more) == ([3, 2, 1], False)


def test_a_merchant_never_sees_nor_pages_from_another_merchants_payments(shop: Path) -> None:
    everything = page_of(shop, 100, Cursors())
    assert lsns(everything.items) == list(range(20, 0, -1))
    for cursors in (Cursors(starting_after=22), Cursors(ending_before=22)):
        with pytest.raises(HistoryQueryError) as refused:
            page_of(shop, 10, cursors)
        parameter = "starting_after" if cursors.starting_after else "ending_before"
        assert refused.value.parameter == parameter
        assert "pay_22" in str(refused.value)
    with pytest.raises(HistoryQueryError, match="pay_99"):
        page_of(shop, 10, Cursors(starting_after=99))
    assert read(shop, lambda r: r.payment("shop", 22)) is None
    assert read(shop, lambda r: r.payments_for_order("shop", "order-22")) == []
    found = page_of(shop, 10, Cursors(), PaymentFilters(order_id="order-3"))
    assert lsns(found.items) == [3], "the other merchant's payments of order-3 are not listed"


def test_both_cursors_at_once_are_refused() -> None:
    with pytest.raises(HistoryQueryError) as refused:
        Cursors(starting_after=1, ending_before=2)
    assert refused.value.parameter == "ending_before"


def test_filters_keep_what_matches_and_combine(shop: Path) -> None:
    failed = page_of(shop, 3, Cursors(), PaymentFilters(status=Status.FAILED))
    assert (lsns(failed.items), failed.has_more, failed.scanned_to) == ([19, 17, 15], True, None)
    alice = page_of(shop, 100, Cursors(starting_after=10), PaymentFilters(payer="alice"))
    assert lsns(alice.items) == [8, 6, 4, 2]
    window = PaymentFilters(created_gte=1_700_000_005, created_lt=1_700_000_009)
    assert lsns(page_of(shop, 100, Cursors(), window).items) == [8, 7, 6, 5]
    both = PaymentFilters(status=Status.SUCCEEDED, payer="bob")
    assert page_of(shop, 100, Cursors(), both).items == []
    injected = PaymentFilters(payer="alice'OR'1'='1")
    assert page_of(shop, 100, Cursors(), injected).items == []


def test_a_filtered_scan_stops_at_the_bound_and_says_where(
    shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reads, "SCANNED_ROWS_MAX", 6)
    rare = PaymentFilters(created_lt=1_700_000_003)  # payments 1 and 2 only
    first = page_of(shop, 10, Cursors(), rare)
    assert (first.items, first.has_more, first.scanned_to) == ([], True, 15)
    second = page_of(shop, 10, Cursors(starting_after=15), rare)
    assert (second.items, second.has_more, second.scanned_to) == ([], True, 9)
    third = page_of(shop, 10, Cursors(starting_after=9), rare)
    assert (third.items, third.has_more, third.scanned_to) == ([], True, 3)
    fourth = page_of(shop, 10, Cursors(starting_after=3), rare)
    assert (lsns(fourth.items), fourth.has_more, fourth.scanned_to) == ([2, 1], False, None)
    newer = page_of(shop, 10, Cursors(ending_before=2), PaymentFilters(status=Status.FAILED))
    assert (lsns(newer.items), newer.has_more, newer.scanned_to) == ([7, 5, 3], True, 8)
    unfiltered = page_of(shop, 10, Cursors())
    assert (len(unfiltered.items), unfiltered.scanned_to) == (10, None), "no scan: no bound"


def test_payments_by_id_and_order_are_the_merchants_with_their_fields(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    rows = HistoryRows(path)
    rows.payment(5, order_id="o", metadata='{"k":"v"}')
    rows.payment(7, order_id="o", status="failed")
    rows.refund(8, 5, amount=30)
    payment = read(path, lambda r: r.payment("shop", 5))
    assert payment is not None
    assert payment.to_json() == {
        "id": "pay_5",
        "object": "payment",
        "merchant_id": "shop",
        "order_id": "o",
        "payer": "alice",
        "amount": 100,
        "amount_refunded": 30,
        "currency": "EUR",
        "status": "succeeded",
        "failure_code": None,
        "created": 1_700_000_000,
        "description": "payment 5",
        "metadata": {"k": "v"},
    }
    assert read(path, lambda r: r.payment("other", 5)) is None
    ordered = read(path, lambda r: r.payments_for_order("shop", "o"))
    assert [(p.id, p.failure_code) for p in ordered] == [
        ("pay_5", None),
        ("pay_7", Failure.INSUFFICIENT_FUNDS),
    ]


def test_refunds_page_per_payment_and_merchant(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    rows = HistoryRows(path)
    rows.payment(1)
    rows.payment(2)
    for lsn in (3, 4, 6, 7):
        rows.refund(lsn, 1)
    rows.refund(5, 2)
    first = read(path, lambda r: r.refunds("shop", 1, 2, Cursors()))
    assert (lsns(first.items), first.has_more) == ([7, 6], True)
    rest = read(path, lambda r: r.refunds("shop", 1, 2, Cursors(starting_after=6)))
    assert (lsns(rest.items), rest.has_more) == ([4, 3], False)
    assert read(path, lambda r: r.refunds("other", 1, 10, Cursors())).items == []
    with pytest.raises(HistoryQueryError, match="starting_after: re_5"):
        read(path, lambda r: r.refunds("shop", 1, 2, Cursors(starting_after=5)))


def test_events_merge_payments_and_refunds_by_lsn_boundedly(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    rows = HistoryRows(path)
    rows.payment(1)
    rows.payment(2, "other")
    rows.refund(3, 1)
    rows.payment(4)
    rows.refund(5, 1)
    events, more = read(path, lambda r: r.events_after("shop", 0, 3))
    assert ([e.lsn for e in events], more) == ([1, 3, 4], True)
    assert events[0].result.to_json()["amount_refunded"] == 0, "the payment as it was made"
    events, more = read(path, lambda r: r.events_after("shop", 4, 3))
    assert ([e.lsn for e in events], more) == ([5], False)


def test_an_account_statement_comes_newest_first_with_balances(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    rows = HistoryRows(path)
    rows.account("alice", 1)
    rows.account("shop-settles", 2)
    rows.entry("alice", 3, "deposit", 500)
    rows.payment(4)
    rows.entry("alice", 4, "payment", -100)
    rows.entry("shop-settles", 4, "payment", 100)
    rows.refund(5, 4)
    rows.entry("alice", 5, "refund", 10)
    rows.entry("alice", 6, "withdrawal", -50)
    statement = read(path, lambda r: r.entries("alice", 3, Cursors()))
    assert statement.items == [
        reads.Entry(6, "withdrawal", -50, "EUR", 360, None),
        reads.Entry(5, "refund", 10, "EUR", 410, 1_700_000_100),
        reads.Entry(4, "payment", -100, "EUR", 400, 1_700_000_000),
    ]
    assert statement.has_more
    rest = read(path, lambda r: r.entries("alice", 3, Cursors(starting_after=4)))
    assert (rest.items, rest.has_more) == (
        [reads.Entry(3, "deposit", 500, "EUR", 500, None)],
        False,
    )
    assert read(path, lambda r: r.account_exists("shop-settles"))
    assert not read(path, lambda r: r.account_exists("nobody"))
    with pytest.raises(HistoryQueryError, match="ending_before: ent_4"):
        read(path, lambda r: r.entries("nobody", 3, Cursors(ending_before=4)))


def test_connections_are_read_only_and_see_later_commits(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    rows = HistoryRows(path)
    rows.payment(1)

    async def reading(reader: HistoryReader) -> None:
        assert await reader.payment("shop", 2) is None
        rows.payment(2)
        assert await reader.payment("shop", 2) is not None

    read(path, reading)
    connection = reads.connect_read_only(path)
    with pytest.raises(OSError, match="readonly"):
        connection.execute("DELETE FROM payments")
    connection.close()


def test_a_missing_database_is_unavailable_not_created(tmp_path: Path) -> None:
    path = history_path(tmp_path)
    with pytest.raises(HistoryUnavailableError, match="no history database"):
        read(path, lambda r: r.payment("shop", 1))
    assert not path.exists()


def test_ids_beyond_sqlites_integers_name_no_row_rather_than_raise(shop: Path) -> None:
    huge = 2**64 - 1  # the largest LSN an id can carry
    with pytest.raises(HistoryQueryError, match="starting_after"):
        page_of(shop, 10, Cursors(starting_after=huge))
    assert read(shop, lambda r: r.payment("shop", huge)) is None
    assert read(shop, lambda r: r.events_after("shop", huge, 10)) == ([], False)
    assert read(shop, lambda r: r.refunds("shop", huge, 10, Cursors())).items == []


def test_growing_scan_windows_answer_what_one_scan_of_all_would(
    shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filters = [
        PaymentFilters(status=Status.FAILED),
        PaymentFilters(payer="alice"),
        PaymentFilters(created_lt=1_700_000_003),
        PaymentFilters(created_gte=1_700_000_018),
    ]
    pages = [Cursors(), Cursors(starting_after=12), Cursors(ending_before=3)]
    whole = [page_of(shop, 3, c, f) for f in filters for c in pages]
    monkeypatch.setattr(reads, "SCAN_WINDOW_MIN", 2)
    monkeypatch.setattr(reads, "SCANNED_ROWS_MAX", 20)
    assert [page_of(shop, 3, c, f) for f in filters for c in pages] == whole
