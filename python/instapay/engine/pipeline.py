"""The payment engine: signed requests in, durable results out, through one batched pipeline.

::

    submit ─► queue ─► batch ─► verify ─► parse ─► reserve ─► apply ─► encode ─► log ─► results
                                └──── one native call per run of signed requests ───┘  (one write
                                      (control ops: their handlers, in log order)       + one
                                                                                        fdatasync,
                                                                                        log thread)

While the log thread makes batch k durable, the event loop stages batch k+1 (at most
`PIPELINE_BATCHES_MAX` batches wait for the disk). A result is handed back, and its idempotency key
completed, only once its record is durable; a retry of a request still in flight waits for the
first one's result. A write or fsync error stops the engine for good (fail-stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from instapay import _core
from instapay.engine import handlers, hot, intake, rebuild, records, recovery
from instapay.engine.api import EngineApi
from instapay.engine.jobs import Answers, Job
from instapay.engine.ops import (
    ADMIN_TENANT,
    AdminOp,
    Applied,
    ControlOp,
    PaymentOp,
    RefundOp,
)
from instapay.engine.results import RESULT_TYPES
from instapay.engine.state import State
from instapay.engine.stats import EngineStats
from instapay.mandates import Mandate
from instapay.model import (
    AdminResult,
    EngineConfig,
    EngineFailedError,
    Merchant,
    Overloaded,
    PaymentResult,
    Recorded,
    RefundResult,
    RequestError,
    Result,
)
from instapay.outbox import event_json, finished_delivery_json
from instapay.protocol import PAYMENTS_PATH, payment_lsn
from instapay.signing import SignedRequest
from instapay.storage import datadir, forked, snapshots, wal
from instapay.storage.history import history_path
from instapay.storage.history.prefetch import HistoryPrefetcher
from instapay.storage.history.projector import HistoryPolicy, HistoryProjector
from instapay.storage.history.reads import HistoryUnavailableError

log = logging.getLogger(__name__)

BATCH_SIZE_MAX_DEFAULT = 1024

QUEUE_DEPTH_MAX_DEFAULT = 65_536

IDEMPOTENCY_CAPACITY_DEFAULT = 1_000_000

# A snapshot every this many records bounds the log a recovery replays (about 12 s per million
# records today) and lets old segments go; a forked child writes it while the pipeline goes on.
SNAPSHOT_EVERY_RECORDS_DEFAULT = 1_000_000

# Batches applied in memory but not yet durable; bounds memory and the work a crash discards.
PIPELINE_BATCHES_MAX = 2

# How long a read of a result memory forgot waits for history.db to hold every durable record.
HISTORY_READ_TIMEOUT_S = 5.0


FsyncMode = Literal["always", "off"]


@dataclass(slots=True)
class _Staged:
    """One batch applied in memory, waiting for its records to be durable: its records as WAL
    frames in LSN order, from `lsn_first` on."""

    lsn_first: int
    frames: list[bytes] = field(default_factory=list)
    records: int = 0
    # Each run of signed requests, staged natively: its jobs and what the stage made of them.
    runs: list[tuple[list[Job], _core.StagedBatch]] = field(default_factory=list)
    # Each control job with its result, its slot if it reserved a new idempotency key, and its LSN.
    done: list[tuple[Job, Applied, int | None, int]] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    refs: list[int] = field(default_factory=list)


def _is_signed(job: Job) -> bool:
    return job.control is None


class Engine(EngineApi):
    """Open with `Engine.open(...)`; see the module docstring for the pipeline. The admin and
    dispatcher operations and the reads are `EngineApi`'s."""

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
        idempotency_ttl_s: int = _core.IDEMPOTENCY_TTL_SECONDS_DEFAULT,
        history: bool = True,
        history_policy: HistoryPolicy | None = None,
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
        # A state as recovery starts from: this one, and a scratch one a rebuild of history.db
        # loads a snapshot into.
        self._new_state = functools.partial(State, config, idempotency_capacity, idempotency_ttl_s)
        self.state = self._new_state()
        # The second up to which the index's keys past their TTL were dropped.
        self._keys_expired_s = 0
        self.stats = EngineStats()
        self._queue: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        # Retries waiting for an in-flight first request, by its idempotency slot.
        self._waiters: dict[int, list[Job]] = {}
        # One task per batch being made durable, oldest first; each removes itself when done.
        self._syncing: deque[asyncio.Task[None]] = deque()
        self._log_thread = ThreadPoolExecutor(1, thread_name_prefix="instapay-log")
        self._log: wal.WalWriter | None = None
        self._log_broken = False
        self._failed: EngineFailedError | None = None
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        # The forked child writing a snapshot, while there is one.
        self._snapshotting: asyncio.Task[None] | None = None
        self.history_enabled = history
        self.history_policy = history_policy or HistoryPolicy()
        # The projector of history.db (opened with the log once recovered), and the event its
        # thread sets after each transaction.
        self._history: HistoryProjector | None = None
        self._history_advanced = asyncio.Event()
        # The bounded hot state (engine/hot.py): only with a history to read the rest from.
        self.hot = hot.HotWindow(self.history_policy.hot_results_max)
        self._prefetcher: HistoryPrefetcher | None = None
        # Answers read from history.db for retries of results memory forgot, while under way.
        self._reading: set[asyncio.Task[None]] = set()

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
        idempotency_ttl_s: int = _core.IDEMPOTENCY_TTL_SECONDS_DEFAULT,
        history: bool = True,
        history_policy: HistoryPolicy | None = None,
    ) -> AsyncIterator[Engine]:
        """Recovers the data directory, runs the engine, and on exit drains it and snapshots
        (`snapshot_on_close=False` leaves only the log, as a crash would: the next open replays
        it all). `history`: project the log into history.db (off only for a benchmark's
        baseline); `history_policy`: its `[history]` settings."""
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
            idempotency_ttl_s=idempotency_ttl_s,
            history=history,
            history_policy=history_policy,
        )
        try:
            await asyncio.to_thread(engine._recover, asyncio.get_running_loop())
            engine._runner = asyncio.create_task(engine._run(), name="instapay-engine")
            try:
                yield engine
            finally:
                await engine.close(snapshot=snapshot_on_close)
        finally:
            os.close(lock)  # releases the lock

    def _enqueue(self, job: Job) -> None:
        try:
            if self._failed is not None:
                raise self._failed
            if self._closing:
                raise RuntimeError("the engine is closed")
            if len(self._queue) >= self.queue_depth_max:
                raise self._queue_full()
            if _is_signed(job) and (lagging := self._history_lagging()) is not None:
                raise lagging
        except BaseException:
            self.hot.unpin(job.pinned)
            raise
        self._queue.append(job)
        self._wakeup.set()

    def _enqueue_all(self, jobs: list[Job]) -> None:
        """`_enqueue` for many jobs in one go: those beyond the queue's depth are answered
        Overloaded."""
        refused = self._failed or (RuntimeError("the engine is closed") if self._closing else None)
        if refused is not None:
            for job in jobs:
                self.hot.unpin(job.pinned)
            raise refused
        lagging = self._history_lagging()
        room = 0 if lagging is not None else max(0, self.queue_depth_max - len(self._queue))
        self._queue.extend(jobs[:room])
        for job in jobs[room:]:
            self.hot.unpin(job.pinned)
            job.answer(lagging or self._queue_full())
        self._wakeup.set()

    async def _pin_refunded(self, jobs: list[Job]) -> None:
        """Before refunds are queued: each one's payment is put back into memory if memory
        forgot it (a read of history.db, off the event loop), then pinned there until the
        refund is staged, so the single writer never waits on a read (engine/hot.py)."""
        if self._prefetcher is None:
            return
        try:
            for job in jobs:
                request = job.request
                if request is None or request.method != "POST" or request.path == PAYMENTS_PATH:
                    continue
                lsn = hot.refunded_lsn(request)
                if lsn is not None:
                    await hot.prefetch(self.state, self._prefetcher, lsn)
                    job.pinned = lsn
                    self.hot.pin(lsn)
        except BaseException:  # none is queued: no pin may outlive them
            for job in jobs:
                self.hot.unpin(job.pinned)
                job.pinned = None
            raise

    def _queue_full(self) -> Overloaded:
        return Overloaded(f"the engine queue holds {self.queue_depth_max} requests")

    def _history_lagging(self) -> Overloaded | None:
        """Backpressure: payments and refunds are refused while the history projector is more
        than `lag_records_max` records behind the log (control ops pass: they are few, and the
        dispatcher's delivery records must never wait on the projector)."""
        if self._history is None:
            return None
        lag = self.state.lsn_next - 1 - self._history.lsn
        if lag <= self.history_policy.lag_records_max:
            return None
        return Overloaded(f"the history projector is {lag} records behind")

    @property
    def history_lsn(self) -> int:
        """Every record up to this LSN is committed in history.db (0 without a history)."""
        return 0 if self._history is None else self._history.lsn

    async def history_caught_up(self, timeout_s: float) -> bool:
        """Waits until every record durable when called is in history.db (read-your-writes
        for the reads of the history); False on timeout, or without a history."""
        history = self._history
        if history is None:
            return False
        target = history.log_end
        try:
            async with asyncio.timeout(timeout_s):
                while history.lsn < target:
                    self._history_advanced.clear()
                    if history.lsn < target:
                        await self._history_advanced.wait()
        except TimeoutError:
            return False
        return True

    @property
    def history(self) -> HistoryProjector | None:
        """The history projector (its LSNs and stats, for monitoring), None without a history."""
        return self._history

    async def _one(self, **parts: Any) -> Applied:
        answers = Answers(1)
        job = Job(answers, 0, **parts)
        await self._pin_refunded([job])
        self._enqueue(job)
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
        return await self._submit_all(requests, None)

    async def submit_authenticated(
        self, merchant: Merchant, bodies: Sequence[bytes]
    ) -> list[PaymentResult | RefundResult | RequestError | Overloaded]:
        """Payments of `merchant` whose signature the caller has checked: the batch endpoint,
        where one signature covers every body. Idempotency scope: (merchant, order id)."""
        requests = [SignedRequest(None, "POST", PAYMENTS_PATH, body) for body in bodies]
        return await self._submit_all(requests, merchant)

    async def _submit_all(
        self, requests: Sequence[SignedRequest], merchant: Merchant | None
    ) -> list[PaymentResult | RefundResult | RequestError | Overloaded]:
        """Queues a job per request (`merchant`: the caller authenticated them) and waits for
        all their answers."""
        if not requests:
            return []
        answers = Answers(len(requests))
        jobs = [Job(answers, at, request, merchant=merchant) for at, request in enumerate(requests)]
        if merchant is None:  # the batch endpoint's are payments
            await self._pin_refunded(jobs)
        self._enqueue_all(jobs)
        results: list[PaymentResult | RefundResult | RequestError | Overloaded] = []
        for answer in await answers.future:
            if isinstance(answer, EngineFailedError):
                raise answer
            if answer is None or isinstance(answer, AdminResult | Merchant | Recorded | Mandate):
                raise TypeError(f"a signed request was answered with {answer!r}")
            results.append(answer)
        return results

    async def control(self, op: ControlOp) -> Applied:
        # Refused here, not in a batch, where an op without a handler would stop the engine.
        if op.__class__ not in handlers.BY_OP or isinstance(op, PaymentOp | RefundOp):
            raise TypeError(f"{op.__class__.__name__} is not a control operation")
        return await self._one(control=op)

    @property
    def failed(self) -> EngineFailedError | None:
        """Why the engine stopped (fail-stop), or None while it runs."""
        return self._failed

    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

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
                    self.stats.records += staged.records
                except Exception as error:  # a bug: memory may hold half a batch, so stop
                    failure = self._stop(error, "a batch could not be applied")
                    for job in jobs:
                        job.answer(failure)
                    break
                finally:
                    for job in jobs:
                        self.hot.unpin(job.pinned)
                await self._commit(staged)
                if self.state.lsn_next - 1 - self._snapshot_lsn >= self.snapshot_every_records:
                    await self._snapshot_between_batches()
            if self._failed is not None:
                self._reject_queued(self._failed)
            if self._closing and not self._queue:
                return

    def _stage(self, jobs: list[Job]) -> _Staged:
        """Applies the batch in log order: each run of signed requests in one native call, each
        run of control ops through their handlers; the LSNs run on from one to the next."""
        now_s = int(time.time())
        self._expire_keys(now_s)
        if self._history is not None:
            self.hot.evict_if_due(self.state, self._history.durable_lsn, now_s)
        staged = _Staged(self.state.lsn_next)
        for signed, run in itertools.groupby(jobs, key=_is_signed):
            if signed:
                self._stage_signed(list(run), staged, now_s)
            else:
                self._stage_controls(list(run), staged, now_s)
        staged.records = self.state.lsn_next - staged.lsn_first
        return staged

    def _expire_keys(self, now_s: int) -> None:
        """Drops the idempotency keys past their TTL, once a second, before the batch reserves:
        a replay of the log drops them at the same points (`Index::restore_logged`), so the
        index it rebuilds is the one the engine had."""
        if now_s > self._keys_expired_s:
            self.state.index.expire(now_s)
            self._keys_expired_s = now_s

    def _stage_signed(self, jobs: list[Job], staged: _Staged, now_s: int) -> None:
        run = intake.stage(self.state, jobs, self.state.lsn_next, now_s)
        for index, (status, value) in run.known():
            self._answer_known(jobs[index], status, value)
        if run.records:
            staged.frames.append(run.frames())
        self.state.lsn_next = run.lsn_next
        staged.runs.append((jobs, run))

    def _stage_controls(self, jobs: list[Job], staged: _Staged, now_s: int) -> None:
        ops = [(job, job.control) for job in jobs if job.control is not None]
        keyed: list[Job] = []
        keys: list[bytes] = []
        fingerprints: list[bytes] = []
        for job, op in ops:
            if isinstance(op, AdminOp) and op.key is not None:
                keyed.append(job)
                keys.append(op.key)
                fingerprints.append(op.fingerprint)
        tenants = [ADMIN_TENANT] * len(keyed)
        answers = self.state.index.reserve_batch(keys, fingerprints, now_s, tenants)
        answer_of = {id(job): answer for job, answer in zip(keyed, answers, strict=True)}
        lsn_first = self.state.lsn_next
        types: list[int] = []
        payloads: list[bytes] = []
        for job, op in ops:
            answer = answer_of.get(id(job))
            if answer is None or answer[0] == _core.RESERVE_NEW:
                try:
                    handlers.check(self.state, op)
                except RequestError as error:
                    job.answer(error)
                    continue
                lsn = self.state.lsn_next
                result = handlers.apply(self.state, op, now_s, types, payloads)
                slot = None if answer is None else answer[1]
                staged.done.append((job, result, slot, lsn))
                if slot is not None:
                    staged.slots.append(slot)
                    staged.refs.append(self.state.lsn_next - 1)
            else:
                self._answer_known(job, *answer)
        if payloads:
            staged.frames.append(_core.wal_encode(lsn_first, types, payloads))

    def _answer_known(self, job: Job, status: int, value: int) -> None:
        """Answers a request whose idempotency key the index already knows."""
        if status == _core.RESERVE_REPLAY:
            stored = self.state.results.get(value) or self.state.admin_results.get(value)
            if stored is None:  # memory forgot it: history.db holds it
                task = asyncio.create_task(self._replay_forgotten(job, value))
                self._reading.add(task)
                task.add_done_callback(self._reading.discard)
                return
            if isinstance(stored, PaymentResult):
                stored = self.state.as_now(stored)
            job.answer(_replayed(stored))
        elif status == _core.RESERVE_IN_FLIGHT:
            self._waiters.setdefault(value, []).append(job)
        elif status == _core.RESERVE_MISMATCH:
            job.answer(
                RequestError(
                    "idempotency_key_reused",
                    "this idempotency key was used with a different request",
                    422,
                ),
            )
        elif status == _core.RESERVE_TENANT_FULL:
            index = self.state.index
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

    async def _replay_forgotten(self, job: Job, lsn: int) -> None:
        """Answers a retry of a result memory forgot from history.db (nothing is applied)."""
        try:
            stored: Applied | None = await self.durable_result(lsn)
            if stored is None and self._prefetcher is not None:
                stored = await self._prefetcher.admin_result(lsn)
        except Exception as error:  # the caller is answered whatever went wrong
            log.error("the result at LSN %d could not be read for a retry: %s", lsn, error)
            stored = None
        if stored is None:
            job.answer(Overloaded("history is catching up; retry shortly"))
        else:
            job.answer(_replayed(stored))

    async def durable_result(self, lsn: int) -> PaymentResult | RefundResult | None:
        """The durable payment (with its refunds so far) or refund logged at `lsn`: from memory,
        or from history.db once it holds every record durable now."""
        if self.state.results.get(lsn) is None and self._prefetcher is not None:
            await self.history_caught_up(HISTORY_READ_TIMEOUT_S)
        return await hot.durable_result(self.state, self._prefetcher, lsn)

    async def payment_anywhere(self, payment_id_: str) -> PaymentResult | None:
        """A durable payment by id, from memory or from history.db (`durable_result`)."""
        lsn = payment_lsn(payment_id_)
        result = None if lsn is None else await self.durable_result(lsn)
        return result if isinstance(result, PaymentResult) else None

    async def payments_for_order_anywhere(
        self, merchant_id: str, order_id: str
    ) -> list[PaymentResult]:
        """The durable payments a merchant made for one order id, oldest first: those memory
        holds and, with a history, those it forgot (history.db, once it holds every durable
        record)."""
        payments = {p.id: p for p in self.state.payments_for_order(merchant_id, order_id)}
        if self._prefetcher is not None:
            await self.history_caught_up(HISTORY_READ_TIMEOUT_S)
            with contextlib.suppress(HistoryUnavailableError):
                for payment in await self._prefetcher.payments_for_order(merchant_id, order_id):
                    payments.setdefault(payment.id, payment)
        return sorted(payments.values(), key=lambda payment: payment_lsn(payment.id) or 0)

    async def event_anywhere(self, lsn: int) -> dict[str, Any] | None:
        """The event of the result logged at `lsn` (a payment as made, without its refunds),
        from memory or from history.db."""
        event = self.state.event(lsn)
        if event is not None or self._prefetcher is None:
            return event
        result = await self.durable_result(lsn)
        if isinstance(result, PaymentResult):
            result = result._replace(amount_refunded=0)
        return None if result is None else event_json(lsn, result)

    async def delivery_json_anywhere(self, lsn: int) -> dict[str, Any]:
        """An event's delivery and its attempts: from memory, which holds every pending one,
        or from the attempts history.db logged for one memory forgot."""
        outbox = self.state.outbox
        first = self.state.results.first_lsn()
        forgotten = first is not None and lsn < first and not outbox.holds_delivery(lsn)
        if not forgotten or self._prefetcher is None:
            return outbox.delivery_json(lsn)
        await self.history_caught_up(HISTORY_READ_TIMEOUT_S)
        return finished_delivery_json(await self._prefetcher.attempts(lsn))

    async def failed_anywhere(self, merchant_id: str) -> list[int]:
        """The merchant's events whose delivery failed for good, oldest first: those memory
        holds and those whose deliveries it forgot."""
        outbox = self.state.outbox
        failed = outbox.failed_of(merchant_id)
        first = self.state.results.first_lsn()
        if self._prefetcher is None or first is None:
            return failed
        await self.history_caught_up(HISTORY_READ_TIMEOUT_S)
        older = await self._prefetcher.failed(merchant_id, first)
        return [lsn for lsn in older if not outbox.holds_delivery(lsn)] + failed

    async def redeliver(self, event_lsns: Sequence[int]) -> None:
        """Starts a fresh round of deliveries for these events, due now; the deliveries memory
        forgot are put back from history.db first, and kept until the round is logged."""
        lsns = list(dict.fromkeys(event_lsns))
        if self._prefetcher is not None:
            await hot.recall_deliveries(self.state, self._prefetcher, lsns)
        for lsn in lsns:
            self.hot.pin(lsn, self.hot.pinned_events)
        try:
            await super().redeliver(lsns)
        finally:
            for lsn in lsns:
                self.hot.unpin(lsn, self.hot.pinned_events)

    def forgot_events_after(self, after_lsn: int) -> bool:
        """Whether events after `after_lsn` may be ones memory forgot (older than every result
        it holds): a page of them is read from history.db."""
        first = self.state.results.first_lsn()
        return self._prefetcher is not None and first is not None and after_lsn + 1 < first

    def evict(self) -> None:
        """Forgets now what the hot window no longer needs (as the pass between batches does
        once a second): for tests and benchmarks, between batches."""
        if self._history is not None:
            self.hot.evict(self.state, self._history.durable_lsn)

    async def _commit(self, staged: _Staged) -> None:
        if not staged.records:
            self._publish(staged)
            return
        while len(self._syncing) >= PIPELINE_BATCHES_MAX:
            await asyncio.wait({self._syncing[0]})
        loop = asyncio.get_running_loop()
        # The engine numbered these records as it applied them (ids carry their LSN).
        if staged.lsn_first + staged.records != self.state.lsn_next:
            raise AssertionError(f"a batch from LSN {staged.lsn_first} is not the newest applied")
        # The single log thread writes batches in the order they are handed over.
        written = loop.run_in_executor(
            self._log_thread, self._append, staged.lsn_first, staged.frames, staged.records
        )
        previous = self._syncing[-1] if self._syncing else None
        self._syncing.append(asyncio.create_task(self._finish(written, staged, previous)))

    def _append(self, lsn_first: int, frames: list[bytes], count: int) -> int:
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
            first = writer.append_frames(frames, count)
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
        if self._history is not None:
            self._history.offer(first, frames, count)
        return first

    async def _finish(
        self, written: asyncio.Future[int], staged: _Staged, previous: asyncio.Task[None] | None
    ) -> None:
        """Answers a batch once the log thread has made it durable (or fails the engine), after
        the batch before it: the log thread writes in order, but this task may see its write
        done before the previous batch's task has run (its write finished before this task's
        first step), and results are published in log order."""
        try:
            await written
            if previous is not None:
                await asyncio.wait({previous})
        except Exception as error:  # any failed write stops the engine
            self._fail(error, staged)
        else:
            self._publish(staged)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._syncing.remove(task)

    def _publish(self, staged: _Staged) -> None:
        """The batch is durable: remember its results, complete its keys, answer its callers.
        Only the runs hold payment and refund results, so these are remembered in log order."""
        for jobs, run in staged.runs:
            self._publish_run(jobs, run)
        for _, result, slot, lsn in staged.done:
            if isinstance(result, AdminResult) and slot is not None:
                self.state.admin_results[lsn] = result
        self.state.index.complete_batch(staged.slots, staged.refs)
        for job, result, slot, _ in staged.done:
            job.answer(result)
            if slot is not None:
                for waiter in self._waiters.pop(slot, ()):
                    waiter.answer(_replayed(result))

    def _publish_run(self, jobs: list[Job], run: _core.StagedBatch) -> None:
        """A durable run: its results and keys committed natively in one call, its events
        indexed (and scheduled for merchants with a webhook) per merchant, its callers and the
        retries waiting for them answered with the results built from the store."""
        state = self.state
        by_merchant = run.commit(state.results.native, state.index)
        state.outbox.index_events(by_merchant)
        at_ms = run.created_s * 1000
        for merchant_id, lsns in by_merchant.items():
            merchant = state.merchants.get(merchant_id)
            if merchant is not None and merchant.webhook_url is not None:
                state.outbox.schedule_new_many(merchant_id, lsns, at_ms)
        indexes, _ = run.applied()
        for index, result in zip(indexes, run.results(RESULT_TYPES), strict=True):
            jobs[index].answer(result)
        for slot, lsn in self._waiting_on(run).items():
            replayed = _replayed(state.results[lsn])
            for waiter in self._waiters.pop(slot):
                waiter.answer(replayed)

    def _waiting_on(self, run: _core.StagedBatch) -> dict[int, int]:
        """The slots of the run that retries wait for, with their LSNs (few: only retries sent
        while their first request was in flight)."""
        return {slot: lsn for slot in self._waiters if (lsn := run.lsn_of_slot(slot)) is not None}

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
        for jobs, run in staged.runs:
            for index in run.applied()[0]:
                jobs[index].answer(failure)
            for waited in self._waiting_on(run):
                for waiter in self._waiters.pop(waited):
                    waiter.answer(failure)
        for job, _, slot, _ in staged.done:
            job.answer(failure)
            for waiter in self._waiters.pop(slot, []) if slot is not None else []:
                waiter.answer(failure)

    def _reject_queued(self, failure: EngineFailedError) -> None:
        """After a stop: refuses what is queued and the retries waiting for a first request."""
        while self._queue:
            job = self._queue.popleft()
            self.hot.unpin(job.pinned)
            job.answer(failure)
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.answer(failure)

    def _recover(self, loop: asyncio.AbstractEventLoop) -> None:
        datadir.warn_if_open_to_others(self.directory)
        snapshots.remove_temp_files(self.directory)
        lsn_after = 0
        loaded = snapshots.load_snapshot(self.directory)
        if loaded is not None:
            lsn_after = self._snapshot_lsn = loaded[0]
            recovery.restore(self.state, *loaded)
        replayed = 0
        # The newest snapshot's name says how far the log reached, even when its content is
        # damaged and recovery falls back to an older one: a log ending earlier lost records.
        lsn_reached = snapshots.newest_snapshot_lsn(self.directory)
        if self.history_enabled:
            self._prefetcher = HistoryPrefetcher(history_path(self.directory))
        recall = self._recall_for_replay if self._prefetcher is not None else None
        for segment in wal.replay_segments(self.directory, lsn_after, lsn_reached):
            replayed += recovery.replay_segment(self.state, segment, lsn_after, recall)
        self.check_invariants()
        self.state.index.expire(int(time.time()))
        self._log = wal.WalWriter(
            self.directory,
            self.state.lsn_next,
            sync=self.fsync == "always",
            segment_bytes_max=self.segment_bytes_max,
        )
        if self.history_enabled:
            self._history = self._open_history(loop)
        log.info(
            "recovered to LSN %d (snapshot %d, %d records replayed)",
            self.state.lsn_next - 1,
            lsn_after,
            replayed,
        )

    def _recall_for_replay(self, record: records.Record, lsn: int) -> None:
        if self._prefetcher is not None:
            hot.recall_for_replay(self.state, self._prefetcher, record, lsn)

    def _open_history(self, loop: asyncio.AbstractEventLoop) -> HistoryProjector:
        """Opens history.db and starts its projector, which first catches up from the log."""

        def advanced() -> None:  # in the projector's thread
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(self._history_advanced.set)

        projector = HistoryProjector(
            self.directory,
            self.state.lsn_next - 1,
            records.as_current,
            notify=advanced,
            transaction_records_max=self.history_policy.transaction_records_max,
            seed_source=lambda log_first: rebuild.history_seed(
                self.directory, log_first, self._new_state
            ),
        )
        self.stats.history = projector.stats
        projector.start()
        return projector

    async def _snapshot_between_batches(self) -> None:
        """Lets the batches in flight become durable, so memory holds exactly the durable state,
        then forks a child that writes it as a snapshot (`instapay.storage.forked`): the pipeline
        pauses only for the fork. One snapshot at a time: the next waits until this one is
        written."""
        if self._snapshotting is not None:
            return
        while self._syncing:
            await asyncio.wait({self._syncing[0]})
        if self._failed is not None:
            return
        lsn = self.state.lsn_next - 1
        self._snapshot_lsn = lsn
        state, directory = self.state, self.directory
        try:
            # Forked here, not in the task: the caller stages the next batches before a new task
            # first runs, and the child must see the state of `lsn` alone.
            child = forked.start_in_child(
                lambda: snapshots.write_snapshot(directory, lsn, recovery.snapshot_payload(state))
            )
        except OSError as error:
            log.error("snapshot at LSN %d failed, the log keeps everything: %s", lsn, error)
            return
        self._snapshotting = asyncio.create_task(self._snapshot_in_child(child, lsn))

    async def _snapshot_in_child(self, child: forked.Child, lsn: int) -> None:
        """A failed snapshot is logged, not fatal: the log still holds everything."""
        try:
            await child.wait()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._log_thread, self._drop_unneeded_segments)
        except (OSError, forked.ChildFailedError) as error:
            log.error("snapshot at LSN %d failed, the log keeps everything: %s", lsn, error)
        finally:
            self._snapshotting = None

    def snapshot(self) -> Path:
        """Writes a snapshot of the durable state and drops the log segments it makes unneeded.

        Only between batches: call it when nothing is being made durable (as `close` does).
        """
        if self._syncing or self._snapshotting is not None:
            raise RuntimeError("a snapshot must wait until no batch or snapshot is being written")
        path = snapshots.write_snapshot(
            self.directory, self.state.lsn_next - 1, recovery.snapshot_payload(self.state)
        )
        self._snapshot_lsn = self.state.lsn_next - 1
        self._drop_unneeded_segments()
        return path

    def _drop_unneeded_segments(self) -> None:
        """Drops the log segments that every kept snapshot and the history projector's durable
        LSN have passed, but for `log_keep_records` more (in the log thread, or when nothing is
        being written)."""
        passed = snapshots.oldest_kept_snapshot_lsn(self.directory)
        if self._history is not None:
            passed = min(passed, self._history.durable_lsn)
        keep = self.history_policy.log_keep_records
        self._writer().drop_segments_before(max(0, passed - keep) + 1)

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
        if self._snapshotting is not None:
            await self._snapshotting
        if self._reading:
            await asyncio.wait(self._reading)
        if self._prefetcher is not None:
            await asyncio.to_thread(self._prefetcher.close)
        if self._history is not None:
            # Drained before the snapshot, so that it may drop the segments projected.
            await asyncio.to_thread(self._history.close)
        if self._log is not None:
            if self._failed is None and snapshot:
                await asyncio.get_running_loop().run_in_executor(self._log_thread, self.snapshot)
            with contextlib.suppress(OSError):
                self._log.close()
        self._log_thread.shutdown(wait=True)


def _check_lsn_first(engine_lsn: int, log_lsn: int, when: str) -> None:
    if log_lsn != engine_lsn:
        raise AssertionError(
            f"the engine numbered a batch from LSN {engine_lsn}, the log from {log_lsn} ({when})"
        )


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
