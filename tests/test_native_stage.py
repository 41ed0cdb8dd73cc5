"""The native batch stage (`_core.stage_batch`, rust/machine/) against the Python path it
replaced: the same mixed batches through the engine and through a reference model (the Python
intake, reservation, handlers and publish as the engine ran them before the stage was native)
give the same answers, the same balances, byte for byte the same log records, and after a
restart from the log the same state."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instapay import _core, rules
from instapay.ascii_digits import ascii_int
from instapay.demo import DemoMerchant
from instapay.engine import Engine, handlers, recovery
from instapay.engine.ops import ADMIN_TENANT, PaymentOp, RefundOp, idempotency_key
from instapay.engine.state import State
from instapay.model import (
    EngineConfig,
    Merchant,
    Overloaded,
    PaymentResult,
    RefundResult,
    RequestError,
)
from instapay.protocol import PAYMENTS_PATH
from instapay.signing import SignatureError, SignedRequest, verify_requests
from instapay.storage import wal

T = TypeVar("T")
NOW_S = 1_800_000_000
CAPACITY = 10_000
SHOP = DemoMerchant("shop", "shop.k1", b"s" * 32)
OTHER = DemoMerchant("other", "other.k1", b"o" * 32)
PAYERS = ("alice", "bob", "carol")  # carol grants no mandate
FUNDS = 10_000


def config() -> EngineConfig:
    merchants = SHOP.config().merchants + OTHER.config().merchants
    webhooked = Merchant(
        "hooked", "hooked.settlement", {"hooked.k1": b"h" * 32}, "https://example.com/hook"
    )
    return EngineConfig((*merchants, webhooked))


HOOKED = DemoMerchant("hooked", "hooked.k1", b"h" * 32)


# ---- the reference: the Python path before the native stage ---------------------------------

_OLD_REFUNDS_PATH = re.compile(r"/v1/payments/(pay_[^/]+)/refunds")


def _old_payment_lsn(payment_id: str) -> int | None:
    digits = payment_id.removeprefix("pay_")
    number = None if digits == payment_id else ascii_int(digits)
    return number if number is not None and digits == str(number) else None


def _old_route(request: SignedRequest) -> str | None:
    if request.method != "POST":
        raise RequestError("method_not_allowed", f"{request.method} is not accepted here", 405)
    if request.path == PAYMENTS_PATH:
        return None
    match = _OLD_REFUNDS_PATH.fullmatch(request.path)
    if match and _old_payment_lsn(match.group(1)) is not None:
        return match.group(1)
    raise RequestError("not_found", f"no such endpoint: {request.path}", 404)


Answer = PaymentResult | RefundResult | RequestError | Overloaded | None


@dataclass
class Reference:
    """The state and log the Python path made of the same requests."""

    state: State
    logged: list[tuple[int, bytes]] = field(default_factory=list)

    def batch(self, items: list[tuple[SignedRequest, Merchant | None]]) -> list[Answer]:
        answers: list[Answer] = [None] * len(items)
        ops = self._parse(items, answers)
        state = self.state
        keyed = sorted(ops)
        reserved = state.index.reserve_batch(
            [ops[at].key or b"" for at in keyed],
            [ops[at].fingerprint for at in keyed],
            NOW_S,
            [ops[at].merchant.id for at in keyed],
        )
        done: list[tuple[int, PaymentResult | RefundResult, int, int]] = []
        waiters: dict[int, list[int]] = {}
        for at, (status, value) in zip(keyed, reserved, strict=True):
            if status == _core.RESERVE_NEW:
                lsn = state.lsn_next
                types: list[int] = []
                payloads: list[bytes] = []
                result = handlers.apply(state, ops[at], NOW_S, types, payloads)
                assert isinstance(result, PaymentResult | RefundResult)
                self.logged += zip(types, payloads, strict=True)
                done.append((at, result, value, lsn))
            elif status == _core.RESERVE_IN_FLIGHT:
                waiters.setdefault(value, []).append(at)
            else:
                answers[at] = self._known(status, value)
        for _, result, _, lsn in done:
            state.remember(lsn, result)
        state.index.complete_batch([slot for *_, slot, _ in done], [lsn for *_, lsn in done])
        for at, result, slot, _ in done:
            answers[at] = result
            for waiter in waiters.pop(slot, []):
                answers[waiter] = result._replace(replayed=True)
        return answers

    def _known(self, status: int, value: int) -> Answer:
        if status == _core.RESERVE_REPLAY:
            stored = self.state.results[value]
            if isinstance(stored, PaymentResult):
                stored = self.state.as_now(stored)
            return stored._replace(replayed=True)
        if status == _core.RESERVE_MISMATCH:
            message = "this idempotency key was used with a different request"
            return RequestError("idempotency_key_reused", message, 422)
        raise AssertionError(f"the test's index never fills ({status})")

    def _parse(
        self, items: list[tuple[SignedRequest, Merchant | None]], answers: list[Answer]
    ) -> dict[int, PaymentOp | RefundOp]:
        state = self.state
        signed: list[int] = []
        for at, (request, merchant) in enumerate(items):
            if merchant is not None:
                continue
            key = request.idempotency_key
            if key is not None and not rules.is_id(key):
                message = "Idempotency-Key: 1 to 255 printable ASCII characters without spaces"
                answers[at] = RequestError("invalid_request", message)
                continue
            signed.append(at)
        verdicts = verify_requests(
            state.merchants.ring, [items[at][0] for at in signed], now_s=NOW_S
        )
        payments = [(at, m) for at, (_, m) in enumerate(items) if m is not None]
        refunds: list[tuple[int, Merchant, str]] = []
        for at, verdict in zip(signed, verdicts, strict=True):
            try:
                if isinstance(verdict, SignatureError):
                    raise RequestError(verdict.code, str(verdict), 401)
                merchant = state.merchants.by_kid[verdict]
                paid = _old_route(items[at][0])
            except RequestError as error:
                answers[at] = error
                continue
            if paid is None:
                payments.append((at, merchant))
            else:
                refunds.append((at, merchant, paid))
        ops: dict[int, PaymentOp | RefundOp] = {}
        self._parse_payments(items, payments, answers, ops)
        self._parse_refunds(items, refunds, answers, ops)
        return ops

    @staticmethod
    def _parse_payments(
        items: list[tuple[SignedRequest, Merchant | None]],
        payments: list[tuple[int, Merchant]],
        answers: list[Answer],
        ops: dict[int, PaymentOp | RefundOp],
    ) -> None:
        fields = _core.parse_payment_bodies([items[at][0].body for at, _ in payments])
        for (at, merchant), item in zip(payments, fields, strict=True):
            if isinstance(item, str):
                answers[at] = RequestError("invalid_request", item)
                continue
            merchant_id, order_id, payer, amount, currency, text, metadata, fingerprint = item
            if merchant_id != merchant.id:
                message = f"merchant_id {merchant_id!r} is not the merchant of the signing key"
                answers[at] = RequestError("merchant_mismatch", message, 403)
                continue
            client_key = items[at][0].idempotency_key
            scope = f"k:{client_key}" if client_key else f"o:{order_id}"
            key = idempotency_key(merchant.id, scope)
            ops[at] = PaymentOp(
                merchant, order_id, payer, amount, currency, text, metadata, key, fingerprint
            )

    def _parse_refunds(
        self,
        items: list[tuple[SignedRequest, Merchant | None]],
        refunds: list[tuple[int, Merchant, str]],
        answers: list[Answer],
        ops: dict[int, PaymentOp | RefundOp],
    ) -> None:
        fields = _core.parse_refund_bodies([items[at][0].body for at, _, _ in refunds])
        for (at, merchant, paid), item in zip(refunds, fields, strict=True):
            client_key = items[at][0].idempotency_key
            if isinstance(item, str):
                answers[at] = RequestError("invalid_request", item)
                continue
            if client_key is None:
                message = "a refund needs an Idempotency-Key, covered by a v2 signature"
                answers[at] = RequestError("idempotency_key_required", message)
                continue
            entry = self.state.ledger.payment(paid)
            made_by = self.state.results.merchant_of(_old_payment_lsn(paid) or 0)
            if (
                entry is None
                or made_by != merchant.id
                or entry.settlement != (merchant.settlement_account)
            ):
                answers[at] = RequestError("not_found", f"no refundable payment {paid}", 404)
                continue
            amount, reason, fingerprint = item
            key = idempotency_key(merchant.id, f"r:{paid}:{client_key}")
            ops[at] = RefundOp(merchant, paid, amount, reason, key, fingerprint)


# ---- the batches -------------------------------------------------------------------------------


def pay(
    merchant: DemoMerchant, order: str, payer: str, amount: int, **changes: object
) -> SignedRequest:
    body: dict[str, object] = {
        "merchant_id": merchant.merchant_id,
        "order_id": order,
        "payer": payer,
        "amount": amount,
        "currency": "EUR",
    }
    body.update({name: value for name, value in changes.items() if name != "key"})
    key = changes.get("key")
    assert key is None or isinstance(key, str)
    return merchant.sign(PAYMENTS_PATH, orjson.dumps(body), NOW_S, idempotency_key=key)


def refund(
    merchant: DemoMerchant, paid: str, amount: int | None, key: str | None, **body: object
) -> SignedRequest:
    payload = {**({} if amount is None else {"amount": amount}), **body}
    data = orjson.dumps(payload) if payload else b""
    return merchant.sign(f"{PAYMENTS_PATH}/{paid}/refunds", data, NOW_S, idempotency_key=key)


def tampered(request: SignedRequest) -> SignedRequest:
    return SignedRequest(request.header, request.method, request.path, request.body + b" ")


def with_key(request: SignedRequest, key: str) -> SignedRequest:
    """A key sent but not signed (no client could sign it, or a v1 does not cover it)."""
    return SignedRequest(request.header, request.method, request.path, request.body, key)


def v1_with_key(merchant: DemoMerchant, key: str) -> SignedRequest:
    body = pay(merchant, "o-v1", "alice", 5).body
    v1 = _core.hmac_sha256(merchant.secret, f"{NOW_S}\nPOST\n{PAYMENTS_PATH}\n".encode() + body)
    header = f"t={NOW_S},kid={merchant.kid},v1={v1.hex()}"
    return with_key(SignedRequest(header, "POST", PAYMENTS_PATH, body), key)


def first_batch() -> list[SignedRequest]:
    """Payments of every outcome and every refusal before the index, a refund of a payment in
    the same batch (not durable yet), duplicates in one batch."""
    good = pay(SHOP, "o-1", "alice", 100, key="k-1", description="tea", metadata={"b": "2"})
    return [
        good,
        pay(SHOP, "o-2", "bob", 250),
        pay(SHOP, "o-3", "alice", FUNDS * 10, key="k-3"),  # insufficient funds
        pay(SHOP, "o-4", "nobody", 10, key="k-4"),  # unknown payer
        pay(SHOP, "o-5", "carol", 10, key="k-5"),  # no mandate
        pay(SHOP, "o-6", "shop.settlement", 10),  # the settlement account pays
        pay(SHOP, "o-7", "alice", 10, currency="USD"),  # currency mismatch
        tampered(pay(SHOP, "o-8", "alice", 10)),
        SHOP.sign(PAYMENTS_PATH, pay(SHOP, "o-9", "alice", 1).body, NOW_S - 1000),  # stale
        v1_with_key(SHOP, "k-v1"),
        SHOP.sign(PAYMENTS_PATH, b'{"merchant_id": "shop", "order_id":', NOW_S),
        SHOP.sign(PAYMENTS_PATH, b'{"merchant_id":"shop","amount":1,"amount":2}', NOW_S),
        pay(SHOP, "o-10", "alice", 10, merchant_id="other"),  # merchant mismatch
        pay(SHOP, "o-11", "alice", 10, merchant_id="it's"),  # quoted as Python quotes it
        SHOP.sign(PAYMENTS_PATH, pay(SHOP, "o-12", "alice", 1).body, NOW_S, method="PUT"),
        SHOP.sign("/v1/paymentz", pay(SHOP, "o-13", "alice", 1).body, NOW_S),
        SHOP.sign(f"{PAYMENTS_PATH}/pay_01/refunds", b"", NOW_S, idempotency_key="r-0"),
        with_key(pay(SHOP, "o-14", "alice", 10), "has space"),
        with_key(pay(SHOP, "o-15", "alice", 10), "é"),
        with_key(pay(SHOP, "o-15", "alice", 10), "k" * 256),
        SignedRequest(None, "POST", PAYMENTS_PATH, pay(SHOP, "o-16", "alice", 1).body),
        pay(OTHER, "o-1", "alice", 300, key="k-1"),  # the same client key, another merchant
        pay(HOOKED, "o-1", "bob", 40),
        refund(SHOP, "pay_999", None, "r-1"),  # unknown payment
        refund(SHOP, "pay_1", 5, None),  # no key
        refund(SHOP, "pay_1", 0, "r-2"),  # bad amount
        good,  # a duplicate in the batch: answered as its first once durable
        pay(SHOP, "o-1", "alice", 101, key="k-1"),  # same key, other content, in flight
        pay(SHOP, "o-2", "bob", 250),  # the order id is the key
    ]


def second_batch(paid: dict[str, str]) -> list[SignedRequest]:
    """Refunds of every outcome; retries of durable requests, matching and not."""
    shop, bob, other = paid["shop/o-1"], paid["shop/o-2"], paid["other/o-1"]
    return [
        refund(SHOP, shop, 30, "r-10", reason="damaged"),
        refund(SHOP, shop, 30, "r-10", reason="damaged"),  # duplicate in the batch
        refund(SHOP, shop, 1000, "r-11"),  # more than is left
        refund(SHOP, shop, None, "r-12"),  # the rest
        refund(SHOP, shop, 1, "r-13"),  # nothing left
        refund(SHOP, bob, None, "r-14"),
        refund(SHOP, other, 10, "r-15"),  # another merchant's payment
        refund(OTHER, other, 10, "r-16"),
        refund(OTHER, other, 10, "r-16"),
        refund(SHOP, shop, 1, "r-17", extra=1),
        pay(SHOP, "o-1", "alice", 100, key="k-1", description="tea", metadata={"b": "2"}),
        pay(SHOP, "o-1", "alice", 999, key="k-1"),  # mismatched retry of a durable one
        pay(SHOP, "o-20", "alice", 20, key="k-20"),
        refund(SHOP, "pay_1", None, "r-18"),  # an account's record, not a payment
    ]


def authenticated_batch() -> list[tuple[SignedRequest, Merchant | None]]:
    """The batch endpoint's payments: authenticated by the caller, scoped by order id."""
    shop = config().merchants[0]
    bodies = [
        pay(SHOP, "b-1", "alice", 7).body,
        pay(SHOP, "b-2", "bob", 8).body,
        pay(SHOP, "b-1", "alice", 7).body,
        pay(SHOP, "b-3", "alice", 9, merchant_id="other").body,
        b"not json",
    ]
    return [(SignedRequest(None, "POST", PAYMENTS_PATH, body), shop) for body in bodies]


