"""The payment engine: signed requests in, durable results out, through one batched pipeline.

::

    submit ─► queue ─► batch ─► verify ─► parse ─► reserve ─► apply ─► log ─► results
                                (native)  (native) (native)  (ledger) (one write + one
                                                                       fdatasync, in the
                                                                       log thread)

While the log thread makes batch k durable, the event loop stages batch k+1 (at most
`PIPELINE_BATCHES_MAX` batches wait for the disk). A result is handed back, and its idempotency key
completed, only once its record is durable; a retry of a request still in flight waits for the
first one's result. A write or fsync error stops the engine for good (fail-stop).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import re
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import orjson
import yarl

from instapay import _core, datadir, wal
from instapay.ascii_digits import number_in_id
from instapay.ledger import Ledger, Owner
from instapay.mandates import (
    EXPIRES_AT_MAX_S,
    GRANT_RECORD_FIELDS,
    MANDATES_PER_ACCOUNT_MAX,
    REVOCATION_RECORD_FIELDS,
    Mandate,
    MandateGrant,
    MandateRevocation,
)
from instapay.merchants import Merchants, merchant_from_row, merchant_row, new_kid, new_secret
from instapay.model import (
    AdminResult,
    EngineConfig,
    EngineFailedError,
    Failure,
    Merchant,
    Overloaded,
    PaymentResult,
    Recorded,
    RefundResult,
    RequestError,
    Result,
    Status,
)
from instapay.outbox import DeliveryOutcome, Outbox, event_id, event_json
from instapay.signing import SignatureError, SignedRequest, verify_requests

log = logging.getLogger(__name__)

BATCH_SIZE_MAX_DEFAULT = 1024
QUEUE_DEPTH_MAX_DEFAULT = 65_536
IDEMPOTENCY_CAPACITY_DEFAULT = 1_000_000
# A snapshot every this many records bounds the log a recovery replays (about 12 s per million
# records today) and lets old segments go; taking one pauses the pipeline for its duration.
SNAPSHOT_EVERY_RECORDS_DEFAULT = 1_000_000
# Batches applied in memory but not yet durable; bounds memory and the work a crash discards.
PIPELINE_BATCHES_MAX = 2
PAYMENTS_PATH = "/v1/payments"
REFUNDS_PATH = re.compile(r"/v1/payments/(pay_[^/]+)/refunds")
PAYMENT_ID_PREFIX = "pay_"
REFUND_ID_PREFIX = "re_"
# The share of the idempotency index that keyed admin deposits and withdrawals count in: a name
# no merchant can have (ids have no spaces), so no merchant's keys crowd them out, nor theirs.
ADMIN_TENANT = " admin"
# Snapshot payload: length of the JSON state, the JSON state, length of the ledger state, the
# ledger state (native, rust/state/snapshot.rs), then the idempotency index dump. Snapshots written
# before the ledger was native hold it as JSON rows in the state ("ledger"), with no length.
SNAPSHOT_STATE_LEN = struct.Struct("<Q")

FsyncMode = Literal["always", "off"]


class ReplayMismatchError(ValueError):
    """A logged record does not replay to its logged outcome: a bug, or the configuration
    changed what the record depends on (a configured merchant's settlement account)."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"{detail}; was a configured merchant given an account that existed before, or "
            "removed? Restore the configuration the log was written under"
        )


class RecordType(IntEnum):
    OPEN_ACCOUNT = 1
    DEPOSIT = 2
    WITHDRAW = 3
    PAYMENT = 4
    REFUND = 5
    MERCHANT_CREATED = 6
    KEY_ADDED = 7
    KEY_REVOKED = 8
    # Finished webhook delivery attempts, and admin redeliveries (see instapay.outbox).
    DELIVERIES = 9
    REDELIVERY = 10
    WEBHOOK_SECRET_ROTATED = 11
    PREVIOUS_WEBHOOK_SECRET_REVOKED = 12
    # Consent (instapay.mandates). These records are JSON objects with named fields.
    MANDATE_GRANTED = 13
    MANDATE_REVOKED = 14
    # A payment applied under the consent rules (same fields as PAYMENT, which is replayed by
    # the rules before consent, as it was applied).
    PAYMENT_WITH_CONSENT = 15


PAYMENT_RECORDS = frozenset((RecordType.PAYMENT, RecordType.PAYMENT_WITH_CONSENT))
MANDATE_RECORDS = frozenset((RecordType.MANDATE_GRANTED, RecordType.MANDATE_REVOKED))


_ADMIN_RECORD_FIELDS = ("account_id", "currency", "amount", "overdraft", "failure_code")
# A deposit or withdrawal sent with an Idempotency-Key carries the key it reserved, before its
# failure code (see `_logged_key`).
_ADMIN_KEYED_RECORD_FIELDS = (*_ADMIN_RECORD_FIELDS[:-1], "idempotency", "failure_code")
_PAYMENT_RECORD_FIELDS = (
    "merchant_id",
    "order_id",
    "payer",
    "settlement_account",
    "amount",
    "currency",
    "description",
    "metadata",
    "created_s",
    "idempotency_key",
    "fingerprint",
    "failure_code",
)
# The fields of each positional record type, in logged order: `named` gives them to
# `instapay wal dump`. A DELIVERIES record is a list of outcomes, each with these fields. Mandate
# records are JSON objects that name their own fields.
RECORD_FIELDS: dict[RecordType, tuple[str, ...]] = {
    RecordType.OPEN_ACCOUNT: _ADMIN_RECORD_FIELDS,
    RecordType.DEPOSIT: _ADMIN_RECORD_FIELDS,
    RecordType.WITHDRAW: _ADMIN_RECORD_FIELDS,
    RecordType.PAYMENT: _PAYMENT_RECORD_FIELDS,
    RecordType.PAYMENT_WITH_CONSENT: _PAYMENT_RECORD_FIELDS,
    RecordType.REFUND: (
        "payment_id",
        "merchant_id",
        "amount_requested",
        "reason",
        "created_s",
        "idempotency_key",
        "fingerprint",
        "amount",
        "failure_code",
    ),
    RecordType.MERCHANT_CREATED: (
        "merchant_id",
        "settlement_account",
        "webhook_url",
        "keys",
        "webhook_secret",
        "previous_webhook_secret",
    ),
    RecordType.KEY_ADDED: ("merchant_id", "kid", "secret"),
    RecordType.KEY_REVOKED: ("merchant_id", "kid"),
    RecordType.DELIVERIES: DeliveryOutcome._fields,
    RecordType.REDELIVERY: ("at_ms", "event_lsns"),
    RecordType.WEBHOOK_SECRET_ROTATED: ("merchant_id", "webhook_secret"),
    RecordType.PREVIOUS_WEBHOOK_SECRET_REVOKED: ("merchant_id",),
    RecordType.MANDATE_GRANTED: GRANT_RECORD_FIELDS,
    RecordType.MANDATE_REVOKED: REVOCATION_RECORD_FIELDS,
}
# Fields holding a secret (hex), or a map of key ids to secrets (`keys`).
SECRET_RECORD_FIELDS = frozenset({"secret", "webhook_secret", "previous_webhook_secret", "keys"})


def payment_id(lsn: int) -> str:
    return f"{PAYMENT_ID_PREFIX}{lsn}"


def payment_lsn(payment_id_: str) -> int | None:
    """The LSN a payment id names, or None when it names none."""
    return number_in_id(payment_id_, PAYMENT_ID_PREFIX)


def refund_id(lsn: int) -> str:
    return f"{REFUND_ID_PREFIX}{lsn}"


def refund_lsn(refund_id_: str) -> int | None:
    """The LSN a refund id names, or None when it names none."""
    return number_in_id(refund_id_, REFUND_ID_PREFIX)


def _failure(code: str | None) -> Failure | None:
    return None if code is None else Failure(code)


def _status(failure: Failure | None) -> Status:
    return Status.FAILED if failure else Status.SUCCEEDED


class _AdminOp(NamedTuple):
    kind: RecordType
    account_id: str
    currency: str
    amount: int = 0
    overdraft: bool = False
    # A deposit or withdrawal sent with an Idempotency-Key: its scoped key and fingerprint.
    key: bytes | None = None
    fingerprint: bytes = b""


class _MerchantOp(NamedTuple):
    merchant: Merchant


