"""`instapay wal verify` and `wal dump`: refusals of what is no data directory, a dump read by
`head`, records printed with their field names."""

import asyncio
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from instapay import cli
from instapay.demo import DemoMerchant
from instapay.engine import RECORD_FIELDS, SECRET_REDACTED, Engine, RecordType
from instapay.model import PaymentResult
from instapay.outbox import DeliveryOutcome

DEMO = DemoMerchant()
WAL_ACTIONS = ["verify", "dump"]


def not_a_data_directory(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A path `wal` must refuse, and the reason it gives."""
    if case == "missing":
        return tmp_path / "nothing-here", "no such directory"
    if case == "file":
        (tmp_path / "a-file").write_text("not a data directory")
        return tmp_path / "a-file", "not a directory"
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", "not a data directory (no log segments, no snapshots)"


@pytest.mark.parametrize("action", WAL_ACTIONS)
@pytest.mark.parametrize("case", ["missing", "file", "empty"])
def test_wal_refuses_what_is_no_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str, case: str
) -> None:
    path, reason = not_a_data_directory(tmp_path, case)
    assert cli.main(["wal", action, str(path)]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"instapay wal {action}: {path}: {reason}\n")


def fill(directory: Path, payments: int) -> None:
    async def main() -> None:
        async with Engine.open(directory, config=DEMO.config()) as engine:
            await DEMO.set_up(engine, payers=1, balance=10**9)
            requests = [DEMO.payment(f"order-{n}", DEMO.payer(0), 1) for n in range(payments)]
            await engine.submit_many(requests)

    asyncio.run(main())


def test_wal_dump_read_by_head_stops_quietly(tmp_path: Path) -> None:
    """Far more output than a pipe holds, so the dump is still writing when head leaves."""
    fill(tmp_path, 2000)
    dump = [sys.executable, "-c", "from instapay.cli import main; raise SystemExit(main())"]
    command = f"{shlex.join([*dump, 'wal', 'dump', str(tmp_path)])} | head -n 3"
    finished = subprocess.run(  # noqa: S603 (bash, this interpreter, our own entry point)
        ["/bin/bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.stderr == ""
    assert len(finished.stdout.splitlines()) == 3
    assert finished.returncode == cli.EXIT_BROKEN_PIPE


def test_every_record_type_has_field_names() -> None:
    assert set(RECORD_FIELDS) == set(RecordType)


def every_record_type(directory: Path) -> None:
    async def main() -> None:
        async with Engine.open(directory, config=DEMO.config()) as engine:
            await DEMO.set_up(engine, payers=1, balance=1000)
            await engine.withdraw(DEMO.payer(0), 1, "EUR")
            paid = await engine.submit(DEMO.payment("order-1", DEMO.payer(0), 10))
            assert isinstance(paid, PaymentResult)
            await engine.submit(DEMO.refund(paid.id, 4))
            await engine.open_account("shop.settlement", "EUR")
            await engine.create_merchant("shop", "shop.settlement", "https://shop.example/h")
            kid, _ = await engine.add_key("shop")
            await engine.revoke_key("shop", kid)
            await engine.rotate_webhook_secret("shop")
            await engine.revoke_previous_webhook_secret("shop")
            lsn = int(paid.id.removeprefix("pay_"))
            await engine.record_deliveries([DeliveryOutcome(lsn, 5, "500", False, 60)])
            await engine.redeliver([lsn])
            mandate = await engine.grant_mandate(DEMO.payer(0), "shop", 10)
            await engine.revoke_mandate(DEMO.payer(0), mandate.id)

    asyncio.run(main())


def test_wal_dump_prints_each_record_by_field_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    every_record_type(tmp_path)
    assert cli.main(["wal", "dump", str(tmp_path)]) == 0
    printed: dict[str, dict[str, Any]] = {}
    for line in capsys.readouterr().out.splitlines():
        _, name, fields = line.split(" ", 2)
        printed[name] = orjson.loads(fields)
    # PAYMENT records (before consent) are only replayed now: nothing writes them any more.
    written = set(RecordType) - {RecordType.PAYMENT}
    assert set(printed) == {kind.name for kind in written}
    for kind in written - {RecordType.DELIVERIES}:
        assert tuple(printed[kind.name]) == RECORD_FIELDS[kind], kind.name
    payment = printed["PAYMENT_WITH_CONSENT"]
    assert (payment["order_id"], payment["payer"], payment["amount"]) == ("order-1", "payer-0", 10)
    assert payment["failure_code"] is None
    assert (printed["REFUND"]["amount_requested"], printed["REFUND"]["amount"]) == (4, 4)
    assert printed["WITHDRAW"] == {
        "account_id": "payer-0",
        "currency": "EUR",
        "amount": 1,
        "overdraft": False,
        "idempotency": None,  # sent without an Idempotency-Key
        "failure_code": None,
    }
    [outcome] = printed["DELIVERIES"]["outcomes"]
    assert outcome == {
        "event_lsn": printed["REDELIVERY"]["event_lsns"][0],
        "at_ms": 5,
        "outcome": "500",
        "delivered": False,
        "next_at_ms": 60,
        "round": 0,
    }
    assert printed["KEY_ADDED"]["secret"] == SECRET_REDACTED
    merchant = printed["MERCHANT_CREATED"]
    assert merchant["webhook_secret"] == SECRET_REDACTED
    assert set(merchant["keys"].values()) == {SECRET_REDACTED}