def comparable(answer: object) -> object:
    if isinstance(answer, RequestError):
        return ("refused", answer.code, answer.message, answer.http_status)
    if isinstance(answer, Overloaded):
        return ("overloaded", str(answer))
    return answer


# ---- the engine side --------------------------------------------------------------------------


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sides stage at NOW_S (records and results carry the time)."""
    monkeypatch.setattr("instapay.engine.pipeline.time.time", lambda: float(NOW_S))


async def set_up(engine: Engine) -> None:
    for merchant in (SHOP, OTHER, HOOKED):
        await engine.open_account(merchant.settlement_account, "EUR")
    for payer in PAYERS:
        await engine.open_account(payer, "EUR")
        await engine.deposit(payer, FUNDS, "EUR")
    for payer, merchant in (("alice", SHOP), ("bob", SHOP), ("alice", OTHER), ("bob", HOOKED)):
        await engine.grant_mandate(payer, merchant.merchant_id, amount_max_per_payment=FUNDS * 100)


def logged(directory: Path) -> list[wal.Record]:
    return [record for scan in wal.scan_log(directory) for record in scan.records]


def reference_after_set_up(directory: Path) -> Reference:
    state = State(config(), CAPACITY)
    recovery.replay_records(state, logged(directory))
    return Reference(state)


def assert_same_state(engine: Engine, reference: Reference) -> None:
    ours, theirs = engine.state, reference.state
    assert ours.lsn_next == theirs.lsn_next
    assert ours.ledger.native.accounts() == theirs.ledger.native.accounts()
    assert dict(ours.results.items()) == dict(theirs.results.items())
    for merchant in ("shop", "other", "hooked"):
        assert list(ours.outbox.events_of.get(merchant, ())) == list(
            theirs.outbox.events_of.get(merchant, ())
        )
    assert ours.outbox.pending == theirs.outbox.pending
    assert ours.outbox.oldest_pending_ms() == theirs.outbox.oldest_pending_ms()
    assert len(ours.index) == len(theirs.index)


Batches = Callable[[dict[str, str]], Iterator[list[tuple[SignedRequest, Merchant | None]]]]


def run_both(directory: Path, batches: Batches) -> None:
    """Drives each batch through the engine and the reference; checks answers and state after
    each, the records once the engine closed, and a restart from the log."""

    async def scenario() -> None:
        async with Engine.open(
            directory, config=config(), idempotency_capacity=CAPACITY, snapshot_on_close=False
        ) as e:
            await set_up(e)
            reference = reference_after_set_up(directory)
            lsn_set_up = e.state.lsn_next
            paid: dict[str, str] = {}
            for batch in batches(paid):
                ours = await submit(e, batch)
                theirs = reference.batch(batch)
                assert [comparable(a) for a in ours] == [comparable(a) for a in theirs]
                assert_same_state(e, reference)
                for answer in ours:
                    if isinstance(answer, PaymentResult) and not answer.failure_code:
                        paid.setdefault(f"{answer.merchant_id}/{answer.order_id}", answer.id)
        records = [(r.type, r.payload) for r in logged(directory) if r.lsn >= lsn_set_up]
        assert records == reference.logged, "byte for byte the records the Python path wrote"
        # Closed without a snapshot: this start replays the whole log; the next loads the
        # snapshot this one writes on close.
        for _ in range(2):
            async with Engine.open(directory, config=config(), idempotency_capacity=CAPACITY) as e:
                assert_same_state(e, reference)

    asyncio.run(scenario())


async def submit(
    engine: Engine, batch: list[tuple[SignedRequest, Merchant | None]]
) -> list[object]:
    """One batch: every request queued before the engine takes any."""
    signed = [request for request, merchant in batch if merchant is None]
    if len(signed) == len(batch):
        return list(await engine.submit_many(signed))
    merchant = batch[0][1]
    assert merchant is not None
    assert not signed
    return list(await engine.submit_authenticated(merchant, [r.body for r, _ in batch]))


def unsigned(requests: list[SignedRequest]) -> list[tuple[SignedRequest, Merchant | None]]:
    return [(request, None) for request in requests]


def test_mixed_batches_give_the_python_paths_answers_state_and_records(
    tmp_path: Path, fixed_clock: None
) -> None:
    def batches(paid: dict[str, str]) -> Iterator[list[tuple[SignedRequest, Merchant | None]]]:
        yield unsigned(first_batch())
        yield unsigned(second_batch(paid))
        yield authenticated_batch()
        yield unsigned(first_batch() + second_batch(paid))  # every one a retry now

    run_both(tmp_path, batches)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_shuffled_batches_give_the_python_paths_answers(
    tmp_path_factory: pytest.TempPathFactory, fixed_clock: None, data: st.DataObject
) -> None:
    def batches(paid: dict[str, str]) -> Iterator[list[tuple[SignedRequest, Merchant | None]]]:
        yield unsigned(data.draw(st.permutations(first_batch()), label="first"))
        second = data.draw(st.permutations(second_batch(paid)), label="second")
        yield unsigned(second[: len(second) // 2])
        yield unsigned(second[len(second) // 2 :] + first_batch()[:5])

    run_both(tmp_path_factory.mktemp("shuffled"), batches)


def test_admin_keys_keep_their_own_share_between_runs(tmp_path: Path, fixed_clock: None) -> None:
    """A batch of signed runs and control ops: the LSNs run on from one to the next, and a
    keyed deposit in the middle reserves in the admin share."""

    async def scenario() -> None:
        async with Engine.open(tmp_path, config=config(), idempotency_capacity=CAPACITY) as e:
            await set_up(e)
            first = e.state.lsn_next
            answers = await asyncio.gather(
                e.submit_many([pay(SHOP, "m-1", "alice", 1), pay(SHOP, "m-2", "bob", 2)]),
                e.deposit("alice", 5, "EUR", idempotency_key="d-1"),
                e.submit_many([pay(SHOP, "m-3", "alice", 3)]),
            )
            payments = [*answers[0], *answers[2]]
            assert all(isinstance(payment, PaymentResult) for payment in payments)
            lsns = [payment.id for payment in payments if isinstance(payment, PaymentResult)]
            assert lsns == [f"pay_{first}", f"pay_{first + 1}", f"pay_{first + 3}"]
            assert e.state.index.tenant_len(ADMIN_TENANT) == 1
        assert [r.lsn for r in logged(tmp_path)][-4:] == list(range(first, first + 4))

    asyncio.run(scenario())


class SecondWriteDoneAtOnce(ThreadPoolExecutor):
    """A log thread whose every second write is done before the engine sees it handed over:
    as when the GIL passes to the log thread right after the hand-over, and it writes the
    batch before the event loop runs the task waiting for it."""

    def __init__(self) -> None:
        super().__init__(1)
        self.calls = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future = super().submit(fn, *args, **kwargs)
        self.calls += 1
        if self.calls % 2 == 0:
            wait_for_futures([future])
        return future


def test_batches_publish_in_log_order_when_a_later_write_is_seen_done_first(
    tmp_path: Path, fixed_clock: None
) -> None:
    """Two batches staged in one turn of the loop, the second's write done before its task
    starts: it waits for the first batch's task, and results are remembered in log order."""

    async def scenario() -> None:
        opened = Engine.open(tmp_path, config=config(), idempotency_capacity=CAPACITY)
        async with opened as e:
            await set_up(e)
            e._log_thread = SecondWriteDoneAtOnce()
            e.batch_size_max = 2
            requests = [pay(SHOP, f"x-{n}", "alice", 1 + n) for n in range(4)]
            answers = await asyncio.wait_for(e.submit_many(requests), 60)  # guards a hang
            amounts = [answer.amount for answer in answers if isinstance(answer, PaymentResult)]
            assert amounts == [1, 2, 3, 4]
            assert e.failed is None

    asyncio.run(scenario())


def test_the_writer_refuses_frames_not_numbered_from_its_next_lsn(tmp_path: Path) -> None:
    """Frames made by the stage are checked before the write: misnumbered, miscounted or
    damaged ones reach no disk."""
    writer = wal.WalWriter(tmp_path, 1, sync=False, segment_bytes_max=1 << 20)
    frames = _core.wal_encode(1, [271, 271], [b"a", b"b"])
    for bad, count in (
        (_core.wal_encode(2, [271], [b"a"]), 1),
        (frames, 3),
        (frames[:-1], 2),
    ):
        with pytest.raises(ValueError, match=r"numbered from LSN 1|expected"):
            writer.append_frames([bad], count)
    assert writer.bytes_written == 0
    assert writer.append_frames([frames[: len(frames) // 2], frames[len(frames) // 2 :]], 2) == 1
    writer.close()
    assert [(r.lsn, r.payload) for r in logged(tmp_path)] == [(1, b"a"), (2, b"b")]