class _KeyOp(NamedTuple):
    kind: RecordType
    merchant_id: str
    kid: str
    secret: bytes = b""


class _WebhookSecretOp(NamedTuple):
    kind: RecordType
    merchant_id: str
    secret: bytes = b""


class _DeliveriesOp(NamedTuple):
    outcomes: tuple[DeliveryOutcome, ...]


class _RedeliveryOp(NamedTuple):
    event_lsns: tuple[int, ...]
    at_ms: int


# Changes an admin (or the webhook dispatcher) makes, in log order with the payments.
_ControlOp = (
    _AdminOp
    | _MerchantOp
    | _KeyOp
    | _WebhookSecretOp
    | _DeliveriesOp
    | _RedeliveryOp
    | MandateGrant
    | MandateRevocation
)
Applied = Result | Merchant | Recorded | Mandate
Answer = Applied | RequestError | Overloaded | EngineFailedError


class _Answers:
    """The answers of one submit call, and the one future that wakes the caller when the last
    arrives: cheaper than a future per request. A caller that stopped waiting is ignored."""

    __slots__ = ("future", "pending", "values")

    def __init__(self, count: int) -> None:
        self.values: list[Answer | None] = [None] * count
        self.pending = count
        self.future: asyncio.Future[list[Answer | None]] = (
            asyncio.get_running_loop().create_future()
        )

    def put(self, index: int, value: Answer) -> None:
        if self.values[index] is not None:
            return
        self.values[index] = value
        self.pending -= 1
        if self.pending == 0 and not self.future.done():
            self.future.set_result(self.values)


@dataclass(slots=True)
class _Job:
    answers: _Answers
    index: int
    request: SignedRequest | None = None
    control: _ControlOp | None = None
    # Set for a payment whose signature the caller checked (one signature over a whole batch).
    merchant: Merchant | None = None

    def answer(self, value: Answer) -> None:
        self.answers.put(self.index, value)


class _PaymentOp(NamedTuple):
    merchant: Merchant
    order_id: str
    payer: str
    amount: int
    currency: str
    description: str | None
    metadata: dict[str, str] | None
    key: bytes
    fingerprint: bytes


class _RefundOp(NamedTuple):
    merchant: Merchant
    payment_id: str
    amount: int | None
    reason: str | None
    key: bytes | None
    fingerprint: bytes


_Op = _PaymentOp | _RefundOp | _ControlOp


