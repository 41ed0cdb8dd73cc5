"""Keyed refunds and admin money movements in the engine, and the records older logs hold: a
keyless refund and a keyless deposit written before keys were required or honoured still replay."""

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from instapay.demo import DemoMerchant
from instapay.engine import Engine, RecordType, records
from instapay.engine.records import AccountRecord
from instapay.model import AdminResult, RefundResult, RequestError, Status
from instapay.storage import wal

DEMO = DemoMerchant()
BALANCE = 1000


def test_a_keyless_refund_record_of_an_older_log_still_replays(tmp_path: Path) -> None:
    async def pay() -> tuple[str, int]:
        async with Engine.open(tmp_path, config=DEMO.config(), snapshot_on_close=False) as engine:
            await DEMO.set_up(engine, payers=1, balance=BALANCE)
            paid = await engine.submit(DEMO.payment("old-refund", DEMO.payer(0), 500))
            return paid.id, engine.lsn_next

    paid_id, lsn = asyncio.run(pay())
    # As the engine wrote a refund sent without a key: key None, its own fresh scope.
    old = [paid_id, DEMO.merchant_id, 200, None, int(time.time()), None, "00" * 32, 200, None]
    writer = wal.WalWriter(
        tmp_path, lsn, sync=True, segment_bytes_max=wal.SEGMENT_BYTES_MAX_DEFAULT
    )
    writer.append([RecordType.REFUND], [orjson.dumps(old)])
    writer.close()

    async def recover() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            refund = engine.results[lsn]
            assert isinstance(refund, RefundResult)
            assert (refund.amount, refund.status) == (200, Status.SUCCEEDED)
            assert engine.balance(DEMO.payer(0)) == ("EUR", BALANCE - 500 + 200)
            keyless = DEMO.sign(f"/v1/payments/{paid_id}/refunds", b"")
            with pytest.raises(RequestError) as refused:
                await engine.submit(keyless)
            assert (refused.value.code, refused.value.http_status) == (
                "idempotency_key_required",
                400,
            )
            assert engine.lsn_next == lsn + 1, "the refused refund logged nothing"

    asyncio.run(recover())


def test_keyed_deposits_replay_from_the_log_and_keyless_ones_stay_as_they_were(
    tmp_path: Path,
) -> None:
    async def deposit() -> AdminResult:
        async with Engine.open(tmp_path, config=DEMO.config(), snapshot_on_close=False) as engine:
            await DEMO.set_up(engine, payers=1, balance=BALANCE)  # keyless deposits
            return await engine.deposit(DEMO.payer(0), 5, "EUR", idempotency_key="top-up-1")

    first = asyncio.run(deposit())
    assert (first.balance, first.replayed) == (BALANCE + 5, False)

    async def recover() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            again = await engine.deposit(DEMO.payer(0), 5, "EUR", idempotency_key="top-up-1")
            assert (again.balance, again.replayed) == (BALANCE + 5, True)
            with pytest.raises(RequestError) as reused:
                await engine.withdraw(DEMO.payer(0), 5, "EUR", idempotency_key="top-up-1")
            assert reused.value.code == "idempotency_key_reused"
            keyless = await engine.deposit(DEMO.payer(0), 5, "EUR")
            assert (keyless.balance, keyless.replayed) == (BALANCE + 10, False)

    asyncio.run(recover())
    logged = [
        records.decode(record.type, record.payload)
        for batch in wal.replay(tmp_path, 0)
        for record in batch
    ]
    deposits = [
        isinstance(record, AccountRecord) and record.idempotency is not None
        for kind, record in logged
        if kind == RecordType.DEPOSIT
    ]
    assert deposits == [False, True, False], "only the keyed deposit carries its key"


@pytest.mark.parametrize("key", ["", "has space", "k" * 256])
def test_an_admin_key_outside_the_id_rule_is_refused(tmp_path: Path, key: str) -> None:
    async def main() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            await DEMO.set_up(engine, payers=1, balance=BALANCE)
            with pytest.raises(RequestError, match="Idempotency-Key"):
                await engine.deposit(DEMO.payer(0), 5, "EUR", idempotency_key=key)
            assert engine.balance(DEMO.payer(0)) == ("EUR", BALANCE)

    asyncio.run(main())


def test_concurrent_deposits_under_one_key_move_money_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            await DEMO.set_up(engine, payers=1, balance=BALANCE)
            same = [
                engine.deposit(DEMO.payer(0), 7, "EUR", idempotency_key="burst") for _ in range(20)
            ]
            results = await asyncio.gather(*same)
            assert [result.replayed for result in results].count(False) == 1
            assert {result.balance for result in results} == {BALANCE + 7}
            assert engine.balance(DEMO.payer(0)) == ("EUR", BALANCE + 7)

    asyncio.run(main())
