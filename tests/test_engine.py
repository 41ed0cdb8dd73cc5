"""The engine in-process: the pipeline's answers, idempotency, refunds, overload, fail-stop and
recovery, on real files with real fsync."""

import asyncio
import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from instapay import cli
from instapay.demo import DemoMerchant, grant_mandates
from instapay.engine import Engine
from instapay.model import (
    EngineConfig,
    EngineFailedError,
    Failure,
    Merchant,
    Overloaded,
    PaymentResult,
    RefundResult,
    RequestError,
    Status,
)
from instapay.signing import SignedRequest
from instapay.storage import snapshots, wal
from instapay.storage.datadir import DataDirectoryInUseError

T = TypeVar("T")
DEMO = DemoMerchant()
BALANCE = 10_000


def run(directory: Path, scenario: Callable[[Engine], Awaitable[T]], **options: int) -> T:
    """Opens the engine on `directory` (funding the demo accounts the first time), runs
    `scenario`, closes it."""

    async def main() -> T:
        fresh = not (directory / "wal").exists()
        async with Engine.open(directory, config=DEMO.config(), **options) as engine:  # type: ignore[arg-type]
            if fresh:
                await DEMO.set_up(engine, payers=3, balance=BALANCE)
            return await scenario(engine)

    return asyncio.run(main())


async def pay(engine: Engine, order_id: str, amount: int = 100, payer: int = 0) -> PaymentResult:
    result = await engine.submit(DEMO.payment(order_id, DEMO.payer(payer), amount))
    assert isinstance(result, PaymentResult)
    return result