class BucketCounts:
    """Counts per bucket (value <= bound; the last bucket is +Inf) and the sum: what a Prometheus
    histogram exports, without the engine depending on a metrics library."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


BATCH_SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096)
# fdatasync takes ~0.2 ms on a good SSD; a slow disk shows up in the upper buckets.
LOG_WRITE_BUCKETS_S = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0)


@dataclass(slots=True)
class EngineStats:
    """Running totals for monitoring; `instapay.http` exports them as Prometheus metrics."""

    batches: int = 0
    requests: int = 0
    records: int = 0
    log_writes: int = 0
    log_bytes: int = 0
    # Time spent in write + fdatasync, in the log thread.
    log_write_seconds: float = 0.0
    log_write_seconds_max: float = 0.0
    batch_sizes: BucketCounts = field(default_factory=lambda: BucketCounts(BATCH_SIZE_BUCKETS))
    log_write_latency: BucketCounts = field(
        default_factory=lambda: BucketCounts(LOG_WRITE_BUCKETS_S)
    )


@dataclass(slots=True)
class _Staged:
    """One batch applied in memory, waiting for its records to be durable."""

    types: list[int] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    # Each job with its result, its slot if it reserved a new idempotency key, and its LSN.
    done: list[tuple[_Job, Applied, int | None, int]] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    refs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Refunds:
    """The durable refunds of one payment."""

    lsns: list[int] = field(default_factory=list)  # oldest first
    amount: int = 0  # refunded by those that succeeded

    def add(self, lsn: int, refund: RefundResult) -> None:
        self.lsns.append(lsn)
        if refund.status == Status.SUCCEEDED:
            self.amount += refund.amount


def _idempotency_key(merchant_id: str, scope: str) -> bytes:
    return f"{merchant_id}\x00{scope}".encode()


def _check_client_key(key: str) -> None:
    if not _is_id(key):
        raise RequestError(
            "invalid_request", "Idempotency-Key: 1 to 255 printable ASCII characters without spaces"
        )


class Engine:
    """Open with `Engine.open(...)`; see the module docstring for the pipeline."""

    def __init__(
        self,
        directory: Path,
        config: EngineConfig,
        *,
        fsync: FsyncMode,
        batch_size_max: int,
        queue_depth_max: int,
        idempotency_capacity: int,
        segment_bytes_max: int,
        snapshot_every_records: int = SNAPSHOT_EVERY_RECORDS_DEFAULT,
    ) -> None:
        if fsync not in ("always", "off"):
            raise ValueError(f"fsync must be 'always' or 'off', not {fsync!r}")
        if not 1 <= batch_size_max <= _core.BATCH_LEN_MAX:
            raise ValueError(f"batch_size_max must be 1 to {_core.BATCH_LEN_MAX}")
        if queue_depth_max < batch_size_max:
            raise ValueError("queue_depth_max must be at least batch_size_max")
        self.directory = directory
        self.fsync = fsync
        self.batch_size_max = batch_size_max
        self.queue_depth_max = queue_depth_max
        self.segment_bytes_max = segment_bytes_max
        if snapshot_every_records < 1:
            raise ValueError("snapshot_every_records must be at least 1")
        self.snapshot_every_records = snapshot_every_records
        self._snapshot_lsn = 0
        self.merchants = Merchants(config.merchants)
        self.outbox = Outbox()
        self.ledger = Ledger()
        self.index = _core.IdempotencyIndex(
            idempotency_capacity, tenant_share_percent=config.idempotency_share_percent
        )
        # Durable payment and refund results by LSN (their ids carry the LSN).
        self.results: dict[int, PaymentResult | RefundResult] = {}
        # Durable deposits and withdrawals sent with an Idempotency-Key, by LSN: what a retry
        # gets again.
        self._admin_results: dict[int, AdminResult] = {}
        # LSNs of the durable payments of each (merchant, order id), oldest first.
        self._orders: dict[tuple[str, str], list[int]] = {}
        # The durable refunds of each payment id.
        self._refunds: dict[str, _Refunds] = {}
        self.lsn_next = 1
        self.stats = EngineStats()
        self._queue: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        # Retries waiting for an in-flight first request, by its idempotency slot.
        self._waiters: dict[int, list[_Job]] = {}
        # One task per batch being made durable, oldest first; each removes itself when done.
        self._syncing: deque[asyncio.Task[None]] = deque()
        self._log_thread = ThreadPoolExecutor(1, thread_name_prefix="instapay-log")
        self._log: wal.WalWriter | None = None
        self._log_broken = False
        self._failed: EngineFailedError | None = None
        self._closing = False
        self._runner: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        data_dir: Path | str,
        *,
        config: EngineConfig | None = None,
        fsync: FsyncMode = "always",
        batch_size_max: int = BATCH_SIZE_MAX_DEFAULT,
        queue_depth_max: int = QUEUE_DEPTH_MAX_DEFAULT,
        idempotency_capacity: int = IDEMPOTENCY_CAPACITY_DEFAULT,
        segment_bytes_max: int = wal.SEGMENT_BYTES_MAX_DEFAULT,
        snapshot_every_records: int = SNAPSHOT_EVERY_RECORDS_DEFAULT,
        snapshot_on_close: bool = True,
    ) -> AsyncIterator[Engine]:
        """Recovers the data directory, runs the engine, and on exit drains it and snapshots
        (`snapshot_on_close=False` leaves only the log, as a crash would: the next open replays
        it all)."""
        directory = Path(data_dir)
        datadir.create(directory)
        lock = datadir.lock(directory)
        engine = cls(
            directory,
            config or EngineConfig(),
            fsync=fsync,
            batch_size_max=batch_size_max,
            queue_depth_max=queue_depth_max,
            idempotency_capacity=idempotency_capacity,
            segment_bytes_max=segment_bytes_max,
            snapshot_every_records=snapshot_every_records,
        )
        try:
            await asyncio.to_thread(engine._recover)
            engine._runner = asyncio.create_task(engine._run(), name="instapay-engine")
            try:
                yield engine
            finally:
                await engine.close(snapshot=snapshot_on_close)
        finally:
            os.close(lock)  # releases the lock

    # ---- submitting -------------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closing:
            raise RuntimeError("the engine is closed")
        if len(self._queue) >= self.queue_depth_max:
            raise Overloaded(f"the engine queue holds {self.queue_depth_max} requests")
        self._queue.append(job)
        self._wakeup.set()

    async def _one(self, **parts: Any) -> Applied:
        answers = _Answers(1)
        self._enqueue(_Job(answers, 0, **parts))
        [answer] = await answers.future
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            raise TypeError("a request was left unanswered")
        return answer

    async def submit(self, request: SignedRequest) -> PaymentResult | RefundResult:
        """Processes one signed payment or refund request (its `idempotency_key` must be signed,
        v2); raises the RequestError refusing it."""
        return _signed(await self._one(request=request))

    async def submit_many(
        self, requests: Sequence[SignedRequest]
    ) -> list[PaymentResult | RefundResult | RequestError | Overloaded]:
        """Processes many requests; per request its result or the error refusing it.

        Raises EngineFailedError if the engine stopped.
        """
        return await self._submit_all([{"request": request} for request in requests])

    async def submit_authenticated(
        self, merchant: Merchant, bodies: Sequence[bytes]
    ) -> list[PaymentResult | RefundResult | RequestError | Overloaded]:
        """Payments of `merchant` whose signature the caller has checked: the batch endpoint,
        where one signature covers every body. Idempotency scope: (merchant, order id)."""
        path = PAYMENTS_PATH
        parts = [
            {"request": SignedRequest(None, "POST", path, body), "merchant": merchant}
            for body in bodies
        ]
        return await self._submit_all(parts)

    async def _submit_all(
        self, parts: list[dict[str, Any]]
    ) -> list[PaymentResult | RefundResult | RequestError | Overloaded]:
        """Queues one job per entry of `parts` and waits for all their answers."""
        if not parts:
            return []
        answers = _Answers(len(parts))
        for index, job_parts in enumerate(parts):
            try:
                self._enqueue(_Job(answers, index, **job_parts))
            except Overloaded as error:
                answers.put(index, error)
        results: list[PaymentResult | RefundResult | RequestError | Overloaded] = []
        for answer in await answers.future:
            if isinstance(answer, EngineFailedError):
                raise answer
            if answer is None or isinstance(answer, AdminResult | Merchant | Recorded | Mandate):
                raise TypeError(f"a signed request was answered with {answer!r}")
            results.append(answer)
        return results

    async def _admin(self, op: _AdminOp) -> AdminResult:
        return _expect(AdminResult, await self._one(control=op))

    async def open_account(
        self, account_id: str, currency: str, *, overdraft: bool = False
    ) -> AdminResult:
        _check_account(account_id, currency)
        return await self._admin(
            _AdminOp(RecordType.OPEN_ACCOUNT, account_id, currency, 0, overdraft)
        )

    async def deposit(
        self, account_id: str, amount: int, currency: str, *, idempotency_key: str | None = None
    ) -> AdminResult:
        """With a key, a retry (same key, same deposit) gets the first result again
        (`replayed`) and another deposit under the key is refused (`idempotency_key_reused`)."""
        op = _money_op(RecordType.DEPOSIT, account_id, amount, currency, idempotency_key)
        return await self._admin(op)

    async def withdraw(
        self, account_id: str, amount: int, currency: str, *, idempotency_key: str | None = None
    ) -> AdminResult:
        """Like `deposit`, the other way."""
        op = _money_op(RecordType.WITHDRAW, account_id, amount, currency, idempotency_key)
        return await self._admin(op)

    async def create_merchant(
        self, merchant_id: str, settlement_account: str, webhook_url: str | None = None
    ) -> Merchant:
        """A new merchant with a fresh key (and a webhook secret if it has a webhook URL); the
        returned Merchant holds the secrets, which the caller shows once."""
        _check_id("merchant id", merchant_id)
        _check_id("settlement_account", settlement_account)
        if webhook_url is not None:
            _check_webhook_url(webhook_url)
        merchant = Merchant(
            merchant_id,
            settlement_account,
            {new_kid(): new_secret()},
            webhook_url,
            None if webhook_url is None else new_secret(),
        )
        return _expect(Merchant, await self._one(control=_MerchantOp(merchant)))

    async def add_key(self, merchant_id: str) -> tuple[str, bytes]:
        """A new key for the merchant, valid at once next to its other keys: (kid, secret)."""
        kid, secret = new_kid(), new_secret()
        await self._one(control=_KeyOp(RecordType.KEY_ADDED, merchant_id, kid, secret))
        return kid, secret

    async def revoke_key(self, merchant_id: str, kid: str) -> Merchant:
        """Revokes a key; requests signed with it fail from the next batch on."""
        op = _KeyOp(RecordType.KEY_REVOKED, merchant_id, kid)
        return _expect(Merchant, await self._one(control=op))

    async def rotate_webhook_secret(self, merchant_id: str) -> bytes:
        """A new webhook secret; the old one signs deliveries too until it is revoked."""
        secret = new_secret()
        op = _WebhookSecretOp(RecordType.WEBHOOK_SECRET_ROTATED, merchant_id, secret)
        await self._one(control=op)
        return secret

    async def revoke_previous_webhook_secret(self, merchant_id: str) -> Merchant:
        op = _WebhookSecretOp(RecordType.PREVIOUS_WEBHOOK_SECRET_REVOKED, merchant_id)
        return _expect(Merchant, await self._one(control=op))

    async def record_deliveries(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """Logs finished webhook attempts (one record), so a restart resumes the schedule."""
        await self._one(control=_DeliveriesOp(tuple(outcomes)))

    async def redeliver(self, event_lsns: Sequence[int]) -> None:
        """Starts a fresh round of deliveries for these events, due now."""
        lsns = tuple(dict.fromkeys(event_lsns))  # each event once
        await self._one(control=_RedeliveryOp(lsns, int(time.time() * 1000)))

    async def grant_mandate(
        self,
        account_id: str,
        merchant_id: str,
        amount_max_per_payment: int,
        *,
        amount_max_per_day: int | None = None,
        expires_at_s: int | None = None,
    ) -> Mandate:
        """Records that the payer account lets the merchant debit it within these limits."""
        _check_id("account id", account_id)
        _check_id("merchant_id", merchant_id)
        _check_amount(amount_max_per_payment, "amount_max_per_payment")
        if amount_max_per_day is not None:
            _check_amount(amount_max_per_day, "amount_max_per_day")
            if amount_max_per_day < amount_max_per_payment:
                raise RequestError(
                    "invalid_request", "amount_max_per_day: at least amount_max_per_payment"
                )
        now_s = int(time.time())
        if expires_at_s is not None and not now_s < expires_at_s <= EXPIRES_AT_MAX_S:
            raise RequestError(
                "invalid_request",
                f"expires_at: unix seconds after now ({now_s}) and at most {EXPIRES_AT_MAX_S}",
            )
        grant = MandateGrant(
            account_id, merchant_id, amount_max_per_payment, amount_max_per_day, expires_at_s, now_s
        )
        return _expect(Mandate, await self._one(control=grant))

    async def revoke_mandate(self, account_id: str, mandate_id: str) -> Mandate:
        """Ends a mandate: payments under it are declined (`mandate_missing`) from now on."""
        op = MandateRevocation(account_id, mandate_id, int(time.time()))
        return _expect(Mandate, await self._one(control=op))

    def mandates_of(self, account_id: str) -> list[Mandate] | None:
        """An account's mandates, oldest first (revoked and expired ones too); None if there is
        no such account."""
        if self.ledger.account(account_id) is None:
            return None
        return self.ledger.mandates_of(account_id)

    def event(self, lsn: int) -> dict[str, Any] | None:
        result = self.results.get(lsn)
        return None if result is None else event_json(lsn, result)

    @property
    def failed(self) -> EngineFailedError | None:
        """Why the engine stopped (fail-stop), or None while it runs."""
        return self._failed

    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    def balance(self, account_id: str) -> tuple[str, int] | None:
        """(currency, balance) of an account, including the batch being made durable."""
        account = self.ledger.account(account_id)
        return None if account is None else (account.currency, account.balance)

    def _remember(
        self, lsn: int, result: PaymentResult | RefundResult, *, notify: bool = True
    ) -> None:
        """Keeps a durable result for replays and reads; its event goes to the outbox, and to
        the merchant's webhook if it has one (`notify=False`: a snapshot restores deliveries)."""
        self.results[lsn] = result
        if isinstance(result, PaymentResult):
            self._orders.setdefault((result.merchant_id, result.order_id), []).append(lsn)
        else:
            self._refunds.setdefault(result.payment_id, _Refunds()).add(lsn, result)
        self.outbox.add_event(result.merchant_id, lsn)
        merchant = self.merchants.get(result.merchant_id)
        if notify and merchant is not None and merchant.webhook_url is not None:
            self.outbox.schedule_new(merchant.id, lsn, result.created_s * 1000)

    def payments_for_order(self, merchant_id: str, order_id: str) -> list[PaymentResult]:
        """The durable payments a merchant made for one order id, oldest first."""
        lsns = self._orders.get((merchant_id, order_id), [])
        return [
            self._as_now(result)
            for lsn in lsns
            if isinstance(result := self.results[lsn], PaymentResult)
        ]

    def payment(self, payment_id_: str) -> PaymentResult | None:
        """A durable payment by id."""
        lsn = payment_lsn(payment_id_)
        result = None if lsn is None else self.results.get(lsn)
        return self._as_now(result) if isinstance(result, PaymentResult) else None

    def _as_now(self, payment: PaymentResult) -> PaymentResult:
        """A stored payment with what its durable refunds gave back so far."""
        refunds = self._refunds.get(payment.id)
        if refunds is None or not refunds.amount:
            return payment
        return payment._replace(amount_refunded=refunds.amount)

    def refund_lsns(self, payment_id_: str) -> list[int]:
        """The LSNs of a payment's durable refunds, declined ones included, oldest first."""
        refunds = self._refunds.get(payment_id_)
        return [] if refunds is None else refunds.lsns

    # ---- the pipeline -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue and self._failed is None:
                count = min(len(self._queue), self.batch_size_max)
                jobs = [self._queue.popleft() for _ in range(count)]
                try:
                    staged = self._stage(jobs)
                    self.stats.batches += 1
                    self.stats.batch_sizes.observe(len(jobs))
                    self.stats.requests += len(jobs)
                    self.stats.records += len(staged.payloads)
                except Exception as error:  # a bug: memory may hold half a batch, so stop
                    failure = self._stop(error, "a batch could not be applied")
                    for job in jobs:
                        job.answer(failure)
                    break
                await self._commit(staged)
                if self.lsn_next - 1 - self._snapshot_lsn >= self.snapshot_every_records:
                    await self._snapshot_between_batches()
            if self._failed is not None:
                self._reject_queued(self._failed)
            if self._closing and not self._queue:
                return

    def _stage(self, jobs: list[_Job]) -> _Staged:
        now_s = int(time.time())
        ops = self._parse(jobs, now_s)
        keyed: list[_Job] = []
        keys: list[bytes] = []
        fingerprints: list[bytes] = []
        tenants: list[str] = []
        for job, op in ops:
            if isinstance(op, _PaymentOp | _RefundOp | _AdminOp) and op.key is not None:
                keyed.append(job)
                keys.append(op.key)
                fingerprints.append(op.fingerprint)
                tenants.append(ADMIN_TENANT if isinstance(op, _AdminOp) else op.merchant.id)
        answers = self.index.reserve_batch(keys, fingerprints, now_s, tenants)
        answer_of = {id(job): answer for job, answer in zip(keyed, answers, strict=True)}
        staged = _Staged()
        for job, op in ops:
            answer = answer_of.get(id(job))
            if answer is None or answer[0] == _core.RESERVE_NEW:
                try:
                    self._check(op)
                except RequestError as error:
                    job.answer(error)
                    continue
                lsn = self.lsn_next
                result = self._apply(op, now_s, staged)
                slot = None if answer is None else answer[1]
                staged.done.append((job, result, slot, lsn))
                if slot is not None:
                    staged.slots.append(slot)
                    staged.refs.append(self.lsn_next - 1)
                    self._waiters[slot] = []
            else:
                self._answer_known(job, *answer)
        return staged

    def _parse(self, jobs: list[_Job], now_s: int) -> list[tuple[_Job, _Op]]:
        """Verifies, routes and parses the batch; refused jobs are answered here."""
        signed: list[tuple[_Job, SignedRequest]] = []
        for job in jobs:
            if job.request is None or job.merchant:
                continue
            try:
                # First: a key no client can sign (not printable ASCII, too long) is named as
                # such, not reported as the signature mismatch it would cause.
                if job.request.idempotency_key is not None:
                    _check_client_key(job.request.idempotency_key)
            except RequestError as error:
                job.answer(error)
                continue
            signed.append((job, job.request))
        verdicts = verify_requests(
            self.merchants.ring, [request for _, request in signed], now_s=now_s
        )
        payments = [(job, job.merchant) for job in jobs if job.merchant is not None]
        refunds: list[tuple[_Job, Merchant, str]] = []
        for (job, request), verdict in zip(signed, verdicts, strict=True):
            try:
                if isinstance(verdict, SignatureError):
                    raise RequestError(verdict.code, str(verdict), 401)
                merchant = self.merchants.by_kid[verdict]
                route = _route(request)
            except RequestError as error:
                job.answer(error)
                continue
            if route is None:
                payments.append((job, merchant))
            else:
                refunds.append((job, merchant, route))
        parsed = dict(self._parse_payments(payments) + self._parse_refunds(refunds))
        ops: list[tuple[_Job, _Op]] = []
        for job in jobs:
            if job.control is not None:
                ops.append((job, job.control))
            elif (op := parsed.get(id(job))) is not None:
                ops.append((job, op))
        return ops

    def _parse_payments(self, payments: list[tuple[_Job, Merchant]]) -> list[tuple[int, _Op]]:
        fields = _core.parse_payment_bodies(
            [job.request.body for job, _ in payments if job.request]
        )
        parsed: list[tuple[int, _Op]] = []
        for (job, merchant), item in zip(payments, fields, strict=True):
            if isinstance(item, str):
                job.answer(RequestError("invalid_request", item))
                continue
            merchant_id, order_id, payer, amount, currency, description, metadata, fingerprint = (
                item
            )
            if merchant_id != merchant.id:
                job.answer(
                    RequestError(
                        "merchant_mismatch",
                        f"merchant_id {merchant_id!r} is not the merchant of the signing key",
                        403,
                    ),
                )
                continue
            client_key = job.request.idempotency_key if job.request else None
            scope = f"k:{client_key}" if client_key else f"o:{order_id}"
            key = _idempotency_key(merchant.id, scope)
            op = _PaymentOp(
                merchant, order_id, payer, amount, currency, description, metadata, key, fingerprint
            )
            parsed.append((id(job), op))
        return parsed

    def _parse_refunds(self, refunds: list[tuple[_Job, Merchant, str]]) -> list[tuple[int, _Op]]:
        fields = _core.parse_refund_bodies(
            [job.request.body for job, _, _ in refunds if job.request]
        )
        parsed: list[tuple[int, _Op]] = []
        for (job, merchant, paid), item in zip(refunds, fields, strict=True):
            client_key = job.request.idempotency_key if job.request else None
            if isinstance(item, str):
                job.answer(RequestError("invalid_request", item))
                continue
            if client_key is None:
                # A refund has no natural scope (a payment may be refunded in parts): its signed
                # key is the scope, without which every resend of a captured refund refunds again.
                message = "a refund needs an Idempotency-Key, covered by a v2 signature"
                job.answer(RequestError("idempotency_key_required", message))
                continue
            if not self._refundable_by(paid, merchant):
                job.answer(RequestError("not_found", f"no refundable payment {paid}", 404))
                continue
            amount, reason, fingerprint = item
            key = _idempotency_key(merchant.id, f"r:{paid}:{client_key}")
            parsed.append((id(job), _RefundOp(merchant, paid, amount, reason, key, fingerprint)))
        return parsed

    def _refundable_by(self, paid: str, merchant: Merchant) -> bool:
        """Whether `merchant` may refund the payment: a durable payment it made, into its
        settlement account. The account alone does not say whose a payment is: a merchant added
        to the configuration file may settle into an account an admin-created merchant uses."""
        entry = self.ledger.payment(paid)
        made = self.results.get(payment_lsn(paid) or 0)
        return (
            entry is not None
            and made is not None
            and made.merchant_id == merchant.id
            and entry.settlement == merchant.settlement_account
        )

    def _answer_known(self, job: _Job, status: int, value: int) -> None:
        """Answers a request whose idempotency key the index already knows."""
        if status == _core.RESERVE_REPLAY:
            stored = self.results.get(value) or self._admin_results[value]
            if isinstance(stored, PaymentResult):
                stored = self._as_now(stored)
            job.answer(_replayed(stored))
        elif status == _core.RESERVE_IN_FLIGHT:
            self._waiters[value].append(job)
        elif status == _core.RESERVE_MISMATCH:
            job.answer(
                RequestError(
                    "idempotency_key_reused",
                    "this idempotency key was used with a different request",
                    422,
                ),
            )
        elif status == _core.RESERVE_TENANT_FULL:
            index = self.index
            job.answer(
                Overloaded(
                    f"this merchant holds its share of the idempotency index ({value} keys, "
                    f"{index.tenant_share_percent} % of {index.capacity_max}) and the index "
                    f"keeps one share free for other merchants; keys are kept "
                    f"{index.ttl_seconds} s"
                )
            )
        else:
            job.answer(Overloaded("the idempotency index is full"))

    # ---- applying (the same code runs live and on recovery) ---------------------------------

    def _check(self, op: _Op) -> None:
        """Refuses a change that cannot be applied, before anything is logged (RequestError)."""
        if isinstance(op, _MerchantOp):
            self.merchants.check_create(op.merchant)
            settlement = op.merchant.settlement_account
            if self.ledger.account(settlement) is None:
                raise RequestError("account_not_found", f"no account {settlement}", 400)
            if any(m.settlement_account == settlement for m in self.merchants.by_id.values()):
                # Refunds are authorised by the settlement account: it must be one merchant's.
                raise RequestError(
                    "settlement_account_in_use", f"{settlement} settles another merchant", 409
                )
        elif isinstance(op, _KeyOp) and op.kind == RecordType.KEY_ADDED:
            self.merchants.check_add_key(op.merchant_id, op.kid)
        elif isinstance(op, _KeyOp):
            self.merchants.check_revoke_key(op.merchant_id, op.kid)
        elif isinstance(op, _WebhookSecretOp) and op.kind == RecordType.WEBHOOK_SECRET_ROTATED:
            self.merchants.check_rotate_webhook_secret(op.merchant_id)
        elif isinstance(op, _WebhookSecretOp):
            self.merchants.check_revoke_previous_webhook_secret(op.merchant_id)
        elif isinstance(op, _DeliveriesOp | _RedeliveryOp):
            lsns = (
                [outcome.event_lsn for outcome in op.outcomes]
                if isinstance(op, _DeliveriesOp)
                else op.event_lsns
            )
            if unknown := [lsn for lsn in lsns if lsn not in self.results]:
                raise RequestError("not_found", f"no event {event_id(unknown[0])}", 404)
        elif isinstance(op, MandateGrant | MandateRevocation):
            self._check_mandate(op)

    def _check_mandate(self, op: MandateGrant | MandateRevocation) -> None:
        account = self.ledger.account(op.account_id)
        if account is None:
            raise RequestError("not_found", f"no account {op.account_id}", 404)
        if isinstance(op, MandateRevocation):
            mandate = self.ledger.mandate(op.mandate_id)
            if mandate is None or mandate.terms.account_id != op.account_id:
                raise RequestError("not_found", f"no mandate {op.mandate_id} of this account", 404)
            if mandate.revoked_s is not None:
                raise RequestError("mandate_revoked", f"{op.mandate_id} is already revoked", 409)
            return
        if account.owner is Owner.MERCHANT:
            raise RequestError(
                "account_is_settlement", "a merchant's settlement account never pays", 409
            )
        if self.merchants.get(op.merchant_id) is None:
            raise RequestError("merchant_not_found", f"no merchant {op.merchant_id}")
        current = self.ledger.current_mandate(op.account_id, op.merchant_id)
        if current is not None and not current.expired(op.created_s):
            raise RequestError(
                "mandate_exists", f"{current.id} lets {op.merchant_id} debit this account", 409
            )
        if len(self.ledger.mandates_of(op.account_id)) >= MANDATES_PER_ACCOUNT_MAX:
            raise RequestError(
                "too_many_mandates", f"an account holds at most {MANDATES_PER_ACCOUNT_MAX}", 409
            )

    def _apply(self, op: _Op, now_s: int, staged: _Staged) -> Applied:
        lsn = self.lsn_next
        self.lsn_next += 1
        result: Applied
        record: list[Any] | dict[str, Any]
        if isinstance(op, _PaymentOp):
            record = [
                op.merchant.id,
                op.order_id,
                op.payer,
                op.merchant.settlement_account,
                op.amount,
                op.currency,
                op.description,
                op.metadata,
                now_s,
                op.key.decode(),
                op.fingerprint.hex(),
            ]
            paid = self._replay_payment(lsn, record, consent=True)
            record.append(paid.failure_code)
            kind, result = RecordType.PAYMENT_WITH_CONSENT, paid
        elif isinstance(op, _RefundOp):
            record = [
                op.payment_id,
                op.merchant.id,
                op.amount,
                op.reason,
                now_s,
                op.key.decode() if op.key else None,
                op.fingerprint.hex(),
            ]
            refunded = self._replay_refund(lsn, record)
            record += [refunded.amount, refunded.failure_code]
            kind, result = RecordType.REFUND, refunded
        elif isinstance(op, _AdminOp):
            record = [op.account_id, op.currency, op.amount, op.overdraft]
            done = self._replay_admin(op.kind, record)
            if op.key is not None:
                keyed = {"key": op.key.decode(), "fingerprint": op.fingerprint.hex()}
                record.append({**keyed, "created_s": now_s})
            record.append(done.failure_code)
            kind, result = op.kind, done
        elif isinstance(op, MandateGrant | MandateRevocation):
            kind, record = _mandate_record(op)
            result = self._replay_mandate(kind, lsn, record)
        else:
            kind, record = _control_record(op)
            result = self._replay_control(kind, lsn, record)
        staged.types.append(kind)
        staged.payloads.append(orjson.dumps(record))
        return result

    def _replay_payment(self, lsn: int, record: list[Any], *, consent: bool) -> PaymentResult:
        """Applies a payment record; `consent`: under the consent rules (PAYMENT_WITH_CONSENT),
        else as payments were applied before them (PAYMENT)."""
        (
            merchant_id,
            order_id,
            payer,
            settlement,
            amount,
            currency,
            description,
            metadata,
            created_s,
        ) = record[:9]
        pid = payment_id(lsn)
        failure = (
            self.ledger.pay(
                lsn,
                payer,
                settlement,
                amount,
                currency,
                merchant_id=merchant_id,
                created_s=created_s,
            )
            if consent
            else self.ledger.pay_as_before_consent(lsn, payer, settlement, amount, currency)
        )
        return PaymentResult(
            pid,
            merchant_id,
            order_id,
            payer,
            amount,
            currency,
            _status(failure),
            failure,
            created_s,
            description,
            metadata,
        )

    def _replay_refund(self, lsn: int, record: list[Any]) -> RefundResult:
        paid, merchant_id, amount, reason, created_s = record[:5]
        applied, failure = self.ledger.refund(paid, amount)
        entry = self.ledger.payment(paid)
        currency = entry.currency if entry else ""
        return RefundResult(
            refund_id(lsn),
            paid,
            merchant_id,
            applied,
            currency,
            _status(failure),
            failure,
            created_s,
            reason,
        )

    def _replay_admin(self, kind: RecordType, record: list[Any]) -> AdminResult:
        account_id, currency, amount, overdraft = record[:4]
        if kind == RecordType.OPEN_ACCOUNT:
            failure = self.ledger.open_account(
                account_id, currency, overdraft, self._owner_of(account_id)
            )
        elif kind == RecordType.DEPOSIT:
            failure = self.ledger.deposit(account_id, amount, currency)
        else:
            failure = self.ledger.withdraw(account_id, amount, currency)
        account = self.ledger.account(account_id)
        balance = account.balance if account else 0
        return AdminResult(account_id, _status(failure), failure, balance)

    def _replay_control(self, kind: RecordType, lsn: int, record: list[Any]) -> Applied:
        """Applies a merchant, key or delivery change; its check has passed (or it is logged)."""
        if kind == RecordType.MERCHANT_CREATED:
            merchant = merchant_from_row(record)
            self.merchants.create(merchant)
            self.ledger.settles_merchant(merchant.settlement_account)
            return merchant
        if kind == RecordType.KEY_ADDED:
            merchant_id, kid, secret = record
            return self.merchants.add_key(merchant_id, kid, bytes.fromhex(secret))
        if kind == RecordType.KEY_REVOKED:
            return self.merchants.revoke_key(*record)
        if kind == RecordType.WEBHOOK_SECRET_ROTATED:
            merchant_id, secret = record
            return self.merchants.rotate_webhook_secret(merchant_id, bytes.fromhex(secret))
        if kind == RecordType.PREVIOUS_WEBHOOK_SECRET_REVOKED:
            return self.merchants.revoke_previous_webhook_secret(*record)
        if kind == RecordType.DELIVERIES:
            for outcome in record:
                event_lsn = outcome[0]
                self.outbox.record(self.results[event_lsn].merchant_id, DeliveryOutcome(*outcome))
        elif kind == RecordType.REDELIVERY:
            at_ms, event_lsns = record
            for event_lsn in event_lsns:
                self.outbox.schedule(self.results[event_lsn].merchant_id, event_lsn, at_ms)
        else:
            raise ValueError(f"record type {kind!r} is not a control record")
        return Recorded(lsn)

    def _replay_mandate(self, kind: RecordType, lsn: int, record: dict[str, Any]) -> Mandate:
        """Applies a checked (or logged) mandate grant or revocation."""
        if kind == RecordType.MANDATE_GRANTED:
            return self.ledger.grant_mandate(lsn, MandateGrant.from_record(record))
        return self.ledger.revoke_mandate(record["mandate_id"], record["revoked_at"])

    def _owner_of(self, account_id: str) -> Owner:
        """A merchant's settlement account is the merchant's; any other account a customer's."""
        settles = any(m.settlement_account == account_id for m in self.merchants.by_id.values())
        return Owner.MERCHANT if settles else Owner.CUSTOMER

    def _mark_settlement_accounts(self) -> None:
        """Gives the settlement accounts of all merchants their owner: a snapshot written before
        owners were kept has none, and a merchant may be new in the configuration file."""
        for merchant in self.merchants.by_id.values():
            self.ledger.settles_merchant(merchant.settlement_account)

    # ---- durability -------------------------------------------------------------------------

    async def _commit(self, staged: _Staged) -> None:
        if not staged.payloads:
            self._publish(staged)
            return
        while len(self._syncing) >= PIPELINE_BATCHES_MAX:
            await asyncio.wait({self._syncing[0]})
        loop = asyncio.get_running_loop()
        # The engine numbered these records as it applied them (ids carry their LSN).
        lsn_first = self.lsn_next - len(staged.payloads)
        # The single log thread writes batches in the order they are handed over.
        written = loop.run_in_executor(
            self._log_thread, self._append, lsn_first, staged.types, staged.payloads
        )
        self._syncing.append(asyncio.create_task(self._finish(written, staged)))

    def _append(self, lsn_first: int, types: list[int], payloads: list[bytes]) -> int:
        """Runs in the log thread: once a write failed, nothing more is written. The log must
        number the batch from `lsn_first`, as the engine did: checked before the write (nothing
        misnumbered reaches the disk) and on the LSN the writer reports."""
        if self._log_broken:
            raise EngineFailedError("an earlier write failed")
        writer = self._writer()
        started_s = time.perf_counter()
        bytes_before = writer.bytes_written
        try:
            _check_lsn_first(lsn_first, writer.lsn_next, "before the write")
            first = writer.append(types, payloads)
            _check_lsn_first(lsn_first, first, "as written")
        except BaseException:
            self._log_broken = True
            raise
        seconds = time.perf_counter() - started_s
        # Plain integer and float updates: atomic enough under the GIL for monitoring.
        self.stats.log_writes += 1
        self.stats.log_bytes += writer.bytes_written - bytes_before
        self.stats.log_write_seconds += seconds
        self.stats.log_write_seconds_max = max(self.stats.log_write_seconds_max, seconds)
        self.stats.log_write_latency.observe(seconds)
        return first

    async def _finish(self, written: asyncio.Future[int], staged: _Staged) -> None:
        """Answers a batch once the log thread has made it durable (or fails the engine)."""
        try:
            await written
        except Exception as error:  # any failed write stops the engine
            self._fail(error, staged)
        else:
            self._publish(staged)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._syncing.remove(task)

    def _publish(self, staged: _Staged) -> None:
        """The batch is durable: remember its results, complete its keys, answer its callers."""
        for _, result, slot, lsn in staged.done:
            if isinstance(result, PaymentResult | RefundResult):
                self._remember(lsn, result)
            elif isinstance(result, AdminResult) and slot is not None:
                self._admin_results[lsn] = result
        self.index.complete_batch(staged.slots, staged.refs)
        for job, result, slot, _ in staged.done:
            job.answer(result)
            if slot is not None:
                for waiter in self._waiters.pop(slot):
                    waiter.answer(_replayed(result))

    def _stop(self, error: BaseException, why: str) -> EngineFailedError:
        """Fail-stop: from now on the engine answers nothing but this error."""
        if self._failed is None:
            log.critical("%s, stopping the engine: %s", why, error)
            self._failed = EngineFailedError(f"{why}: {error}")
            self._failed.__cause__ = error
        self._wakeup.set()
        return self._failed

    def _fail(self, error: BaseException, staged: _Staged) -> None:
        failure = self._stop(error, "the write-ahead log failed")
        for job, _, slot, _ in staged.done:
            job.answer(failure)
            for waiter in self._waiters.pop(slot, []) if slot is not None else []:
                waiter.answer(failure)

    def _reject_queued(self, failure: EngineFailedError) -> None:
        """After a stop: refuses what is queued and the retries waiting for a first request."""
        while self._queue:
            self._queue.popleft().answer(failure)
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.answer(failure)

    # ---- recovery, snapshots, shutdown ------------------------------------------------------

    def _recover(self) -> None:
        datadir.warn_if_open_to_others(self.directory)
        wal.remove_temp_files(self.directory)
        lsn_after = 0
        loaded = wal.load_snapshot(self.directory)
        if loaded is not None:
            lsn_after = self._snapshot_lsn = loaded[0]
            self._restore(*loaded)
        replayed = 0
        # The newest snapshot's name says how far the log reached, even when its content is
        # damaged and recovery falls back to an older one: a log ending earlier lost records.
        lsn_reached = wal.newest_snapshot_lsn(self.directory)
        for records in wal.replay(self.directory, lsn_after, lsn_reached):
            self._replay_records(records)
            replayed += len(records)
        self.check_invariants()
        self.index.expire(int(time.time()))
        self._log = wal.WalWriter(
            self.directory,
            self.lsn_next,
            sync=self.fsync == "always",
            segment_bytes_max=self.segment_bytes_max,
        )
        log.info(
            "recovered to LSN %d (snapshot %d, %d records replayed)",
            self.lsn_next - 1,
            lsn_after,
            replayed,
        )

    def check_invariants(self) -> None:
        """The ledger's invariants, and what only the payments' results tell (the ledger knows
        neither whose a payment is nor when it was made): each payment under a mandate was made
        by the mandate's merchant, before the mandate's expiry. Raises AssertionError."""
        self.ledger.check_invariants()
        # From the durable results (payments not yet durable have none): the ledger holds every
        # payment that succeeded, and checks them all in one native call.
        made = [
            (lsn, result.merchant_id, result.created_s)
            for lsn, result in self.results.items()
            if result.failure_code is None and result.__class__ is PaymentResult
        ]
        self.ledger.check_payments_made(
            [lsn for lsn, _, _ in made], [m for _, m, _ in made], [c for _, _, c in made]
        )

    def _replay_records(self, records: list[wal.Record]) -> None:
        keys: list[tuple[bytes, bytes, int, int]] = []
        for record in records:
            if record.lsn != self.lsn_next:
                raise AssertionError(f"replay expected LSN {self.lsn_next}, got {record.lsn}")
            self.lsn_next += 1
            fields = orjson.loads(record.payload)
            kind = RecordType(record.type)
            if kind in CONTROL_RECORDS:
                self._replay_logged_control(kind, record.lsn, fields)
                continue
            if kind in MANDATE_RECORDS:
                self._replay_mandate(kind, record.lsn, fields)
                continue
            result: Result
            if kind in PAYMENT_RECORDS:
                consent = kind == RecordType.PAYMENT_WITH_CONSENT
                result = self._replay_payment(record.lsn, fields, consent=consent)
            elif kind == RecordType.REFUND:
                result = self._replay_refund(record.lsn, fields)
                if result.amount != fields[7]:
                    raise ReplayMismatchError(
                        f"replay of LSN {record.lsn} refunded {result.amount}, "
                        f"the log says {fields[7]}"
                    )
            else:
                result = self._replay_admin(kind, fields)
            if _failure(fields[-1]) != result.failure_code:
                raise ReplayMismatchError(
                    f"replay of LSN {record.lsn} gave {result.failure_code or 'success'}, "
                    f"the log says {'it succeeded' if fields[-1] is None else fields[-1]}"
                )
            key = _logged_key(kind, fields)
            if isinstance(result, PaymentResult | RefundResult):
                self._remember(record.lsn, result)
            elif key is not None:
                self._admin_results[record.lsn] = result
            if key is not None:
                keys.append((*key, record.lsn))
        self._restore_keys(keys)

    def _replay_logged_control(self, kind: RecordType, lsn: int, fields: list[Any]) -> None:
        try:
            self._replay_control(kind, lsn, fields)
        except (RequestError, ValueError, KeyError) as error:
            # The log holds it, so it applied once: the configuration file changed since.
            detail = error.message if isinstance(error, RequestError) else str(error)
            message = f"the {kind.name} record at LSN {lsn} does not apply: {detail}"
            raise ValueError(message) from None

    def _restore_keys(self, keys: list[tuple[bytes, bytes, int, int]]) -> None:
        """Re-reserves and completes logged idempotency keys, a run of equal times at a time."""
        start = 0
        while start < len(keys):
            end = start
            while end < len(keys) and keys[end][2] == keys[start][2]:
                end += 1
            run = keys[start:end]
            # Logged keys were accepted once: over a share (changed since) they are kept all the
            # same, or a retry of their request would apply twice.
            answers = self.index.reserve_batch(
                [k for k, _, _, _ in run],
                [f for _, f, _, _ in run],
                run[0][2],
                [self._tenant_of(lsn) for _, _, _, lsn in run],
                enforce_shares=False,
            )
            slots = [slot for status, slot in answers if status == _core.RESERVE_NEW]
            refs = [
                lsn
                for (status, _), (_, _, _, lsn) in zip(answers, run, strict=True)
                if status == _core.RESERVE_NEW
            ]
            self.index.complete_batch(slots, refs)
            start = end

    def _tenant_of(self, lsn: int) -> str:
        """Whose share of the idempotency index the key logged at `lsn` counts in."""
        result = self.results.get(lsn)
        return ADMIN_TENANT if result is None else result.merchant_id

    def _snapshot_payload(self) -> bytes:
        state = {
            "lsn": self.lsn_next - 1,
            # Every field of each result but `replayed`; its LSN is in its id.
            "results": [list(result[:-1]) for result in self.results.values()],
            "admin_results": [
                [lsn, result.account_id, result.status, result.failure_code, result.balance]
                for lsn, result in self._admin_results.items()
            ],
            "merchants": self.merchants.to_snapshot(),
            "deliveries": self.outbox.to_snapshot(),
        }
        encoded = orjson.dumps(state)
        # The ledger in its native format (rust/state/snapshot.rs), framed like the state.
        ledger = self.ledger.to_snapshot()
        return b"".join(
            (
                SNAPSHOT_STATE_LEN.pack(len(encoded)),
                encoded,
                SNAPSHOT_STATE_LEN.pack(len(ledger)),
                ledger,
                self.index.dump(),
            )
        )

    def _restore(self, lsn: int, payload: bytes) -> None:
        (length,) = SNAPSHOT_STATE_LEN.unpack_from(payload)
        start = SNAPSHOT_STATE_LEN.size
        state = orjson.loads(payload[start : start + length])
        if state["lsn"] != lsn:
            raise ValueError(f"snapshot for LSN {lsn} holds state of LSN {state['lsn']}")
        start += length
        if "ledger" in state:  # written before the ledger was native: its JSON rows
            self.ledger = Ledger.from_snapshot(state["ledger"])
        else:
            (length,) = SNAPSHOT_STATE_LEN.unpack_from(payload, start)
            start += SNAPSHOT_STATE_LEN.size
            self.ledger = Ledger.from_snapshot(payload[start : start + length])
            start += length
        # Snapshots written before merchants and deliveries were logged have neither.
        self.merchants.restore(state.get("merchants", []))
        self._mark_settlement_accounts()
        for row in state["results"]:
            result = _result_from_row(row)
            self._remember(_lsn_of(result), result, notify=False)
        # Snapshots written before deposits took idempotency keys have none.
        for admin_lsn, account_id, status, failure, balance in state.get("admin_results", []):
            self._admin_results[admin_lsn] = AdminResult(
                account_id, Status(status), _failure(failure), balance
            )
        self.outbox.restore(state.get("deliveries", []))
        # The configured share, not the one the snapshot was taken with.
        self.index = _core.IdempotencyIndex.load(payload[start:], self.index.tenant_share_percent)
        self.lsn_next = lsn + 1

    async def _snapshot_between_batches(self) -> None:
        """Lets the batches in flight become durable, then snapshots in the log thread. A failed
        snapshot is logged, not fatal: the log still holds everything."""
        while self._syncing:
            await asyncio.wait({self._syncing[0]})
        if self._failed is not None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._log_thread, self.snapshot)
        except OSError as error:
            log.error(
                "snapshot at LSN %d failed, the log keeps everything: %s", self.lsn_next - 1, error
            )
            self._snapshot_lsn = self.lsn_next - 1

    def snapshot(self) -> Path:
        """Writes a snapshot of the durable state and drops the log segments it makes unneeded.

        Only between batches: call it when nothing is being made durable (as `close` does).
        """
        if self._syncing:
            raise RuntimeError("a snapshot must wait until no batch is being written")
        path = wal.write_snapshot(self.directory, self.lsn_next - 1, self._snapshot_payload())
        self._snapshot_lsn = self.lsn_next - 1
        self._writer().drop_segments_before(wal.oldest_kept_snapshot_lsn(self.directory) + 1)
        return path

    def _writer(self) -> wal.WalWriter:
        if self._log is None:
            raise RuntimeError("the log opens when recovery has finished")
        return self._log

    async def close(self, *, snapshot: bool = True) -> None:
        """Stops taking requests, finishes the queued ones, snapshots and closes the log."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        if self._runner is not None:
            await self._runner
        while self._syncing:
            await asyncio.wait({self._syncing[0]})
        if self._log is not None:
            if self._failed is None and snapshot:
                await asyncio.get_running_loop().run_in_executor(self._log_thread, self.snapshot)
            with contextlib.suppress(OSError):
                self._log.close()
        self._log_thread.shutdown(wait=True)


CONTROL_RECORDS = frozenset(
    (
        RecordType.MERCHANT_CREATED,
        RecordType.KEY_ADDED,
        RecordType.KEY_REVOKED,
        RecordType.DELIVERIES,
        RecordType.REDELIVERY,
        RecordType.WEBHOOK_SECRET_ROTATED,
        RecordType.PREVIOUS_WEBHOOK_SECRET_REVOKED,
    )
)


def _mandate_record(op: MandateGrant | MandateRevocation) -> tuple[RecordType, dict[str, Any]]:
    kind = (
        RecordType.MANDATE_GRANTED if isinstance(op, MandateGrant) else RecordType.MANDATE_REVOKED
    )
    return kind, op.record()


def _control_record(op: _ControlOp) -> tuple[RecordType, list[Any]]:
    """The log record of a merchant, key or delivery change."""
    if isinstance(op, _MerchantOp):
        return RecordType.MERCHANT_CREATED, merchant_row(op.merchant)
    if isinstance(op, _KeyOp | _WebhookSecretOp):
        names = [op.merchant_id, op.kid] if isinstance(op, _KeyOp) else [op.merchant_id]
        return op.kind, [*names, op.secret.hex()] if op.secret else names
    if isinstance(op, _DeliveriesOp):
        return RecordType.DELIVERIES, [list(outcome) for outcome in op.outcomes]
    if isinstance(op, _RedeliveryOp):
        return RecordType.REDELIVERY, [op.at_ms, list(op.event_lsns)]
    raise TypeError(f"{op!r} is not a control change")


def _check_lsn_first(engine_lsn: int, log_lsn: int, when: str) -> None:
    if log_lsn != engine_lsn:
        raise AssertionError(
            f"the engine numbered a batch from LSN {engine_lsn}, the log from {log_lsn} ({when})"
        )


SECRET_REDACTED = "<secret>"  # noqa: S105 (what a printed secret is replaced by)


def named(kind: RecordType, fields: list[Any] | dict[str, Any]) -> dict[str, Any]:
    """A record's fields by name (`RECORD_FIELDS`). Fields beyond the names (a record newer
    than this code) are only counted: one of them could be a secret."""
    if isinstance(fields, dict):
        return dict(fields)  # a record that names its own fields (mandates)
    names = RECORD_FIELDS.get(kind, ())
    if _admin_keyed(kind, fields):
        names = _ADMIN_KEYED_RECORD_FIELDS
    if kind == RecordType.DELIVERIES:
        return {"outcomes": [_named_fields(names, outcome) for outcome in fields]}
    return _named_fields(names, fields)


def _named_fields(names: tuple[str, ...], fields: list[Any]) -> dict[str, Any]:
    by_name = dict(zip(names, fields, strict=False))
    if len(fields) > len(names):
        by_name["unnamed_fields"] = len(fields) - len(names)
    return by_name


def redacted(kind: RecordType, fields: list[Any] | dict[str, Any]) -> dict[str, Any]:
    """A record's fields by name with its secrets replaced, for printing (`instapay wal dump`)."""
    by_name = named(kind, fields)
    for name in SECRET_RECORD_FIELDS & by_name.keys():
        value = by_name[name]
        if isinstance(value, dict):
            by_name[name] = dict.fromkeys(value, SECRET_REDACTED)
        elif value is not None:
            by_name[name] = SECRET_REDACTED
    return by_name


