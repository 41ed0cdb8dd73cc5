"""The issue-12 fixes attacked again for money safety and replay: consent decisions that must
come out the same after any recovery, and invariants that must catch a ledger broken by hand."""

import asyncio
import time
from pathlib import Path

import orjson

from instapay.engine import Engine, RecordType
from instapay.mandates import MandateGrant, MandateRevocation, mandate_id
from instapay.model import Failure
from servers import DEMO
from test_consent import opened_and_funded, write_log


def test_a_revoked_mandate_stays_revoked_after_a_snapshot_over_an_expired_one(
    tmp_path: Path,
) -> None:
    """payer-0's mandate for demo expired, a new one replaced it, and that one was revoked: no
    mandate allows demo to debit payer-0 (`mandate_missing`). A snapshot used to bring the
    expired one back as the payer's mandate, so the same payment was `mandate_expired` after a
    restart from it, and a crash after the snapshot left a log that no longer started (its
    replay gave another decline than the logged one)."""
    now_s = int(time.time())
    expired = MandateGrant("payer-0", DEMO.merchant_id, 100, None, now_s - 10, now_s - 20)
    replacing = MandateGrant("payer-0", DEMO.merchant_id, 100, None, None, now_s - 5)
    records = [
        *opened_and_funded("payer-0"),  # LSNs 1 to 3
        (RecordType.MANDATE_GRANTED, orjson.dumps(expired.record())),
        (RecordType.MANDATE_GRANTED, orjson.dumps(replacing.record())),
        (
            RecordType.MANDATE_REVOKED,
            orjson.dumps(MandateRevocation("payer-0", mandate_id(5), now_s - 1).record()),
        ),
    ]
    write_log(tmp_path, records)

    async def pay_after_a_snapshot() -> None:
        async with Engine.open(tmp_path, config=DEMO.config(), snapshot_on_close=False) as engine:
            engine.snapshot()
            declined = await engine.submit(DEMO.payment("o-1", "payer-0", 1))
            assert declined.failure_code == Failure.MANDATE_MISSING

    async def restart_from_the_snapshot() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            replayed = engine.payment("pay_7")
            assert replayed is not None
            assert replayed.failure_code == Failure.MANDATE_MISSING
            again = await engine.submit(DEMO.payment("o-2", "payer-0", 1))
            assert again.failure_code == Failure.MANDATE_MISSING
            assert engine.balance("payer-0") == ("EUR", 1000)

    asyncio.run(pay_after_a_snapshot())
    asyncio.run(restart_from_the_snapshot())
