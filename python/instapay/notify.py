"""Webhook deliveries: every event in the outbox is POSTed to its merchant's webhook URL, signed
``Instapay-Signature: t=<unix s>,v1=<hex HMAC-SHA256(webhook secret, "<t>." + body)>`` (Stripe's
scheme, so existing verifiers work), until the merchant answers 2xx or the schedule is spent.

The dispatcher takes due deliveries in batches, signs a batch with one native call, and sends them
with bounded concurrency (overall and per merchant) on one ClientSession. Finished attempts are
logged in batches through the engine (`record_deliveries`), so a restart resumes each schedule;
an attempt whose outcome was not logged before a crash is simply made again (at least once; the
event id is stable for de-duplication). It shares nothing with the payment path but the engine's
queue, where an attempt batch is one small record, so a slow merchant cannot slow payments.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson

from instapay import __version__
from instapay.engine import Engine
from instapay.model import EngineFailedError, Merchant, Overloaded
from instapay.outbox import DeliveryOutcome, event_id
from instapay.signing import SIGNATURE_HEADER

log = logging.getLogger(__name__)

# Waits after attempt 1, 2, ...: WeChat Pay's notification schedule, about 24 h in all.
WECHAT_SCHEDULE_S = (
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
)  # fmt: skip
EVENT_ID_HEADER = "Instapay-Event-Id"
USER_AGENT = f"instapay-webhooks/{__version__}"
# A store that stops working must not stall the log; outcomes wait this long between tries.
RECORD_RETRY_S = 0.1


@dataclass(frozen=True)
class DeliveryPolicy:
    schedule_s: tuple[float, ...] = WECHAT_SCHEDULE_S
    # Each wait is shortened by up to this share, at random, so that the retries of events that
    # failed together (a merchant outage) do not all come back at the same instant.
    jitter: float = 0.1
    timeout_s: float = 10.0
    in_flight_max: int = 64
    # Bounds what one slow merchant can hold of `in_flight_max`.
    in_flight_per_merchant_max: int = 8
    outcomes_per_record_max: int = 1024

    def __post_init__(self) -> None:
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be at least 0 and below 1")
        if any(wait_s < 0 for wait_s in self.schedule_s):
            raise ValueError("schedule_s: waits cannot be negative")
        if self.timeout_s <= 0 or self.in_flight_max < 1 or self.in_flight_per_merchant_max < 1:
            raise ValueError("timeout_s and the in-flight limits must be positive")

    def next_attempt_ms(self, attempts_done: int, now_ms: int, rng: random.Random) -> int | None:
        """When to try again after `attempts_done` failed attempts of this round; None when the
        schedule is spent."""
        if attempts_done > len(self.schedule_s):
            return None
        wait_s = self.schedule_s[attempts_done - 1] * (1 - self.jitter * rng.random())
        return now_ms + round(wait_s * 1000)


class Dispatcher:
    """Runs in the server's background (`run`), until cancelled."""

    def __init__(
        self,
        engine: Engine,
        policy: DeliveryPolicy,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.session = session
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        # Attempts by result: delivered, retry (failed, tried again later), failed (gave up).
        self.attempts: Counter[str] = Counter()
        self._wakeup = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._in_flight_of: Counter[str] = Counter()
        # Events redelivered while an attempt of them was in flight: taken again after it.
        self._retake: set[int] = set()
        self._outcomes: list[DeliveryOutcome] = []
        self._outcomes_ready = asyncio.Event()

    def wake(self) -> None:
        """Looks for due deliveries now (new events, a freed slot, or a clock moved by a test)."""
        self._wakeup.set()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run(self) -> None:
        recorder = asyncio.create_task(self._record_outcomes(), name="instapay-webhook-log")
        due = self.engine.deliveries_due
        try:
            while True:
                self._wakeup.clear()
                due.clear()
                self._start_due()
                await self._sleep(due, self._until_due_s())
        finally:
            await self._drain(recorder)

    async def _sleep(self, due: asyncio.Event, timeout_s: float | None) -> None:
        """Until a delivery becomes due in the engine, `wake` is called, or `timeout_s` passes."""
        if due.is_set() or self._wakeup.is_set():
            return
        waits = [asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(due.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _until_due_s(self) -> float | None:
        """How long until a delivery that could start now is due; None: until woken (by a new
        event or a finished attempt)."""
        if len(self._in_flight) >= self.policy.in_flight_max:
            return None
        share_max = self.policy.in_flight_per_merchant_max
        busy = {merchant for merchant, count in self._in_flight_of.items() if count >= share_max}
        due_ms = self.engine.outbox.next_due_ms(busy)
        return None if due_ms is None else max(0.0, (due_ms - self._now_ms()) / 1000)

    def _start_due(self) -> None:
        now_ms = self._now_ms()
        room = self.policy.in_flight_max - len(self._in_flight)
        taken: list[tuple[Merchant | None, int]] = []
        for merchant_id in self.engine.outbox.merchants_due():
            share = self.policy.in_flight_per_merchant_max - self._in_flight_of[merchant_id]
            count = min(room - len(taken), share)
            if count <= 0:
                continue
            merchant = self.engine.merchants.get(merchant_id)
            for lsn in self.engine.outbox.take_due(merchant_id, now_ms, count):
                if lsn in self._in_flight:  # redelivered meanwhile: once this attempt is over
                    self._retake.add(lsn)
                else:
                    taken.append((merchant, lsn))
        if taken:
            self._send(taken, now_ms)

    def _send(self, taken: list[tuple[Merchant | None, int]], now_ms: int) -> None:
        """Signs the bodies of a batch with one native call and starts their attempts."""
        signable: list[tuple[Merchant, int]] = []
        for merchant, lsn in taken:
            if merchant is None:  # removed from the configuration file since
                self._finished(lsn, now_ms, "merchant_unknown", delivered=False)
            elif not (merchant.webhook_url and merchant.webhook_secret):
                self._finished(lsn, now_ms, "no_webhook_url", delivered=False)
            else:
                signable.append((merchant, lsn))
        bodies = [orjson.dumps(self.engine.event(lsn)) for _, lsn in signable]
        timestamp_s = now_ms // 1000
        prefix = f"{timestamp_s}.".encode()
        merchants = self.engine.merchants
        messages = [prefix + body for body in bodies]
        macs = merchants.webhook_ring.sign_batch([m.id for m, _ in signable], messages)
        # A rotation in progress: the previous secret signs a second v1, for old verifiers.
        rotating = [n for n, (m, _) in enumerate(signable) if m.previous_webhook_secret]
        previous = merchants.previous_webhook_ring.sign_batch(
            [signable[n][0].id for n in rotating], [messages[n] for n in rotating]
        )
        second_v1 = {n: f",v1={mac.hex()}" for n, mac in zip(rotating, previous, strict=True)}
        for n, ((merchant, lsn), body, mac) in enumerate(zip(signable, bodies, macs, strict=True)):
            header = f"t={timestamp_s},v1={mac.hex()}{second_v1.get(n, '')}"
            round_ = self.engine.outbox.round_of(lsn)
            task = asyncio.create_task(self._attempt(merchant, lsn, round_, body, header))
            self._in_flight[lsn] = task
            self._in_flight_of[merchant.id] += 1

    async def _attempt(
        self, merchant: Merchant, lsn: int, round_: int, body: bytes, header: str
    ) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: header,
            EVENT_ID_HEADER: event_id(lsn),
        }
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
        try:
            async with self.session.post(
                str(merchant.webhook_url),
                data=body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                outcome = str(response.status)
                delivered = 200 <= response.status < 300
        except TimeoutError:
            outcome, delivered = "timeout", False
        except aiohttp.ClientConnectorError:
            outcome, delivered = "connection_error", False
        except aiohttp.ClientError as error:
            outcome, delivered = f"network_error: {type(error).__name__}", False
        finally:
            del self._in_flight[lsn]
            self._in_flight_of[merchant.id] -= 1
            if lsn in self._retake:
                self._retake.discard(lsn)
                self.engine.outbox.requeue(lsn)
            self.wake()
        self._finished(lsn, self._now_ms(), outcome, delivered=delivered, round_=round_)

    def _finished(
        self, lsn: int, at_ms: int, outcome: str, *, delivered: bool, round_: int | None = None
    ) -> None:
        """Logs an attempt's outcome (in a batch); `round_`: the round it was made in."""
        if round_ is None:
            round_ = self.engine.outbox.round_of(lsn)
        next_at_ms = None
        if not delivered:
            done = self.engine.outbox.round_attempts(lsn) + 1
            next_at_ms = self.policy.next_attempt_ms(done, at_ms, self.rng)
        result = "delivered" if delivered else "retry" if next_at_ms is not None else "failed"
        self.attempts[result] += 1
        if result == "failed":
            log.warning("webhook delivery of %s failed for good: %s", event_id(lsn), outcome)
        self._outcomes.append(DeliveryOutcome(lsn, at_ms, outcome, delivered, next_at_ms, round_))
        self._outcomes_ready.set()

    async def _record_outcomes(self) -> None:
        """Logs finished attempts in batches; until then their events are not taken again."""
        batch_max = self.policy.outcomes_per_record_max
        while True:
            await self._outcomes_ready.wait()
            self._outcomes_ready.clear()
            while self._outcomes:
                batch = self._outcomes[:batch_max]
                try:
                    await self.engine.record_deliveries(batch)
                except Overloaded:
                    await asyncio.sleep(RECORD_RETRY_S)
                    continue
                except (EngineFailedError, RuntimeError) as error:
                    # The engine stopped or is closing: the log keeps these events pending,
                    # and the next start delivers them again.
                    log.error("webhook outcomes not logged, they will be retried: %s", error)
                    return
                del self._outcomes[: len(batch)]

    async def _drain(self, recorder: asyncio.Task[None]) -> None:
        """On shutdown: lets the attempts in flight finish (each is bounded by the timeout) and
        logs their outcomes; what is cut short stays pending and is delivered after restart."""
        attempts = list(self._in_flight.values())
        if attempts:
            await asyncio.wait(attempts, timeout=self.policy.timeout_s)
        for task in self._in_flight.values():
            task.cancel()
        while self._outcomes and not recorder.done():
            self._outcomes_ready.set()
            await asyncio.sleep(0)
        recorder.cancel()
        await asyncio.gather(recorder, *self._in_flight.values(), return_exceptions=True)