T = TypeVar("T")


def _expect(kind: type[T], value: object) -> T:
    """The pipeline's answer, of the type the operation produces; anything else is a bug."""
    if not isinstance(value, kind):
        raise TypeError(f"expected a {kind.__name__}, the pipeline produced {value!r}")
    return value


def _result_from_row(row: list[Any]) -> PaymentResult | RefundResult:
    """A result from its snapshot row (its fields but `replayed`, enums as their values)."""
    kind = PaymentResult if row[0].startswith(PAYMENT_ID_PREFIX) else RefundResult
    status_at = kind._fields.index("status")
    row[status_at] = Status(row[status_at])
    row[status_at + 1] = _failure(row[status_at + 1])
    return kind(*row)


def _lsn_of(result: PaymentResult | RefundResult) -> int:
    return int(result.id.rpartition("_")[2])


def _money_op(
    kind: RecordType, account_id: str, amount: int, currency: str, client_key: str | None
) -> _AdminOp:
    """A deposit or withdrawal; with a client key, scoped apart from every merchant's keys (no
    merchant id is empty) and fingerprinted by what it moves."""
    _check_account(account_id, currency)
    _check_amount(amount)
    if client_key is None:
        return _AdminOp(kind, account_id, currency, amount)
    _check_client_key(client_key)
    key = _idempotency_key("", f"a:{client_key}")
    fingerprint = _core.sha256(orjson.dumps([kind, account_id, currency, amount]))
    return _AdminOp(kind, account_id, currency, amount, key=key, fingerprint=fingerprint)


