"""The HTTP service through real HTTP on a loopback port, with the real engine on real files;
the merchant SDK against it; webhook verification."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from instapay import signing, webhooks
from instapay.client import ApiError, Client
from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.http import ServerSettings, create_app
from instapay.http.app import RUNTIME
from instapay.signing import SignedRequest
from servers import ADMIN, DEMO, serving

T = TypeVar("T")
BALANCE = 10_000


def serve(
    directory: Path,
    scenario: Callable[[ClientSession, str], Awaitable[T]],
    requests_in_flight_max: int = 1000,
) -> T:
    """Runs the real app on a loopback port around `scenario(session, base_url)`."""

    async def main() -> T:
        config = DEMO.config()
        limit = requests_in_flight_max
        async with serving(directory, config, balance=BALANCE, requests_in_flight_max=limit) as api:
            return await scenario(api.session, api.base_url)

    return asyncio.run(main())


async def post(
    session: ClientSession, base: str, request: SignedRequest, **headers: str
) -> tuple[int, dict[str, object], CIMultiDict[str]]:
    all_headers = {"Content-Type": "application/json", **headers}
    if request.header is not None:
        all_headers[signing.SIGNATURE_HEADER] = request.header
    async with session.post(
        base + request.path, data=request.body, headers=all_headers
    ) as response:
        body = await response.read()
        return response.status, orjson.loads(body), CIMultiDict(response.headers)


def test_a_payment_over_http_is_answered_signed_and_replayed(tmp_path: Path) -> None:
    async def scenario(session: ClientSession, base: str) -> None:
        request = DEMO.payment("order-1", DEMO.payer(0), 250)
        status, body, headers = await post(session, base, request)
        assert status == 200
        assert (body["status"], body["amount"], body["order_id"]) == ("succeeded", 250, "order-1")
        assert "X-Request-Id" in headers
        raw = orjson.dumps(body)
        signing.verify_payload(raw, headers[signing.SIGNATURE_HEADER], [DEMO.secret])
        status, again, headers = await post(session, base, request)
        assert (status, again["id"]) == (200, body["id"])
        assert headers["Idempotent-Replayed"] == "true"

    serve(tmp_path, scenario)


@pytest.mark.parametrize(
    ("make_request", "headers", "status", "code"),
    [
        (
            lambda: SignedRequest(None, "POST", "/v1/payments", b"{}"),
            {},
            401,
            "signature_malformed",
        ),
        (lambda: DEMO.sign("/v1/payments", b'{"amount": 1.5}'), {}, 400, "invalid_request"),
        (
            lambda: DEMO.payment("o", "payer-0", 1),
            {"Content-Type": "text/plain"},
            415,
            "unsupported_media_type",
        ),
        (lambda: DEMO.sign("/v1/payments", b"x" * (65 * 1024)), {}, 413, "body_too_large"),
        (lambda: DEMO.sign("/v1/nowhere", b"{}"), {}, 404, "not_found"),
    ],
)
def test_bad_requests_get_a_json_error_with_status_and_code(
    tmp_path: Path,
    make_request: Callable[[], SignedRequest],
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    async def scenario(session: ClientSession, base: str) -> None:
        answer_status, body, answer_headers = await post(session, base, make_request(), **headers)
        assert answer_status == status
        error = body["error"]
        assert isinstance(error, dict)
        assert error["code"] == code
        assert error["request_id"] == answer_headers["X-Request-Id"]
        ok_status, _, _ = await post(session, base, DEMO.payment("still-ok", DEMO.payer(0), 1))
        assert ok_status == 200

    serve(tmp_path, scenario)


def test_fifty_concurrent_identical_requests_make_one_payment(tmp_path: Path) -> None:
    async def scenario(session: ClientSession, base: str) -> None:
        request = DEMO.payment("order-x", DEMO.payer(1), 100)
        answers = await asyncio.gather(*(post(session, base, request) for _ in range(50)))
        assert {status for status, _, _ in answers} == {200}
        assert len({body["id"] for _, body, _ in answers}) == 1
        fresh = [h for _, _, h in answers if "Idempotent-Replayed" not in h]
        assert len(fresh) == 1

    serve(tmp_path, scenario)

    async def balance(directory: Path) -> tuple[str, int] | None:
        async with Engine.open(directory, config=DEMO.config()) as engine:
            return engine.balance(DEMO.payer(1))

    assert asyncio.run(balance(tmp_path)) == ("EUR", BALANCE - 100)


def test_healthz_answers(tmp_path: Path) -> None:
    async def scenario(session: ClientSession, base: str) -> int:
        async with session.get(base + "/healthz") as response:
            return response.status

    assert serve(tmp_path, scenario) == 200


async def get(
    session: ClientSession, base: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    async with session.get(base + path, headers=headers or {}) as response:
        return response.status, orjson.loads(await response.read())


def signed_get(path: str) -> dict[str, str]:
    request = DEMO.sign(path, b"", method="GET")
    return {signing.SIGNATURE_HEADER: request.header or ""}


def test_payments_are_readable_by_id_and_by_order_by_their_merchant_only(tmp_path: Path) -> None:
    async def scenario(session: ClientSession, base: str) -> None:
        _, created, _ = await post(session, base, DEMO.payment("order-7", DEMO.payer(0), 5))
        path = f"/v1/payments/{created['id']}"
        status, body = await get(session, base, path, signed_get(path))
        assert (status, body) == (200, created)
        listing = "/v1/payments?order_id=order-7"
        status, body = await get(session, base, listing, signed_get(listing))
        assert (status, body["data"]) == (200, [created])
        status, body = await get(session, base, path)
        assert status == 401
        other = DemoMerchant(merchant_id="other", kid="other.k1")
        status, _ = await get(
            session,
            base,
            path,
            {signing.SIGNATURE_HEADER: other.sign(path, b"", method="GET").header or ""},
        )
        assert status == 401, "a key the server does not know"
        missing = "/v1/payments/pay_999999"
        status, body = await get(session, base, missing, signed_get(missing))
        assert status == 404

    serve(tmp_path, scenario)


def test_admin_opens_funds_and_reads_accounts_with_the_token_only(tmp_path: Path) -> None:
    async def scenario(session: ClientSession, base: str) -> None:
        async def admin_post(
            path: str, payload: object, headers: dict[str, str]
        ) -> tuple[int, dict[str, object]]:
            async with session.post(base + path, data=orjson.dumps(payload), headers=headers) as r:
                return r.status, orjson.loads(await r.read())

        status, body = await admin_post(
            "/v1/admin/accounts", {"id": "carol", "currency": "EUR"}, ADMIN
        )
        assert (status, body["status"]) == (200, "succeeded")
        status, body = await admin_post(
            "/v1/admin/accounts/carol/deposits", {"amount": 500, "currency": "EUR"}, ADMIN
        )
        assert (status, body["balance"]) == (200, 500)
        status, body = await admin_post(
            "/v1/admin/accounts/carol/withdrawals", {"amount": 900, "currency": "EUR"}, ADMIN
        )
        assert (status, body["failure_code"]) == (200, "insufficient_funds")
        status, body = await get(session, base, "/v1/admin/accounts/carol", ADMIN)
        assert (status, body["balance"]) == (200, 500)
        status, body = await admin_post(
            "/v1/admin/accounts/carol/deposits", {"amount": 1.5, "currency": "EUR"}, ADMIN
        )
        assert status == 400
        status, body = await admin_post(
            "/v1/admin/accounts", {"id": "x", "currency": "EUR"}, {"Authorization": "Bearer wrong"}
        )
        error = body["error"]
        assert status == 401
        assert isinstance(error, dict)
        assert error["code"] == "admin_unauthorized"
        status, _ = await get(session, base, "/v1/admin/accounts/nobody", ADMIN)
        assert status == 404

    serve(tmp_path, scenario)


SECRET = b"webhook secret of the merchant.."


def client(base: str) -> Client:
    return Client(base, DEMO.merchant_id, DEMO.kid, DEMO.secret)


def test_the_sdk_pays_reads_and_refunds_with_verified_answers(tmp_path: Path) -> None:
    async def scenario(_: ClientSession, base: str) -> None:
        async with client(base) as sdk:
            payment = await sdk.create_payment(
                order_id="sdk-1",
                payer=DEMO.payer(0),
                amount=700,
                currency="EUR",
                metadata={"a": "b"},
            )
            assert (payment["status"], payment["metadata"]) == ("succeeded", {"a": "b"})
            assert await sdk.get_payment(payment["id"]) == payment
            assert await sdk.payments_for_order("sdk-1") == [payment]
            refund = await sdk.refund(payment["id"], 200)
            assert (refund["amount"], refund["status"]) == (200, "succeeded")

    serve(tmp_path, scenario)


def test_the_sdk_raises_the_api_error(tmp_path: Path) -> None:
    async def scenario(_: ClientSession, base: str) -> None:
        async with client(base) as sdk:
            with pytest.raises(ApiError) as refused:
                await sdk.create_payment(order_id="o", payer="nobody", amount=0, currency="EUR")
            assert (refused.value.status, refused.value.code) == (400, "invalid_request")
            with pytest.raises(ApiError) as missing:
                await sdk.get_payment("pay_424242")
            assert missing.value.status == 404

    serve(tmp_path, scenario)


def test_the_same_idempotency_key_is_one_payment(tmp_path: Path) -> None:
    async def scenario(_: ClientSession, base: str) -> None:
        async with client(base) as sdk:
            first = await sdk.create_payment(
                order_id="o", payer=DEMO.payer(0), amount=5, currency="EUR", idempotency_key="k-1"
            )
            again = await sdk.create_payment(
                order_id="o", payer=DEMO.payer(0), amount=5, currency="EUR", idempotency_key="k-1"
            )
            assert first["id"] == again["id"]

    serve(tmp_path, scenario)


def test_webhooks_verify_accepts_a_good_signature_and_refuses_the_rest() -> None:
    body = b'{"id":"evt_1"}'
    now_s = int(time.time())
    header = signing.sign_payload([SECRET], body, now_s)
    assert webhooks.verify(body, header, SECRET) == now_s
    with pytest.raises(signing.SignatureMismatchError):
        webhooks.verify(body + b" ", header, SECRET)
    with pytest.raises(signing.StaleSignatureError):
        webhooks.verify(body, signing.sign_payload([SECRET], body, now_s - 301), SECRET)
    with pytest.raises(signing.MalformedSignatureError):
        webhooks.verify(body, None, SECRET)


def write_long_log(directory: Path) -> None:
    """60 k records to replay and no snapshot: the next start spends a while recovering."""

    async def long_log() -> None:
        opened = Engine.open(directory, config=DEMO.config(), fsync="off", snapshot_on_close=False)
        async with opened as engine:
            await DEMO.set_up(engine, payers=3, balance=10**12)
            for batch in range(60):
                requests = [DEMO.payment(f"o-{batch}-{n}", DEMO.payer(0), 1) for n in range(1000)]
                await engine.submit_many(requests)

    asyncio.run(long_log())


def test_readyz_is_503_while_recovering_and_metrics_count_requests(tmp_path: Path) -> None:
    write_long_log(tmp_path)

    async def scenario() -> None:
        app = create_app(ServerSettings(tmp_path, DEMO.config()))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as session:
                base = str(server.make_url(""))
                status, body = await get(session, base, "/readyz")
                assert status == 503, "not ready while the log is replayed"
                assert orjson.dumps(body["error"]).count(b'"code":"starting"') == 1
                async with session.get(base + "/healthz") as alive:
                    assert alive.status == 200, "alive all the same"
                await app[RUNTIME].ready()
                status, _ = await get(session, base, "/readyz")
                assert status == 200
                await post(session, base, DEMO.payment("after", DEMO.payer(0), 1))
                async with session.get(base + "/metrics") as response:
                    text = await response.text()
                assert 'instapay_http_requests_total{route="/readyz",status="503"} 1.0' in text
                assert 'instapay_http_requests_total{route="/v1/payments",status="200"} 1.0' in text
                assert "instapay_wal_writes_total" in text
        finally:
            await server.close()

    asyncio.run(scenario())


async def post_batch(
    session: ClientSession, base: str, lines: list[bytes], header: str | None = None
) -> tuple[int, bytes]:
    body = b"".join(line + b"\n" for line in lines)
    request = DEMO.sign("/v1/payments/batch", body)
    headers = {
        "Content-Type": "application/x-ndjson",
        signing.SIGNATURE_HEADER: header if header is not None else request.header or "",
    }
    async with session.post(base + "/v1/payments/batch", data=body, headers=headers) as response:
        return response.status, await response.read()


def payment_line(order_id: str, amount: int = 1) -> bytes:
    body = {
        "merchant_id": DEMO.merchant_id,
        "order_id": order_id,
        "payer": DEMO.payer(2),
        "amount": amount,
        "currency": "EUR",
    }
    return orjson.dumps(body)


def test_a_batch_streams_one_answer_per_line_in_order_and_signs_the_whole(tmp_path: Path) -> None:
    async def scenario(session: ClientSession, base: str) -> None:
        lines = [payment_line(f"b-{n}") for n in range(2500)]
        lines[7] = b'{"amount": 1.5}'
        lines[8] = payment_line("b-0")  # the same order again: answered as a replay
        status, body = await post_batch(session, base, lines)
        assert status == 200
        *answers, trailer = body.splitlines()
        assert len(answers) == 2500
        parsed = [orjson.loads(answer) for answer in answers]
        assert [p["line"] for p in parsed] == list(range(2500))
        assert parsed[7]["error"]["code"] == "invalid_request"
        assert (parsed[8]["id"], parsed[8]["replayed"]) == (parsed[0]["id"], True)
        assert all(p["status"] == "succeeded" for n, p in enumerate(parsed) if n not in (7, 8))
        signature = orjson.loads(trailer)["signature"]
        signed_part = body[: len(body) - len(trailer) - 1]
        signing.verify_payload(signed_part, signature, [DEMO.secret])

    serve(tmp_path, scenario)


def test_a_batch_is_refused_whole_for_a_bad_signature_or_too_many_lines(tmp_path: Path) -> None:
    async def scenario(session: ClientSession, base: str) -> None:
        status, body = await post_batch(
            session, base, [payment_line("x")], header="t=1,kid=k,v1=00"
        )
        assert status == 401
        status, body = await post_batch(
            session, base, [payment_line(f"y-{n}") for n in range(10_001)]
        )
        assert (status, orjson.loads(body)["error"]["code"]) == (413, "batch_too_large")

    serve(tmp_path, scenario)


def test_too_many_requests_in_flight_get_429_with_retry_after_and_no_state_change(
    tmp_path: Path,
) -> None:
    async def scenario(session: ClientSession, base: str) -> None:
        requests = [DEMO.payment(f"rush-{n}", DEMO.payer(0), 1) for n in range(100)]
        answers = await asyncio.gather(*(post(session, base, request) for request in requests))
        refused = [(body, headers) for status, body, headers in answers if status == 429]
        assert refused, "more requests than the limit were in flight at once"
        assert all(headers["Retry-After"] == "1" for _, headers in refused)
        assert {status for status, _, _ in answers} <= {200, 429}
        paid = sum(1 for status, _, _ in answers if status == 200)
        listing = "/v1/admin/accounts/payer-0"
        status, account = await get(session, base, listing, ADMIN)
        assert (status, account["balance"]) == (200, BALANCE - paid)

    serve(tmp_path, scenario, requests_in_flight_max=2)


def test_the_sdk_retries_a_5xx_with_the_same_key_and_pays_once(tmp_path: Path) -> None:
    write_long_log(tmp_path)

    async def scenario() -> None:
        app = create_app(ServerSettings(tmp_path, DEMO.config()))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        patient = Client(
            str(server.make_url("")), DEMO.merchant_id, DEMO.kid, DEMO.secret, retries_max=12
        )
        try:
            async with patient as sdk:
                assert app[RUNTIME].engine is None, "the first attempts meet 503 starting"
                payment = await sdk.create_payment(
                    order_id="retried", payer=DEMO.payer(1), amount=7, currency="EUR"
                )
                assert payment["status"] == "succeeded"
                assert len(await sdk.payments_for_order("retried")) == 1
        finally:
            await server.close()

    asyncio.run(scenario())