def test_a_payment_moves_money_and_is_readable(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        result = await pay(engine, "order-1", 1999)
        assert (result.status, result.amount, result.replayed) == (Status.SUCCEEDED, 1999, False)
        assert engine.balance(DEMO.payer(0)) == ("EUR", BALANCE - 1999)
        assert engine.balance(DEMO.settlement_account) == ("EUR", 1999)
        assert engine.payment(result.id) == result

    run(tmp_path, scenario)


def test_a_decline_is_a_stored_result_replayed_like_a_success(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        declined = await pay(engine, "too-much", BALANCE + 1)
        assert (declined.status, declined.failure_code) == (
            Status.FAILED,
            Failure.INSUFFICIENT_FUNDS,
        )
        again = await pay(engine, "too-much", BALANCE + 1)
        assert again.replayed
        assert again.id == declined.id
        assert engine.balance(DEMO.payer(0)) == ("EUR", BALANCE)

    run(tmp_path, scenario)


def test_a_retry_gets_the_stored_result_and_is_never_charged_twice(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        first = await pay(engine, "order-1")
        retry = await pay(engine, "order-1")
        assert retry.replayed
        assert retry.id == first.id
        assert engine.balance(DEMO.payer(0)) == ("EUR", BALANCE - 100)

    run(tmp_path, scenario)


def test_the_same_order_with_other_content_is_refused(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        await pay(engine, "order-1", 100)
        with pytest.raises(RequestError) as refused:
            await pay(engine, "order-1", 200)
        assert (refused.value.code, refused.value.http_status) == ("idempotency_key_reused", 422)

    run(tmp_path, scenario)


def test_duplicates_in_flight_wait_for_the_first_result(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        request = DEMO.payment("order-1", DEMO.payer(0), 100)
        answers = await engine.submit_many([request] * 5)
        assert all(isinstance(a, PaymentResult) for a in answers)
        ids = {a.id for a in answers if isinstance(a, PaymentResult)}
        replayed = [a.replayed for a in answers if isinstance(a, PaymentResult)]
        assert len(ids) == 1
        assert replayed == [False, True, True, True, True]
        assert engine.balance(DEMO.payer(0)) == ("EUR", BALANCE - 100)

    run(tmp_path, scenario)


def test_an_idempotency_key_scopes_retries_instead_of_the_order(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        def attempt(key: str) -> SignedRequest:
            return DEMO.payment("order-1", DEMO.payer(0), 100, idempotency_key=key)

        first = await engine.submit(attempt("attempt-1"))
        second = await engine.submit(attempt("attempt-2"))
        again = await engine.submit(attempt("attempt-1"))
        assert first.id != second.id
        assert again.id == first.id
        assert again.replayed
        with pytest.raises(RequestError, match="Idempotency-Key"):
            await engine.submit(attempt("k" * 256))

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    ("make_request", "code", "http_status"),
    [
        (lambda: SignedRequest(None, "POST", "/v1/payments", b"{}"), "signature_malformed", 401),
        (
            lambda: DemoMerchant(secret=b"wrong" * 8).payment("o", "payer-0", 1),
            "signature_mismatch",
            401,
        ),
        (lambda: DemoMerchant(kid="other.k1").payment("o", "payer-0", 1), "unknown_key", 401),
        (lambda: DEMO.sign("/v1/payments", b'{"amount": 1.5}'), "invalid_request", 400),
        (lambda: DEMO.sign("/v1/payments", b"\xff\xfe"), "invalid_request", 400),
        (lambda: DEMO.sign("/v1/elsewhere", b"{}"), "not_found", 404),
        (
            lambda: DemoMerchant(merchant_id="someone-else", secret=DEMO.secret).payment(
                "o", "payer-0", 1
            ),
            "merchant_mismatch",
            403,
        ),
        (lambda: DEMO.refund("pay_999"), "not_found", 404),
    ],
)
def test_bad_requests_are_refused_with_a_code_and_change_nothing(
    tmp_path: Path, make_request: Callable[[], SignedRequest], code: str, http_status: int
) -> None:
    async def scenario(engine: Engine) -> None:
        lsn_before = engine.lsn_next
        with pytest.raises(RequestError) as refused:
            await engine.submit(make_request())
        assert (refused.value.code, refused.value.http_status) == (code, http_status)
        assert engine.lsn_next == lsn_before, "nothing was logged"
        assert (await pay(engine, "still-working")).status == Status.SUCCEEDED

    run(tmp_path, scenario)


def test_refunds_are_partial_or_full_and_never_exceed_the_payment(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        payment = await pay(engine, "order-1", 1000)
        partial = await engine.submit(DEMO.refund(payment.id, 300))
        rest = await engine.submit(DEMO.refund(payment.id))
        too_much = await engine.submit(DEMO.refund(payment.id, 1))
        assert isinstance(partial, RefundResult)
        assert isinstance(rest, RefundResult)
        assert (partial.amount, rest.amount) == (300, 700)
        assert isinstance(too_much, RefundResult)
        assert too_much.failure_code == Failure.REFUND_EXCEEDS_PAYMENT
        assert engine.balance(DEMO.payer(0)) == ("EUR", BALANCE)

    run(tmp_path, scenario)


def test_a_full_queue_raises_overloaded(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        requests = [DEMO.payment(f"o-{n}", DEMO.payer(0), 1) for n in range(40)]
        answers = await engine.submit_many(requests)
        overloaded = [a for a in answers if isinstance(a, Overloaded)]
        assert overloaded, "more requests than the queue holds"
        assert all(isinstance(a, PaymentResult) for a in answers if a not in overloaded)

    run(tmp_path, scenario, batch_size_max=4, queue_depth_max=8)


def test_a_failed_write_stops_the_engine_and_acknowledges_nothing_after(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        await pay(engine, "before")
        writer = engine._writer()
        os.close(writer.fd)  # the next write fails with EBADF, as a dying disk would fail it
        with pytest.raises(EngineFailedError):
            await pay(engine, "lost")
        with pytest.raises(EngineFailedError):
            await pay(engine, "after")
        writer.fd = os.open(os.devnull, os.O_WRONLY)  # let close() release something valid

    run(tmp_path, scenario)
    payments = run(tmp_path, lambda engine: _found(engine, ["before", "lost", "after"]))
    assert payments == {"before": True, "lost": False, "after": False}


async def _found(engine: Engine, order_ids: list[str]) -> dict[str, bool]:
    orders = {
        result.order_id for result in engine.results.values() if isinstance(result, PaymentResult)
    }
    return {order_id: order_id in orders for order_id in order_ids}


def test_state_survives_a_restart_through_snapshot_and_log(tmp_path: Path) -> None:
    first = run(tmp_path, lambda engine: pay(engine, "order-1", 250))

    async def after_restart(engine: Engine) -> None:
        assert engine.payment(first.id) == first
        assert engine.balance(DEMO.payer(0)) == ("EUR", BALANCE - 250)
        retry = await pay(engine, "order-1", 250)
        assert retry.replayed
        assert retry.id == first.id

    run(tmp_path, after_restart)


def test_a_corrupt_newest_snapshot_falls_back_to_the_previous_and_the_log(tmp_path: Path) -> None:
    run(tmp_path, lambda engine: pay(engine, "order-1", 100))
    run(tmp_path, lambda engine: pay(engine, "order-2", 100))
    newest = snapshots.snapshot_paths(tmp_path)[0][1]
    newest.write_bytes(newest.read_bytes()[:-1])

    async def check(engine: Engine) -> None:
        assert engine.balance(DEMO.payer(0)) == ("EUR", BALANCE - 200)
        assert (await pay(engine, "order-2", 100)).replayed

    run(tmp_path, check)


def test_wal_verify_and_dump_describe_a_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(tmp_path, lambda engine: pay(engine, "order-1", 100))
    assert cli.main(["wal", "verify", str(tmp_path)]) == 0
    report = capsys.readouterr().out
    assert "snapshot-" in report
    assert "ok" in report
    assert cli.main(["wal", "dump", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("1 OPEN_ACCOUNT")
    assert any(" PAYMENT_WITH_CONSENT " in line and '"order-1"' in line for line in lines)


def test_wal_verify_names_the_damage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(tmp_path, lambda engine: pay(engine, "order-1", 100))
    segment = wal.segment_paths(tmp_path / "wal")[0][1]
    data = bytearray(segment.read_bytes())
    data[wal.SEGMENT_HEADER.size + 25] ^= 1
    segment.write_bytes(bytes(data))
    for snapshot in snapshots.snapshot_paths(tmp_path):
        snapshot[1].unlink()
    assert cli.main(["wal", "verify", str(tmp_path)]) == 1
    assert f"CORRUPT: {segment}: checksum mismatch at byte offset 16" in capsys.readouterr().out


def test_a_caller_that_stops_waiting_does_not_disturb_the_engine(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        request = DEMO.payment("order-1", DEMO.payer(0), 100)
        first = asyncio.ensure_future(engine.submit(request))
        retry = asyncio.ensure_future(engine.submit(request))
        await asyncio.sleep(0)
        first.cancel()
        answer = await retry
        assert answer.replayed, "the retry waited for the first, which was still applied"
        assert engine.balance(DEMO.payer(0)) == ("EUR", BALANCE - 100)
        assert (await pay(engine, "order-2")).status == Status.SUCCEEDED

    run(tmp_path, scenario)


def test_periodic_snapshots_let_old_segments_go_and_recovery_still_adds_up(tmp_path: Path) -> None:
    async def many_payments(engine: Engine) -> None:
        for batch in range(10):
            await engine.submit_many(
                [DEMO.payment(f"o-{batch}-{n}", DEMO.payer(n % 3), 1) for n in range(30)]
            )

    run(tmp_path, many_payments, snapshot_every_records=50, segment_bytes_max=2000)
    assert len(snapshots.snapshot_paths(tmp_path)) == 2
    first_segment_lsn = wal.segment_paths(tmp_path / "wal")[0][0]
    assert first_segment_lsn > 1, "segments before the older snapshot were deleted"

    async def check(engine: Engine) -> None:
        balances = [engine.balance(DEMO.payer(n)) for n in range(3)]
        assert sum(BALANCE - balance[1] for balance in balances if balance) == 300
        assert (await pay(engine, "o-9-29", 1, payer=29 % 3)).replayed

    run(tmp_path, check)


def test_a_data_directory_takes_one_engine_at_a_time(tmp_path: Path) -> None:
    async def scenario(engine: Engine) -> None:
        with pytest.raises(DataDirectoryInUseError, match="in use by another engine"):
            async with Engine.open(tmp_path, config=DEMO.config()):
                pass
        assert (await pay(engine, "still-mine")).status == Status.SUCCEEDED

    run(tmp_path, scenario)
    run(tmp_path, lambda engine: pay(engine, "after-release"))


def test_the_longest_ids_and_keys_are_taken(tmp_path: Path) -> None:
    """Ids and keys of 255 characters each: the engine's scoped idempotency keys are longer
    than any one of them, and must still fit the index."""
    longest = DemoMerchant(merchant_id="m" * 255, kid="k" * 255, secret=DEMO.secret)
    merchant = Merchant(longest.merchant_id, "settles", {longest.kid: longest.secret})

    async def main() -> None:
        async with Engine.open(tmp_path, config=EngineConfig((merchant,))) as engine:
            for account in ("settles", "p" * 255):
                await engine.open_account(account, "EUR")
            await engine.deposit("p" * 255, 100, "EUR")
            await grant_mandates(engine, ["p" * 255], longest.merchant_id)
            key = "i" * 255
            request = longest.payment("o" * 255, "p" * 255, 10, idempotency_key=key)
            paid = await engine.submit(request)
            assert paid.status == Status.SUCCEEDED
            assert (await engine.submit(request)).replayed
            refunded = await engine.submit(longest.refund(paid.id, 5, idempotency_key=key))
            assert (refunded.status, refunded.amount) == (Status.SUCCEEDED, 5)
            again = await engine.submit(longest.refund(paid.id, 5, idempotency_key=key))
            assert (again.id, again.replayed) == (refunded.id, True)

    asyncio.run(main())


def test_ids_and_keys_with_lone_surrogates_are_refused_and_the_engine_keeps_running(
    tmp_path: Path,
) -> None:
    """A str the native id rule cannot take (a lone surrogate, as an HTTP layer decoding bytes
    with surrogateescape yields) is an invalid id, never an exception that stops the engine."""
    surrogate = "\udcff"

    async def scenario(engine: Engine) -> None:
        with pytest.raises(RequestError, match="account id"):
            await engine.open_account(surrogate, "EUR")
        with pytest.raises(RequestError, match="currency"):
            await engine.open_account("fresh", surrogate * 3)
        with pytest.raises(RequestError, match="Idempotency-Key"):
            await engine.deposit(DEMO.payer(0), 1, "EUR", idempotency_key=surrogate)
        paid = DEMO.payment("surrogate-key", DEMO.payer(0), 1)
        with pytest.raises(RequestError, match="Idempotency-Key"):
            await engine.submit(dataclasses.replace(paid, idempotency_key=surrogate))
        assert engine.failed is None
        assert (await pay(engine, "still-working")).status == Status.SUCCEEDED

    run(tmp_path, scenario)