# An admin record is [account, currency, amount, overdraft, failure]; one sent with an
# Idempotency-Key has {"key", "fingerprint", "created_s"} before the failure.
def _admin_keyed(kind: RecordType, fields: list[Any]) -> bool:
    """Whether a record is a keyed deposit's or withdrawal's."""
    return (
        kind in (RecordType.DEPOSIT, RecordType.WITHDRAW)
        and len(fields) == len(_ADMIN_KEYED_RECORD_FIELDS)
        and isinstance(fields[4], dict)
    )


def _logged_key(kind: RecordType, fields: list[Any]) -> tuple[bytes, bytes, int] | None:
    """The idempotency key a logged record reserved: (key, fingerprint, reserved at), or None."""
    if kind in PAYMENT_RECORDS:
        key, fingerprint, created_s = fields[9], fields[10], fields[8]
    elif kind == RecordType.REFUND:
        key, fingerprint, created_s = fields[5], fields[6], fields[4]
    elif _admin_keyed(kind, fields):
        keyed = fields[4]
        key, fingerprint, created_s = keyed["key"], keyed["fingerprint"], keyed["created_s"]
    else:
        return None
    return None if key is None else (key.encode(), bytes.fromhex(fingerprint), created_s)


def _replayed(result: Applied) -> Result:
    """A stored result answered again to a retry, marked as such."""
    if isinstance(result, AdminResult):
        return replace(result, replayed=True)
    if isinstance(result, PaymentResult | RefundResult):
        return result._replace(replayed=True)
    raise TypeError(f"a keyed request produced {result!r}")


