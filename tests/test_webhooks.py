"""Webhook notifications end to end: a real receiver (an aiohttp server on loopback) checks every
signature twice, answers from a script, and records what arrived; the server under test is the
real application on real files. Schedules are compressed to fractions of a second; the one test
that needs exact times drives the dispatcher with an injected clock."""

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from instapay import webhooks
from instapay.client import Client
from instapay.engine import Engine
from instapay.model import EngineConfig, Merchant, RequestError
from instapay.notify import EVENT_ID_HEADER, DeliveryPolicy, Dispatcher
from instapay.outbox import DeliveryOutcome
from instapay.signing import SIGNATURE_HEADER, SignatureMismatchError
from servers import DEMO, free_port, serving, start

WEBHOOK_SECRET = b"the test shop's webhook secret.."
# Waits of 50, 100 and 200 ms: four attempts in all.
FAST = DeliveryPolicy(schedule_s=(0.05, 0.1, 0.2), jitter=0.0, timeout_s=2.0)
WAIT_S = 30.0


def independent_verify(body: bytes, header: str, secret: bytes) -> bool:
    """Stripe's scheme written out with the standard library only."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    signed = fields["t"].encode() + b"." + body
    expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


@dataclass
class Arrival:
    at_s: float
    event: dict[str, Any]
    status: int
    body: bytes = b""
    header: str = ""


@dataclass
class Receiver:
    """A merchant's webhook endpoint: answers `failures` times with `failure_status`, then 200;
    records every arrival and every signature that does not check out."""

    failures: int = 0
    failure_status: int = 500
    arrivals: list[Arrival] = field(default_factory=list)
    bad_signatures: list[str] = field(default_factory=list)
    url: str = ""
    # While set, answers wait until it is released (an attempt held in flight).
    hold: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self.hold is not None:
            await self.hold.wait()
        body = await request.read()
        header = request.headers.get(SIGNATURE_HEADER, "")
        try:
            webhooks.verify(body, header, WEBHOOK_SECRET)
        except ValueError as error:
            self.bad_signatures.append(f"instapay.webhooks.verify: {error}")
        if not independent_verify(body, header, WEBHOOK_SECRET):
            self.bad_signatures.append(f"hmac re-implementation refused {header}")
        event = orjson.loads(body)
        if request.headers.get(EVENT_ID_HEADER) != event["id"]:
            self.bad_signatures.append(f"{EVENT_ID_HEADER} differs from the body's id")
        status = 200
        if self.failures > 0:
            self.failures -= 1
            status = self.failure_status
        self.arrivals.append(Arrival(time.monotonic(), event, status, body, header))
        return web.Response(status=status)

    def delivered_ids(self) -> set[str]:
        return {a.event["id"] for a in self.arrivals if a.status == 200}

    def attempts_of(self, event_id: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.event["id"] == event_id]


@contextlib.asynccontextmanager
async def listening(receiver: Receiver) -> AsyncIterator[Receiver]:
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    receiver.url = str(server.make_url("/hooks"))
    try:
        yield receiver
    finally:
        await server.close()


def shop(webhook_url: str | None) -> EngineConfig:
    merchant = Merchant(
        DEMO.merchant_id,
        DEMO.settlement_account,
        {DEMO.kid: DEMO.secret},
        webhook_url,
        WEBHOOK_SECRET if webhook_url else None,
    )
    return EngineConfig((merchant,))


async def until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Waits for `condition` (a liveness wait: the timeout only stops a hung test)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_every_result_is_delivered_signed_as_an_event(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            listening(Receiver()) as receiver,
            serving(tmp_path, shop(receiver.url), FAST) as api,
        ):
            async with api.client() as client:
                paid = await client.create_payment(
                    order_id="o-1", payer=DEMO.payer(0), amount=500, currency="EUR"
                )
                declined = await client.create_payment(
                    order_id="o-2", payer=DEMO.payer(1), amount=10**12, currency="EUR"
                )
                refunded = await client.refund(paid["id"], 200)
            await until(lambda: len(receiver.arrivals) == 3, "three deliveries")
            events = sorted(
                (a.event for a in receiver.arrivals),
                key=lambda e: int(e["id"].removeprefix("evt_")),
            )
            assert [e["type"] for e in events] == [
                "payment.succeeded",
                "payment.failed",
                "refund.succeeded",
            ]
            assert [e["data"]["object"] for e in events] == [paid, declined, refunded]
            assert receiver.bad_signatures == []

    run(scenario)


def test_a_failing_endpoint_gets_retried_on_schedule_until_it_answers_2xx(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        receiver = Receiver(failures=2)
        async with listening(receiver), serving(tmp_path, shop(receiver.url), FAST) as api:
            async with api.client() as client:
                paid = await client.create_payment(
                    order_id="o-1", payer=DEMO.payer(0), amount=500, currency="EUR"
                )
                event_id = "evt_" + paid["id"].removeprefix("pay_")
                await until(lambda: event_id in receiver.delivered_ids(), "the delivery")
                # Longer than the whole schedule: a delivered event is not sent again.
                await asyncio.sleep(sum(FAST.schedule_s))
                attempts = receiver.attempts_of(event_id)
                assert [a.status for a in attempts] == [500, 500, 200]
                gaps_s = [later.at_s - a.at_s for a, later in itertools.pairwise(attempts)]
                assert gaps_s[0] >= FAST.schedule_s[0], gaps_s
                assert gaps_s[1] >= FAST.schedule_s[1], gaps_s
                event = await client.get_event(event_id)
            assert event["delivery"]["status"] == "delivered"
            assert [a["outcome"] for a in event["delivery"]["attempts"]] == ["500", "500", "200"]

    run(scenario)


def test_the_dispatcher_waits_for_the_injected_clock(tmp_path: Path) -> None:
    """With a clock that only the test moves, each retry comes exactly when the schedule says."""
    policy = DeliveryPolicy(schedule_s=(60, 120), jitter=0.0)
    start_s = float(int(time.time()) + 1)  # not before the event's creation second
    now_s = [start_s]

    async def scenario() -> None:
        receiver = Receiver(failures=10)
        async with (
            listening(receiver),
            aiohttp.ClientSession() as session,
            Engine.open(tmp_path, config=shop(receiver.url)) as engine,
        ):
            await DEMO.set_up(engine, payers=1, balance=1000)
            dispatcher = Dispatcher(engine, policy, session, clock=lambda: now_s[0])
            running = asyncio.create_task(dispatcher.run())
            await engine.submit(DEMO.payment("o-1", DEMO.payer(0), 10))
            await until(lambda: len(receiver.arrivals) == 1, "the first attempt")

            async def advance_to(seconds: float) -> None:
                now_s[0] = start_s + seconds
                dispatcher.wake()
                await asyncio.sleep(0.2)  # time to send, were anything due

            await advance_to(59.9)
            assert len(receiver.arrivals) == 1, "a retry came before its wait was over"
            await advance_to(60)
            await until(lambda: len(receiver.arrivals) == 2, "the second attempt")
            await advance_to(179.9)
            assert len(receiver.arrivals) == 2, "the third attempt came early"
            await advance_to(180)
            await until(lambda: len(receiver.arrivals) == 3, "the third attempt")
            await until(lambda: engine.outbox.pending == 0, "giving up after the schedule")
            [lsn] = engine.outbox.deliveries
            assert engine.outbox.delivery_json(lsn)["status"] == "failed"
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    run(scenario)


def test_jitter_shortens_waits_by_at_most_its_share() -> None:
    policy = DeliveryPolicy(schedule_s=(10.0,), jitter=0.25)
    rng = random.Random(7)
    waits_ms = [policy.next_attempt_ms(1, 0, rng) for _ in range(1000)]
    assert all(w is not None and 7500 <= w <= 10_000 for w in waits_ms)
    assert len(set(waits_ms)) > 100, "jitter spreads the retries"
    assert policy.next_attempt_ms(2, 0, rng) is None, "the schedule is spent"


def test_an_endpoint_down_for_the_whole_schedule_ends_failed_then_admin_redelivers(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        receiver = Receiver(failures=4, failure_status=503)
        async with listening(receiver), serving(tmp_path, shop(receiver.url), FAST) as api:
            async with api.client() as client:
                paid = await client.create_payment(
                    order_id="o-1", payer=DEMO.payer(0), amount=500, currency="EUR"
                )
                event_id = "evt_" + paid["id"].removeprefix("pay_")

                async def status() -> str:
                    event = await client.get_event(event_id)
                    return str(event["delivery"]["status"])

                await until(lambda: len(receiver.arrivals) == 4, "four attempts")
                await until(lambda: api.engine.outbox.pending == 0, "giving up")
                assert await status() == "failed"
                listed = await client.list_events()
                assert [e["id"] for e in listed["data"]] == [event_id], "still listable"

                code, answer = await api.admin("POST", f"/v1/admin/events/{event_id}/redeliver")
                assert code == 202
                assert answer["delivery"]["status"] in ("pending", "delivered")
                await until(lambda: event_id in receiver.delivered_ids(), "the redelivery")
                await until(lambda: api.engine.outbox.pending == 0, "the outcome logged")
                assert await status() == "delivered"
            assert receiver.bad_signatures == []

    run(scenario)


def test_admin_redelivers_all_failed_events_of_a_merchant(tmp_path: Path) -> None:
    async def scenario() -> None:
        nobody = f"http://127.0.0.1:{free_port()}/hooks"  # connection refused
        async with serving(tmp_path, shop(nobody), FAST) as api:
            for n in range(3):
                await api.engine.submit(DEMO.payment(f"o-{n}", DEMO.payer(0), 10))
            await until(lambda: len(api.engine.outbox.failed_of(DEMO.merchant_id)) == 3, "fails")
            [attempt, *_] = next(iter(api.engine.outbox.deliveries.values())).attempts
            assert attempt.outcome == "connection_error"
        receiver = Receiver()
        async with listening(receiver), serving(tmp_path, shop(receiver.url), FAST) as api:
            code, answer = await api.admin(
                "POST", f"/v1/admin/merchants/{DEMO.merchant_id}/events/redeliver"
            )
            assert (code, answer["count"]) == (202, 3)
            await until(lambda: len(receiver.delivered_ids()) == 3, "three redeliveries")

    run(scenario)


def test_events_list_in_order_page_by_page(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, shop(None)) as api, api.client() as client:
            paid = [
                await client.create_payment(
                    order_id=f"o-{n}", payer=DEMO.payer(0), amount=10, currency="EUR"
                )
                for n in range(5)
            ]
            seen: list[dict[str, Any]] = []
            after = None
            while True:
                page = await client.list_events(after=after, limit=2)
                seen += page["data"]
                if not page["has_more"]:
                    break
                after = page["data"][-1]["id"]
            assert [e["data"]["object"]["id"] for e in seen] == [p["id"] for p in paid]
            event = await client.get_event(seen[0]["id"])
            assert event["delivery"] == {"status": "none", "attempts": [], "next_attempt_at": None}

    run(scenario)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("after=pay_1", "after: not an event id"),
        ("after=evt_%C2%B2", "after: not an event id"),  # a superscript two is no digit here
        ("limit=0", "limit: an integer from 1"),
    ],
)
def test_a_bad_events_query_is_refused(tmp_path: Path, query: str, problem: str) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, shop(None)) as api:
            path = f"/v1/events?{query}"
            request = DEMO.sign(path, b"", method="GET")
            headers = {SIGNATURE_HEADER: request.header or ""}
            async with api.session.get(api.base_url + path, headers=headers) as response:
                error = orjson.loads(await response.read())["error"]
                assert (response.status, error["code"]) == (400, "invalid_request")
                assert problem in error["message"]

    run(scenario)


def test_ten_thousand_payments_give_ten_thousand_delivered_events(tmp_path: Path) -> None:
    count = 10_000

    async def scenario() -> None:
        receiver = Receiver()
        async with listening(receiver), serving(tmp_path, shop(receiver.url), FAST) as api:
            async with api.client() as client:
                for start_at in range(0, count, 5000):
                    answers = await client.create_payments_batch(
                        [
                            {"order_id": f"o-{n}", "payer": DEMO.payer(n % 3), "amount": 1}
                            | {"currency": "EUR"}
                            for n in range(start_at, start_at + 5000)
                        ]
                    )
                    assert {a["status"] for a in answers} == {"succeeded"}
            await until(lambda: len(receiver.delivered_ids()) == count, "every event delivered")
            paid = {f"evt_{lsn}" for lsn, r in api.engine.results.items()}
            assert receiver.delivered_ids() == paid
            assert receiver.bad_signatures == []

    run(scenario)


def test_pending_deliveries_survive_a_sigkill(tmp_path: Path) -> None:
    """The server is killed while every event still waits for a retry; after the restart each
    one is delivered."""
    count = 20

    async def scenario() -> None:
        receiver = Receiver(failures=10**9)
        async with listening(receiver):
            config = tmp_path / "instapay.toml"
            config.write_text(
                "[webhooks]\nschedule_s = [0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]\n"
                "jitter = 0.0\n[[merchants]]\n"
                f'id = "{DEMO.merchant_id}"\nsettlement_account = "{DEMO.settlement_account}"\n'
                f'webhook_url = "{receiver.url}"\n'
                f'webhook_secret = {{ secret_hex = "{WEBHOOK_SECRET.hex()}" }}\n'
                f'keys = {{ "{DEMO.kid}" = {{ secret_hex = "{DEMO.secret.hex()}" }} }}\n'
            )
            async with Engine.open(tmp_path / "data", config=shop(receiver.url)) as engine:
                await DEMO.set_up(engine, payers=1, balance=1000)
            port = free_port()
            server = start(tmp_path / "data", port, "--config", str(config))
            base_url = f"http://127.0.0.1:{port}"
            async with Client(base_url, DEMO.merchant_id, DEMO.kid, DEMO.secret) as client:
                paid = [
                    await client.create_payment(
                        order_id=f"o-{n}", payer=DEMO.payer(0), amount=1, currency="EUR"
                    )
                    for n in range(count)
                ]
            expected = {"evt_" + p["id"].removeprefix("pay_") for p in paid}
            await until(
                lambda: {a.event["id"] for a in receiver.arrivals} == expected, "first attempts"
            )
            server.process.kill()
            server.process.wait()
            server.stop()
            receiver.failures = 0
            server = start(tmp_path / "data", port, "--config", str(config))
            await until(lambda: receiver.delivered_ids() == expected, "deliveries after restart")
            assert server.stop()[0] == 0

    run(scenario)


def test_a_redelivery_while_an_attempt_is_in_flight_waits_for_it_and_goes_out_once(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        receiver = Receiver(failures=1, hold=asyncio.Event())
        async with listening(receiver), serving(tmp_path, shop(receiver.url), FAST) as api:
            paid = await api.engine.submit(DEMO.payment("o-1", DEMO.payer(0), 10))
            lsn = int(paid.id.removeprefix("pay_"))
            dispatcher = api.dispatcher()
            await until(lambda: lsn in dispatcher._in_flight, "the first attempt in flight")
            await api.engine.redeliver([lsn, lsn])  # twice in one call: still one round
            await asyncio.sleep(0.1)  # the dispatcher looks at the queue meanwhile
            assert receiver.hold is not None
            receiver.hold.set()
            await until(lambda: api.engine.outbox.pending == 0, "the redelivery's outcome")
            assert [a.status for a in receiver.arrivals] == [500, 200]
            assert api.engine.outbox.delivery_json(lsn)["status"] == "delivered"
            assert sum(dispatcher._in_flight_of.values()) == 0, "no slot leaked"

    run(scenario)


def test_an_outcome_for_an_unknown_event_is_refused_and_the_engine_goes_on(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with Engine.open(tmp_path, config=shop(None)) as engine:
            await DEMO.set_up(engine, payers=1, balance=100)
            with pytest.raises(RequestError, match="no event evt_999"):
                await engine.record_deliveries([DeliveryOutcome(999, 1, "500", False, None)])
            with pytest.raises(RequestError, match="no event evt_999"):
                await engine.redeliver([999])
            assert (
                await engine.submit(DEMO.payment("o-1", DEMO.payer(0), 10))
            ).status == "succeeded"

    run(scenario)


def test_a_webhook_secret_rotation_signs_with_both_secrets_until_the_old_is_revoked(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        receiver = Receiver()
        async with listening(receiver), serving(tmp_path, shop(None), FAST) as api:
            await api.admin("POST", "/v1/admin/accounts", {"id": "rs", "currency": "EUR"})
            merchant = {"id": "rotating", "settlement_account": "rs", "webhook_url": receiver.url}
            _, created = await api.admin("POST", "/v1/admin/merchants", merchant)
            old = bytes.fromhex(created["webhook_secret"])
            key = created["key"]
            client = Client(api.base_url, "rotating", key["kid"], bytes.fromhex(key["secret"]))

            async def delivered_header(order_id: str) -> tuple[bytes, str]:
                paid = await client.create_payment(
                    order_id=order_id, payer=DEMO.payer(0), amount=1, currency="EUR"
                )
                event_id = "evt_" + paid["id"].removeprefix("pay_")
                await until(lambda: event_id in receiver.delivered_ids(), f"{event_id} delivered")
                [arrival] = receiver.attempts_of(event_id)
                return arrival.body, arrival.header

            async with client:
                body, header = await delivered_header("before")
                assert header.count("v1=") == 1
                webhooks.verify(body, header, old)
                status, rotated = await api.admin(
                    "POST", "/v1/admin/merchants/rotating/webhook-secret"
                )
                assert status == 201
                new = bytes.fromhex(rotated["secret"])
                body, header = await delivered_header("during")
                assert header.count("v1=") == 2, "one v1 per secret while rotating"
                assert webhooks.verify(body, header, old) == webhooks.verify(body, header, new)
                status, _ = await api.admin(
                    "DELETE", "/v1/admin/merchants/rotating/webhook-secret/previous"
                )
                assert status == 200
                body, header = await delivered_header("after")
                webhooks.verify(body, header, new)
                with pytest.raises(SignatureMismatchError):
                    webhooks.verify(body, header, old)
            status, refused = await api.admin(
                "POST", f"/v1/admin/merchants/{DEMO.merchant_id}/webhook-secret"
            )
            assert (status, refused["error"]["code"]) == (409, "merchant_managed_by_config")

    run(scenario)
