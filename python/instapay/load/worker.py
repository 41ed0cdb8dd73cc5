"""One load-generator process: pre-signs payments in batches with the native KeyRing, sends them
open loop (on a timeline, latency measured from each request's scheduled time, so a server that
stalls cannot hide its queue: wrk2's coordinated-omission correction) or closed loop (a fixed
number in flight), and reports each second's latencies and counts to the parent."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any, NamedTuple

import aiohttp
import orjson
import uvloop

from instapay import _core
from instapay.http.server import freeze_survivors_of_full_collections
from instapay.load.plan import Plan, WorkerShare
from instapay.load.stats import Counts, new_histogram, record_s
from instapay.protocol import (
    BATCH_PATH,
    IDEMPOTENCY_HEADER,
    JSON_TYPE,
    NDJSON_TYPE,
    REPLAYED_HEADER,
    SIGNATURE_HEADER,
)
from instapay.signing import request_message_v2

PAYMENTS_PATH = "/v1/payments"
# Requests signed at once; a signature is valid for 300 s, so a batch is re-signed after 60 s.
SIGN_BATCH_LEN = 1024
SIGNATURE_AGE_S_MAX = 60.0
# After the last request is sent, what is still in flight gets this long to be answered.
DRAIN_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 60.0
TICK_S = 0.5
TIMER_GRAIN_S = 0.001
# The start time that tells ready workers to leave (another did not get ready).
ABORT = -1.0
# Kept per worker to show what went wrong, not every one.
MISMATCH_EXAMPLES_MAX = 20


class Ready(NamedTuple):
    worker: int


class Tick(NamedTuple):
    """The requests that completed in one second of the run (second 0 starts at the start)."""

    worker: int
    second: int
    histogram: bytes
    requests_ok: int
    requests_failed: int
    payments_ok: int


class Acknowledged(NamedTuple):
    """A payment the server answered 2xx for: what the audit checks."""

    payment_id: str
    order_id: str
    payer: str
    amount: int
    status: str


class Done(NamedTuple):
    worker: int
    counts: Counts
    acknowledged: list[Acknowledged]
    unanswered: list[tuple[str, str, int]]
    mismatches: list[str]
    # How late requests left against their schedule (open loop): the generator's own lag.
    send_lag: bytes
    cpu_s: float
    last_done_s: float


class Crashed(NamedTuple):
    worker: int
    message: str


Message = Ready | Tick | Done | Crashed


@dataclass
class Prepared:
    """A request ready to go: its body, idempotency key and signature."""

    body: bytes
    key: str
    header: str
    signed_at_s: float
    payments: list[tuple[str, str, int]]  # (order id, payer, amount)


@dataclass
class _SecondCounts:
    ok: int = 0
    failed: int = 0
    payments_ok: int = 0


class Worker:
    def __init__(self, plan: Plan, share: WorkerShare, report: Callable[[Message], None]) -> None:
        self.plan = plan
        self.share = share
        self.report = report
        self.rng = random.Random(plan.seed * 1000 + share.worker)  # noqa: S311 (traffic, not secrets)
        self.ring = _core.KeyRing()
        self.ring.insert(plan.target.kid, plan.target.secret)
        self.run_id = uuid.uuid4().hex[:12]
        self.path = BATCH_PATH if plan.batch > 1 else PAYMENTS_PATH
        self.url = plan.target.base_url.rstrip("/") + self.path
        self.content_type = NDJSON_TYPE if plan.batch > 1 else JSON_TYPE
        self.counts = Counts()
        self.acknowledged: list[Acknowledged] = []
        # New payments whose request got no answer (order id, payer, amount).
        self.unanswered: list[tuple[str, str, int]] = []
        self.mismatches: list[str] = []
        self.send_lag = new_histogram()
        self.numbered = 0
        self.prepared: deque[Prepared] = deque()
        # Requests answered 2xx, with the ids they got: what a replay must get again.
        self.originals: list[tuple[Prepared, list[str]]] = []
        self.seconds: dict[int, tuple[Any, _SecondCounts]] = {}
        self.start_s = 0.0
        self.measure_from_s = 0.0
        # When the last answer came, from the start.
        self.last_done_s = 0.0

    # ---- requests --------------------------------------------------------------------------

    def _new_bodies(self, count: int) -> list[tuple[bytes, str, list[tuple[str, str, int]]]]:
        plan = self.plan
        made = []
        for _ in range(count):
            lines, payments = [], []
            for _ in range(plan.batch):
                self.numbered += 1
                order_id = f"load-{self.run_id}-{self.share.worker}-{self.numbered}"
                payer = plan.payer(self.rng.randrange(plan.payers))
                amount = plan.amounts.draw(self.rng)
                payments.append((order_id, payer, amount))
                lines.append(
                    orjson.dumps(
                        {
                            "merchant_id": plan.target.merchant_id,
                            "order_id": order_id,
                            "payer": payer,
                            "amount": amount,
                            "currency": plan.target.currency,
                        }
                    )
                )
            body = b"\n".join(lines) + b"\n" if plan.batch > 1 else lines[0]
            made.append((body, payments[0][0], payments))
        return made

    def _sign(self, requests: list[tuple[bytes, str]]) -> tuple[list[str], float]:
        """v2 signatures of (body, Idempotency-Key) pairs, all at once."""
        now_s = time.time()
        timestamp_s = int(now_s)
        messages = [
            request_message_v2(timestamp_s, "POST", self.path, key, body) for body, key in requests
        ]
        kid = self.plan.target.kid
        macs = self.ring.sign_batch([kid] * len(messages), messages)
        return [f"t={timestamp_s},kid={kid},v2={mac.hex()}" for mac in macs], now_s

    def _refill(self, count: int) -> None:
        made = self._new_bodies(count)
        headers, signed_at_s = self._sign([(body, key) for body, key, _ in made])
        for (body, key, payments), header in zip(made, headers, strict=True):
            self.prepared.append(Prepared(body, key, header, signed_at_s, payments))

    def _next_request(self) -> tuple[Prepared, list[str] | None]:
        """A new request, or a replay of an answered one (then: the ids it must get again)."""
        if self.originals and self.rng.random() < self.plan.replay_ratio:
            original, ids = self.originals[self.rng.randrange(len(self.originals))]
            [header], signed_at_s = self._sign([(original.body, original.key)])
            replay = Prepared(original.body, original.key, header, signed_at_s, original.payments)
            return replay, ids
        if not self.prepared:
            per_second = self.share.rate_per_s or self.share.concurrency * 100
            self._refill(max(1, min(SIGN_BATCH_LEN, round(per_second))))
        prepared = self.prepared.popleft()
        if time.time() - prepared.signed_at_s > SIGNATURE_AGE_S_MAX:
            [prepared.header], prepared.signed_at_s = self._sign([(prepared.body, prepared.key)])
        return prepared, None

    # ---- sending and recording -------------------------------------------------------------

    async def _send(
        self, session: aiohttp.ClientSession, request: Prepared
    ) -> tuple[int | None, bytes, bool, str | None]:
        headers = {
            "Content-Type": self.content_type,
            SIGNATURE_HEADER: request.header,
            IDEMPOTENCY_HEADER: request.key,
        }
        try:
            async with session.post(self.url, data=request.body, headers=headers) as response:
                payload = await response.read()
                replayed = response.headers.get(REPLAYED_HEADER) == "true"
                return response.status, payload, replayed, None
        except TimeoutError:
            return None, b"", False, "timeout"
        except aiohttp.ClientError as error:
            return None, b"", False, type(error).__name__

    async def _one(
        self,
        session: aiohttp.ClientSession,
        request: Prepared,
        replay_of: list[str] | None,
        started_s: float,
    ) -> None:
        """Sends one request and records it; latency counts from `started_s` (the scheduled
        time in open loop)."""
        self.counts.sent += 1
        try:
            status, payload, replayed, failure = await self._send(session, request)
        except asyncio.CancelledError:
            self._unanswered(request, replay_of, "unanswered_at_end")
            raise
        done_s = time.perf_counter()
        self.last_done_s = done_s - self.start_s
        histogram, counts = self._second(int(done_s - self.start_s))
        if status is None:
            self._unanswered(request, replay_of, failure or "error")
            counts.failed += 1
            return
        measured = started_s >= self.measure_from_s
        if measured:
            record_s(histogram, done_s - started_s)
        self.counts.statuses[status] += 1
        counts.ok += 1
        ids = self._answered(request, status, payload, replayed, replay_of)
        if replay_of is None:
            acknowledged = sum(1 for payment_id in ids if payment_id is not None)
            counts.payments_ok += acknowledged
            self.counts.acknowledged_measured += acknowledged if measured else 0
            if all(ids):  # replays resend requests whose every payment was acknowledged
                self.originals.append((request, [i for i in ids if i is not None]))

    def _unanswered(self, request: Prepared, replay_of: list[str] | None, why: str) -> None:
        """A request without an answer may still have been applied: the audit looks its new
        payments up by order id."""
        self.counts.failures[why] += 1
        if replay_of is None:
            self.unanswered.extend(request.payments)

    def _answered(
        self,
        request: Prepared,
        status: int,
        payload: bytes,
        replayed: bool,
        replay_of: list[str] | None,
    ) -> list[str | None]:
        """Counts an answer's payments and errors; per line of the request, the payment it got
        (None: refused, or no answer line: a stream cut short)."""
        if status >= 300:
            self.counts.error_codes[_error_code(payload)] += len(request.payments)
            return [None] * len(request.payments)
        lines = (
            [orjson.loads(line) for line in payload.splitlines()]
            if self.plan.batch > 1
            else [orjson.loads(payload)]
        )
        ids: list[str | None] = []
        for line, (order_id, payer, amount) in zip(lines, request.payments, strict=False):
            if line.get("object") not in ("payment", None):
                self.counts.error_codes[line.get("error", {}).get("code", "unreadable")] += 1
                ids.append(None)
                continue
            self.counts.payments[line["status"]] += 1
            ids.append(line["id"])
            if replay_of is None:
                self.acknowledged.append(
                    Acknowledged(line["id"], order_id, payer, amount, line["status"])
                )
            else:
                line_replayed = replayed or bool(line.get("replayed"))
                self._check_replay(replay_of[len(ids) - 1], line["id"], line_replayed)
        if len(ids) < len(request.payments) and replay_of is None:
            self.unanswered.extend(request.payments[len(ids) :])
        return ids + [None] * (len(request.payments) - len(ids))

    def _check_replay(self, expected: str, got: str, replayed: bool) -> None:
        if got == expected and replayed:
            self.counts.replays_matched += 1
            return
        self.counts.replays_mismatched += 1
        if len(self.mismatches) < MISMATCH_EXAMPLES_MAX:
            self.mismatches.append(
                f"a replay of {expected} got {got} (marked replayed: {replayed})"
            )

    def _second(self, second: int) -> tuple[Any, _SecondCounts]:
        if second not in self.seconds:
            self.seconds[second] = (new_histogram(), _SecondCounts())
        return self.seconds[second]

    def _flush_seconds(self, before: int) -> None:
        for second in sorted(s for s in self.seconds if s < before):
            histogram, counts = self.seconds.pop(second)
            self.report(
                Tick(
                    self.share.worker,
                    second,
                    histogram.encode(),
                    counts.ok,
                    counts.failed,
                    counts.payments_ok,
                )
            )

    # ---- the loops -------------------------------------------------------------------------

    def _more(self, sent: int, now_s: float) -> bool:
        if self.share.requests is not None:
            return sent < self.share.requests
        return now_s < self.start_s + self.plan.warmup_s + self.plan.duration_s

    async def open_loop(self, session: aiohttp.ClientSession) -> None:
        interval_s = 1.0 / self.share.rate_per_s
        in_flight: set[asyncio.Task[None]] = set()
        sent = 0
        while True:
            due_s = self.start_s + sent * interval_s
            if not self._more(sent, due_s):
                break
            now_s = time.perf_counter()
            if due_s > now_s:
                # The event loop's timers have a 1 ms grain: a shorter sleep returns at once and
                # would spin. Requests due within the tick go out together when it ends.
                await asyncio.sleep(max(due_s - now_s, TIMER_GRAIN_S))
                continue
            if len(in_flight) >= self.share.in_flight_max:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            record_s(self.send_lag, now_s - due_s)
            request, replay_of = self._next_request()
            task = asyncio.create_task(self._one(session, request, replay_of, due_s))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            sent += 1
            if sent % 64 == 0:
                await asyncio.sleep(0)  # let answers in between bursts of due requests
        await self._drain(in_flight)

    async def closed_loop(self, session: aiohttp.ClientSession) -> None:
        sent = 0

        async def client() -> None:
            nonlocal sent
            while self._more(sent, time.perf_counter()):
                sent += 1
                request, replay_of = self._next_request()
                await self._one(session, request, replay_of, time.perf_counter())

        # Each client stops at the deadline (or the request count); a request is bounded by
        # REQUEST_TIMEOUT_S, so this ends.
        await asyncio.gather(*(client() for _ in range(self.share.concurrency)))

    async def _drain(self, in_flight: set[asyncio.Task[None]]) -> None:
        if in_flight:
            _, late = await asyncio.wait(in_flight, timeout=DRAIN_TIMEOUT_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._flush_seconds(int(time.perf_counter() - self.start_s))

    async def run(self, start_at_s: float) -> None:
        """Runs from wall-clock `start_at_s` (the same for every worker)."""
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        self._refill(min(SIGN_BATCH_LEN, max(1, round(self.share.rate_per_s or 64))))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.sleep(max(0.0, start_at_s - time.time()))
            self.start_s = time.perf_counter()
            self.measure_from_s = self.start_s + self.plan.warmup_s
            ticks = asyncio.create_task(self._ticks())
            try:
                if self.plan.mode == "open":
                    await self.open_loop(session)
                else:
                    await self.closed_loop(session)
            finally:
                ticks.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticks
        self._flush_seconds(1 << 62)


def _error_code(payload: bytes) -> str:
    try:
        return str(orjson.loads(payload)["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "unreadable_error"


def main(
    plan: Plan,
    share: WorkerShare,
    queue: Queue[Message],
    go: Event,
    start_at: Any,
) -> None:
    """The worker process: prepares, waits for the common start, runs, reports."""
    try:
        # The worker keeps every acknowledged payment for the audit: without this, the full
        # collections that walk them stall its schedule (tens of ms, growing with the run).
        freeze_survivors_of_full_collections()
        worker = Worker(plan, share, queue.put)
        queue.put(Ready(share.worker))
        go.wait()
        if start_at.value == ABORT:
            return
        cpu_before_s = time.process_time()
        uvloop.run(worker.run(start_at.value))
        queue.put(
            Done(
                share.worker,
                worker.counts,
                worker.acknowledged,
                worker.unanswered,
                worker.mismatches,
                worker.send_lag.encode(),
                time.process_time() - cpu_before_s,
                worker.last_done_s,
            )
        )
    except Exception as error:  # report, whatever it is: the parent must not wait forever
        queue.put(Crashed(share.worker, f"{type(error).__name__}: {error}"))