def _signed(result: Applied) -> PaymentResult | RefundResult:
    """The result of a signed request; anything else is a bug in the pipeline."""
    if not isinstance(result, PaymentResult | RefundResult):
        raise TypeError(f"a signed request produced {result!r}")
    return result


def _route(request: SignedRequest) -> str | None:
    """None for a payment; the payment id for a refund. RequestError for anything else."""
    if request.method != "POST":
        raise RequestError("method_not_allowed", f"{request.method} is not accepted here", 405)
    if request.path == PAYMENTS_PATH:
        return None
    if (match := REFUNDS_PATH.fullmatch(request.path)) and payment_lsn(match.group(1)) is not None:
        return match.group(1)
    raise RequestError("not_found", f"no such endpoint: {request.path}", 404)


def _is_id(text: str) -> bool:
    """DESIGN.md's id rule: 1 to 255 printable ASCII characters, no spaces."""
    return (
        1 <= len(text) <= _core.ID_LEN_MAX
        and text.isascii()
        and text.isprintable()
        and " " not in text
    )


def _check_id(name: str, value: str) -> None:
    if not _is_id(value):
        raise RequestError(
            "invalid_request", f"{name}: 1 to 255 printable ASCII characters without spaces"
        )


# Long enough for any real endpoint, short enough to keep the log and snapshots small.
WEBHOOK_URL_LEN_MAX = 2048


def _check_webhook_url(url: str) -> None:
    try:
        parsed = yarl.URL(url)
        host = parsed.host
    except (TypeError, ValueError):  # UnicodeError too: a host that is not valid IDNA
        parsed, host = None, None
    if (
        parsed is None
        or len(url) > WEBHOOK_URL_LEN_MAX
        or parsed.scheme not in ("http", "https")
        or not host
        or not url.isascii()
        or not url.isprintable()
    ):
        raise RequestError(
            "invalid_request",
            f"webhook_url: an absolute http(s) URL of at most {WEBHOOK_URL_LEN_MAX} characters",
        )


def _check_account(account_id: str, currency: str) -> None:
    _check_id("account id", account_id)
    if not (
        len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()
    ):
        raise RequestError("invalid_request", "currency: an ISO 4217 code of 3 uppercase letters")


def _check_amount(amount: int, name: str = "amount") -> None:
    if (
        isinstance(amount, bool)
        or not isinstance(amount, int)
        or not 1 <= amount <= _core.AMOUNT_MAX
    ):
        raise RequestError("invalid_request", f"{name}: an integer from 1 to 10^15 (minor units)")
