"""Typed, versioned log records: what the engine writes (version 1, MessagePack arrays of named
fields), what it still reads (version 0, the JSON records written before, kept as a fixture
written by that code), and the one handler table that applies them."""

import asyncio
import shutil
from pathlib import Path

import msgspec
import pytest

from instapay import cli
from instapay.demo import DemoMerchant
from instapay.engine import Engine, handlers, records
from instapay.engine.records import (
    RECORD_FIELDS,
    RECORDS,
    SECRET_REDACTED,
    KeyRevoked,
    PaymentRecord,
    RecordDecodeError,
    RecordType,
    logged_type,
)
from instapay.model import Failure, Merchant, RequestError, Status
from instapay.storage import wal

DEMO = DemoMerchant()
# Written by the engine before typed records (commit 04b6b50): every record type it writes,
# keyed and keyless deposits and withdrawals, a declined payment and withdrawal, a refund, a
# merchant with a key added and revoked and its webhook secret rotated, a delivery attempt and a
# redelivery, mandates granted and revoked. No snapshot: recovery replays all of it.
JSON_LOG = Path(__file__).parent / "fixtures" / "json-records"
JSON_LOG_LSN_LAST = 25


def json_log(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    shutil.copytree(JSON_LOG, directory)
    for path in (directory, directory / "wal"):
        path.chmod(0o700)
    return directory


def logged_records(directory: Path) -> list[tuple[int, RecordType, records.Record]]:
    """(logged type, operation, record) of every record in the log."""
    return [
        (record.type, *records.decode(record.type, record.payload))
        for batch in wal.replay(directory, 0)
        for record in batch
    ]


async def state_of_the_json_log(engine: Engine) -> None:
    """What the fixture's records add up to (the engine that wrote them reported the same)."""
    assert engine.lsn_next == JSON_LOG_LSN_LAST + 1
    assert engine.balance(DEMO.payer(0)) == ("EUR", 1000 - 1 - 10 + 4)
    assert engine.balance(DEMO.payer(1)) == ("EUR", 1000 + 50 - 20)
    assert engine.balance(DEMO.settlement_account) == ("EUR", 10 - 4)
    paid, declined, refund = (engine.results[lsn] for lsn in (12, 13, 14))
    assert (paid.status, declined.failure_code) == (Status.SUCCEEDED, Failure.INSUFFICIENT_FUNDS)
    assert (refund.id, refund.amount) == ("re_14", 4)
    shop = engine.merchants.get("shop")
    assert shop is not None
    assert (len(shop.keys), shop.previous_webhook_secret) == (1, None)
    assert shop.webhook_secret is not None
    mandates = engine.mandates_of(DEMO.payer(1)) or []
    assert [(m.id, m.revoked_s is not None) for m in mandates][1:] == [
        ("mdt_23", True),
        ("mdt_25", False),
    ]
    assert mandates[1].terms.amount_max_per_day == 30
    delivery = engine.outbox.delivery_json(12)
    assert (delivery["status"], len(delivery["attempts"])) == ("pending", 1)
    assert engine.outbox.round_of(12) == 1, "the redelivery started a new round"


def test_a_log_of_json_records_written_before_typed_records_replays(tmp_path: Path) -> None:
    directory = json_log(tmp_path)
    versions = {logged >> 8 for logged, _, _ in logged_records(directory)}
    assert versions == {records.VERSION_LEGACY_JSON}

    async def main() -> None:
        async with Engine.open(directory, config=DEMO.config(), snapshot_on_close=False) as engine:
            await state_of_the_json_log(engine)
            paid = await engine.submit(DEMO.payment("after-upgrade", DEMO.payer(0), 3))
            assert paid.status == Status.SUCCEEDED
        # The log now holds both versions; replaying it all gives the same state.
        async with Engine.open(directory, config=DEMO.config()) as engine:
            assert engine.balance(DEMO.payer(0)) == ("EUR", 1000 - 1 - 10 + 4 - 3)
            assert engine.lsn_next == JSON_LOG_LSN_LAST + 2

    asyncio.run(main())
    [(logged, kind, record)] = logged_records(directory)[JSON_LOG_LSN_LAST:]
    assert (kind, logged) == (RecordType.PAYMENT_WITH_CONSENT, logged_type(kind))
    assert isinstance(record, PaymentRecord)
    assert (record.order_id, record.amount) == ("after-upgrade", 3)


def test_wal_dump_names_the_fields_of_json_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["wal", "dump", str(json_log(tmp_path))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == JSON_LOG_LSN_LAST
    printed = {}
    for line in lines:
        _, name, fields = line.split(" ", 2)
        printed[name] = msgspec.json.decode(fields)
    assert set(printed) == {kind.name for kind in RecordType} - {RecordType.PAYMENT.name}
    for name, fields in printed.items():
        assert tuple(fields) == RECORD_FIELDS[RecordType[name]], name
    assert printed["KEY_ADDED"]["secret"] == SECRET_REDACTED
    assert printed["WITHDRAW"]["failure_code"] == "insufficient_funds"


def test_the_engine_writes_every_record_as_version_1(tmp_path: Path) -> None:
    """Each record as a MessagePack array of its fields, under its operation's version-1 type."""

    async def main() -> None:
        async with Engine.open(tmp_path, config=DEMO.config(), snapshot_on_close=False) as engine:
            await DEMO.set_up(engine, payers=1, balance=100)
            await engine.deposit(DEMO.payer(0), 5, "EUR", idempotency_key="top-up-1")
            paid = await engine.submit(DEMO.payment("o-1", DEMO.payer(0), 10))
            await engine.submit(DEMO.refund(paid.id, 4))

    asyncio.run(main())
    logged = logged_records(tmp_path)
    assert {logged >> 8 for logged, _, _ in logged} == {records.VERSION_CURRENT}
    for entry in wal.replay(tmp_path, 0):
        for record in entry:
            kind, decoded = records.decode(record.type, record.payload)
            array = msgspec.msgpack.decode(record.payload)
            assert len(array) == len(RECORD_FIELDS[kind])
            assert msgspec.msgpack.encode(decoded) == record.payload
    *_, (_, _, refund) = logged
    assert isinstance(refund, records.RefundRecord)
    assert (refund.amount_requested, refund.amount, refund.failure_code) == (4, 4, None)


def test_a_record_of_a_version_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    newer = records.VERSION_CURRENT + 1
    writer = wal.WalWriter(tmp_path, 1, sync=True, segment_bytes_max=wal.SEGMENT_BYTES_MAX_DEFAULT)
    writer.append([logged_type(RecordType.OPEN_ACCOUNT, newer)], [b"\x90"])
    writer.close()

    async def main() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()):
            pass

    with pytest.raises(RecordDecodeError, match=f"OPEN_ACCOUNT records of version {newer}"):
        asyncio.run(main())


def test_a_record_that_is_not_of_its_type_is_refused_with_its_name() -> None:
    payload = msgspec.msgpack.encode(["payer-0", "EUR", "ten", False, None, None])
    with pytest.raises(RecordDecodeError, match="a DEPOSIT record that does not decode"):
        records.decode(logged_type(RecordType.DEPOSIT), payload)


def test_every_record_type_has_one_definition_and_one_handler() -> None:
    assert set(RECORDS) == set(RecordType) == set(handlers.BY_KIND)
    assert len(handlers.BY_OP) == len({id(handler) for handler in handlers.BY_KIND.values()})


def test_a_control_op_is_submitted_as_its_record(tmp_path: Path) -> None:
    """`Engine.control`: what a route submits for an operation without a method of its own."""

    async def main() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            await engine.open_account("shop.settlement", "EUR")
            await engine.create_merchant("shop", "shop.settlement")
            kid, _ = await engine.add_key("shop")
            merchant = await engine.control(KeyRevoked("shop", kid))
            assert isinstance(merchant, Merchant)
            assert kid not in merchant.keys
            with pytest.raises(RequestError):
                await engine.control(KeyRevoked("shop", kid))

    asyncio.run(main())


def test_what_is_not_a_control_operation_is_refused_before_the_queue(tmp_path: Path) -> None:
    """A record without a handler of its own (a payment's) would stop the engine in a batch."""

    async def main() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            await DEMO.set_up(engine, payers=1, balance=100)
            payment = PaymentRecord(
                DEMO.merchant_id, "o-1", DEMO.payer(0), DEMO.settlement_account, 1, "EUR",
                None, None, 0, None, "00",
            )  # fmt: skip
            with pytest.raises(TypeError, match="PaymentRecord is not a control operation"):
                await engine.control(payment)
            assert engine.failed is None
            assert engine.balance(DEMO.payer(0)) == ("EUR", 100)

    asyncio.run(main())
