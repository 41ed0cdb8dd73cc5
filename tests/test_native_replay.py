"""Recovery replays runs of payments and refunds natively (`recovery.replay_segment`,
`_core.replay_run`) and every other record by the Python path (`recovery.replay_records`): the
state either path rebuilds from the same log is the same, down to the idempotency keys and the
outbox, and a logged outcome the replay does not reach is refused in the same words."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from instapay import _core
from instapay.demo import DemoMerchant, grant_mandates
from instapay.engine import Engine, records, recovery
from instapay.engine.handlers import ReplayMismatchError
from instapay.engine.ops import ADMIN_TENANT
from instapay.engine.records import (
    AccountRecord,
    PaymentRecord,
    RecordType,
    RefundRecord,
    encode,
    logged_type,
)
from instapay.engine.state import State
from instapay.model import EngineConfig, Failure, Merchant, PaymentResult, Status
from instapay.outbox import DeliveryOutcome
from instapay.protocol import PAYMENTS_PATH
from instapay.signing import SignedRequest
from instapay.storage import wal

DEMO = DemoMerchant()
OTHER = DemoMerchant("other", "other.k1")
# Connections to the discard port are refused: deliveries fail and are logged (control records
# between the payments), and their retries stay pending.
WEBHOOK_URL = "http://127.0.0.1:9/hook"
CAPACITY = 1000
# Small segments: the log spans several, and runs start and end at their boundaries.
SEGMENT_BYTES_MAX = 1024
METADATA = {"b": "2", "a": 'quote " backslash \\ slash / line\nbreak \x01 \x7f thé ✓ \u2028'}


def config() -> EngineConfig:
    demo = Merchant(
        DEMO.merchant_id,
        DEMO.settlement_account,
        {DEMO.kid: DEMO.secret},
        WEBHOOK_URL,
        b"webhook secret of the test......",
    )
    other = Merchant(OTHER.merchant_id, OTHER.settlement_account, {OTHER.kid: OTHER.secret})
    return EngineConfig((demo, other))


def described_payment(order_id: str, payer: str, amount: int) -> SignedRequest:
    body = {
        "merchant_id": DEMO.merchant_id,
        "order_id": order_id,
        "payer": payer,
        "amount": amount,
        "currency": DEMO.currency,
        "description": 'a "described" payment ✓',
        "metadata": METADATA,
    }
    return DEMO.sign(PAYMENTS_PATH, orjson.dumps(body))


def lsn_in(result_id: str) -> int:
    return int(result_id.rpartition("_")[2])


async def deliveries_and_a_new_merchant(engine: Engine, paid: list[int]) -> None:
    """Control records between the payments: a delivery attempt, a redelivery, and a merchant
    with a webhook created by an admin call (its payments are scheduled from then on), paid."""
    now_ms = int(time.time() * 1000)
    await engine.record_deliveries([DeliveryOutcome(paid[0], now_ms, "refused", False, now_ms)])
    await engine.redeliver([paid[1]])
    await engine.open_account("late.settlement", DEMO.currency)
    created = await engine.create_merchant("late", "late.settlement", "https://example.com/h")
    [(kid, secret)] = created.keys.items()
    late = DemoMerchant("late", kid, secret)
    await grant_mandates(engine, [DEMO.payer(2)], late.merchant_id)
    for number in range(3):
        await engine.submit(late.payment(f"l-{number}", DEMO.payer(2), 1))


async def history(engine: Engine) -> None:
    """Payments of two merchants (succeeded, declined, described), refunds (full, partial,
    declined), keyed and unkeyed deposits between them."""
    await DEMO.set_up(engine, payers=3, balance=100)
    await engine.open_account(OTHER.settlement_account, OTHER.currency)
    await engine.open_account("payer-without-mandate", DEMO.currency)
    await grant_mandates(engine, [DEMO.payer(0), DEMO.payer(1)], OTHER.merchant_id)
    paid = []
    for number in range(12):
        payer = DEMO.payer(number % 3)
        paid.append(await engine.submit(DEMO.payment(f"o-{number}", payer, 7)))
        await engine.submit(OTHER.payment(f"x-{number}", DEMO.payer(number % 2), 3))
        if number % 4 == 0:
            await engine.deposit(payer, 5, DEMO.currency, idempotency_key=f"top-up-{number}")
            await engine.deposit(payer, 1, DEMO.currency)
        if number == 3:
            await deliveries_and_a_new_merchant(engine, [lsn_in(result.id) for result in paid])
    declined = await engine.submit(DEMO.payment("too-much", DEMO.payer(0), 10_000))
    assert isinstance(declined, PaymentResult)
    assert declined.failure_code == Failure.INSUFFICIENT_FUNDS
    unconsented = await engine.submit(DEMO.payment("no-mandate", "payer-without-mandate", 1))
    assert isinstance(unconsented, PaymentResult)
    assert unconsented.failure_code == Failure.MANDATE_MISSING
    described = await engine.submit(described_payment("described", DEMO.payer(1), 2))
    assert isinstance(described, PaymentResult)
    assert described.metadata == METADATA
    await engine.submit(DEMO.refund(paid[0].id))  # full
    await engine.submit(DEMO.refund(paid[1].id, 3))  # partial
    await engine.submit(DEMO.refund(paid[1].id, 3))
    over = await engine.submit(DEMO.refund(paid[1].id, 5))  # more than is left
    assert over.status == Status.FAILED


def pre_consent_records() -> tuple[list[int], list[bytes]]:
    """The head of a log written before consent: an account opened and funded, PAYMENT records
    from it (no mandate, no key), version 1 and version 0 (JSON), one declined, an unkeyed
    refund of the first and a declined refund of an id that names no payment."""
    created_s = int(time.time())
    opened = [
        AccountRecord("old-payer", "EUR", 0, False),
        AccountRecord("old.settlement", "EUR", 0, False),
        AccountRecord("old-payer", "EUR", 10, False),
    ]
    types = [logged_type(RecordType.OPEN_ACCOUNT)] * 2 + [logged_type(RecordType.DEPOSIT)]
    payments = [
        PaymentRecord(
            DEMO.merchant_id,
            f"old-{n}",
            "old-payer",
            "old.settlement",
            1,
            "EUR",
            None,
            None,
            created_s,
            None,
            "00" * 32,
        )
        for n in range(2)
    ]
    unknown = PaymentRecord(
        DEMO.merchant_id, "old-x", "nobody", "old.settlement", 1, "EUR", None, None,
        created_s, None, "00" * 32, "account_not_found",
    )  # fmt: skip
    refund = RefundRecord("pay_4", DEMO.merchant_id, None, None, created_s, None, "00" * 32, 1)
    stray = RefundRecord(
        "pay_999999", DEMO.merchant_id, 1, "dup", created_s, None, "00" * 32, 1,
        "payment_not_refundable",
    )  # fmt: skip
    types += [logged_type(RecordType.PAYMENT), logged_type(RecordType.PAYMENT, 0)]
    types += [logged_type(RecordType.PAYMENT), *[logged_type(RecordType.REFUND)] * 2]
    payloads = [encode(record) for record in opened]
    payloads += [encode(payments[0]), msgspec.json.encode(payments[1])]
    payloads += [encode(unknown), encode(refund), encode(stray)]
    return types, payloads


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("log")
    writer = wal.WalWriter(directory, 1, sync=False, segment_bytes_max=SEGMENT_BYTES_MAX)
    writer.append(*pre_consent_records())
    writer.close()

    async def write() -> None:
        async with Engine.open(
            directory,
            config=config(),
            idempotency_capacity=CAPACITY,
            segment_bytes_max=SEGMENT_BYTES_MAX,
            snapshot_on_close=False,
        ) as engine:
            await history(engine)

    asyncio.run(write())
    return directory


def fresh_state() -> State:
    state = State(config(), CAPACITY)
    state.mark_settlement_accounts()
    return state


def replayed(
    directory: Path, *, native: bool, lsn_after: int = 0, state: State | None = None
) -> State:
    state = state or fresh_state()
    for segment in wal.replay_segments(directory, lsn_after):
        if native:
            recovery.replay_segment(state, segment, lsn_after)
        else:
            recovery.replay_records(state, [r for r in segment.records if r.lsn > lsn_after])
    return state


def logged_keys(directory: Path) -> list[tuple[bytes, bytes, int, int]]:
    """(key, fingerprint, created_s, LSN) of every keyed record of the log."""
    keys = []
    for batch in wal.replay(directory, 0):
        for entry in batch:
            key = records.decode(entry.type, entry.payload)[1].logged_key()
            if key is not None:
                keys.append((*key, entry.lsn))
    return keys


def assert_same_state(native: State, python: State, directory: Path) -> None:
    assert native.lsn_next == python.lsn_next
    assert native.ledger.to_snapshot() == python.ledger.to_snapshot()
    assert native.results.to_snapshot() == python.results.to_snapshot()
    assert dict(native.results) == dict(python.results)
    assert native.admin_results == python.admin_results
    assert native.merchants.to_snapshot() == python.merchants.to_snapshot()
    assert native.outbox.events_of == python.outbox.events_of
    assert native.outbox.to_snapshot() == python.outbox.to_snapshot()
    assert list(native.outbox._pending.items()) == list(python.outbox._pending.items())
    assert native.outbox.oldest_pending_ms() == python.outbox.oldest_pending_ms()
    for merchant_id in (DEMO.merchant_id, OTHER.merchant_id, "late"):
        assert native.outbox.take_due(merchant_id, 2**62, 10**6) == python.outbox.take_due(
            merchant_id, 2**62, 10**6
        )
    # The index: every logged key replays its record's LSN, each merchant holds as many keys.
    assert len(native.index) == len(python.index)
    for merchant_id in (DEMO.merchant_id, OTHER.merchant_id, "late", ADMIN_TENANT):
        assert native.index.tenant_len(merchant_id) == python.index.tenant_len(merchant_id)
    for key, fingerprint, created_s, lsn in logged_keys(directory):
        for state in (native, python):
            answer = state.index.reserve_batch([key], [fingerprint], created_s)
            assert answer == [(_core.RESERVE_REPLAY, lsn)], (key, lsn)


def test_the_log_holds_what_the_equivalence_is_about(log: Path) -> None:
    types = {entry.type for batch in wal.replay(log, 0) for entry in batch}
    assert {logged_type(RecordType.PAYMENT_WITH_CONSENT), logged_type(RecordType.REFUND)} <= types
    assert logged_type(RecordType.DELIVERIES) in types, "deliveries between the payments"
    assert logged_type(RecordType.MERCHANT_CREATED) in types
    assert {logged_type(RecordType.PAYMENT), logged_type(RecordType.PAYMENT, 0)} <= types
    assert len(wal.segment_paths(log / "wal")) > 2


def test_native_replay_rebuilds_the_state_the_python_path_does(log: Path) -> None:
    native, python = replayed(log, native=True), replayed(log, native=False)
    assert_same_state(native, python, log)
    described = next(
        r for r in python.results.values() if getattr(r, "order_id", "") == "described"
    )
    assert native.results[int(described.id.removeprefix("pay_"))] == described
    assert native.outbox.pending > 0, "the webhook merchant's events are scheduled"
    native.check_invariants()


def test_native_replay_after_a_snapshot_skips_what_it_holds(log: Path) -> None:
    """From a snapshot taken mid-segment: the records at or below its LSN are not replayed."""
    lsn_after = 40
    upto = fresh_state()
    for segment in wal.replay_segments(log, 0):
        recovery.replay_records(upto, [r for r in segment.records if r.lsn <= lsn_after])
    payload = recovery.snapshot_payload(upto)
    states = []
    for native in (True, False):
        state = fresh_state()
        recovery.restore(state, lsn_after, payload)
        states.append(replayed(log, native=native, lsn_after=lsn_after, state=state))
    assert states[0].lsn_next == replayed(log, native=False).lsn_next
    from_native, from_python = states
    assert_same_state(from_native, from_python, log)


def tampered(directory: Path, tmp_path: Path, lsn: int, change: dict[str, object]) -> Path:
    """A copy of the log whose record at `lsn` logs another outcome."""
    entries = [entry for batch in wal.replay(directory, 0) for entry in batch]
    copy = tmp_path / "tampered"
    writer = wal.WalWriter(copy, 1, sync=False, segment_bytes_max=wal.SEGMENT_BYTES_MAX_DEFAULT)
    payloads = []
    for entry in entries:
        payload = entry.payload
        if entry.lsn == lsn:
            _, record = records.decode(entry.type, payload)
            payload = encode(msgspec.structs.replace(record, **change))
        payloads.append(payload)
    writer.append([entry.type for entry in entries], payloads)
    writer.close()
    return copy


def lsn_of(directory: Path, kind: RecordType, test: Callable[[Any], bool]) -> int:
    """The LSN of the first record of `kind` that passes `test`."""
    for batch in wal.replay(directory, 0):
        for entry in batch:
            if entry.type == logged_type(kind):
                record = records.decode(entry.type, entry.payload)[1]
                if test(record):
                    return entry.lsn
    raise AssertionError(kind)


# (record type, which record of it, the outcome it is made to log, what the replay says)
TAMPERINGS = [
    (
        RecordType.PAYMENT_WITH_CONSENT,
        lambda r: r.failure_code == "insufficient_funds",
        {"failure_code": None},
        "replay of LSN {lsn} gave insufficient_funds, the log says it succeeded",
    ),
    (
        RecordType.PAYMENT_WITH_CONSENT,
        lambda r: r.failure_code is None,
        {"failure_code": "mandate_missing"},
        "replay of LSN {lsn} gave success, the log says mandate_missing",
    ),
    (
        RecordType.REFUND,
        lambda r: r.amount_requested == 3,
        {"amount": 2},
        "replay of LSN {lsn} refunded 3, the log says 2",
    ),
    (
        RecordType.REFUND,
        lambda r: r.failure_code == "refund_exceeds_payment",
        {"failure_code": None},
        "replay of LSN {lsn} gave refund_exceeds_payment, the log says it succeeded",
    ),
]


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_a_tampered_outcome_is_refused_in_the_words_of_the_python_path(
    log: Path,
    tmp_path: Path,
    tampering: tuple[RecordType, Callable[[Any], bool], dict[str, Any], str],
) -> None:
    kind, test, change, message = tampering
    lsn = lsn_of(log, kind, test)
    copy = tampered(log, tmp_path, lsn, change)
    errors = []
    for native in (True, False):
        with pytest.raises(ReplayMismatchError) as raised:
            replayed(copy, native=native)
        errors.append(str(raised.value))
    assert errors[0] == errors[1]
    assert errors[0].startswith(message.format(lsn=lsn) + "; was a configured merchant")


def test_a_payment_that_does_not_decode_is_refused_naming_its_type(
    log: Path, tmp_path: Path
) -> None:
    entries = [entry for batch in wal.replay(log, 0) for entry in batch]
    lsn = lsn_of(log, RecordType.PAYMENT_WITH_CONSENT, lambda r: True)
    copy = tmp_path / "corrupt"
    writer = wal.WalWriter(copy, 1, sync=False, segment_bytes_max=wal.SEGMENT_BYTES_MAX_DEFAULT)
    payloads = [b"\x93\x01\x02\x03" if e.lsn == lsn else e.payload for e in entries]
    writer.append([e.type for e in entries], payloads)
    writer.close()
    errors = []
    for native in (True, False):
        with pytest.raises(
            ValueError, match="PAYMENT_WITH_CONSENT record that does not decode"
        ) as raised:
            replayed(copy, native=native)
        errors.append(str(raised.value))
    assert errors[0] == errors[1]


def test_an_lsn_out_of_sequence_is_refused(log: Path) -> None:
    state = fresh_state()
    [first, *_] = wal.replay_segments(log, 0)
    state.lsn_next = 2
    with pytest.raises(AssertionError, match="replay expected LSN 2, got 1"):
        recovery.replay_segment(state, first, 0)


def test_a_record_that_no_longer_applies_is_refused_in_the_words_of_the_python_path(
    log: Path, tmp_path: Path
) -> None:
    """The ledger refuses it before changing anything: the Python path applies it again and
    names the problem."""
    lsn = lsn_of(log, RecordType.PAYMENT_WITH_CONSENT, lambda r: r.failure_code is None)
    copy = tampered(log, tmp_path, lsn, {"amount": -1})
    errors = []
    for native in (True, False):
        with pytest.raises(ValueError, match=f"record at LSN {lsn} does not apply") as raised:
            replayed(copy, native=native)
        errors.append(str(raised.value))
    assert errors[0] == errors[1]
