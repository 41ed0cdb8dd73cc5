"""The HTTP service through real HTTP on a loopback port, with the real engine on real files."""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from instapay import signing
from instapay.demo import DemoMerchant
from instapay.engine import Engine
from instapay.http import ServerSettings, create_app
from instapay.signing import SignedRequest

T = TypeVar("T")
DEMO = DemoMerchant()
BALANCE = 10_000


async def funded(directory: Path) -> None:
    async with Engine.open(directory, config=DEMO.config()) as engine:
        await DEMO.set_up(engine, payers=3, balance=BALANCE)


def serve(directory: Path, scenario: Callable[[ClientSession, str], Awaitable[T]]) -> T:
    """Runs the real app on a loopback port around `scenario(session, base_url)`."""

    async def main() -> T:
        if not (directory / "wal").exists():
            await funded(directory)
        server = TestServer(create_app(ServerSettings(directory, DEMO.config())), host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as session:
                return await scenario(session, str(server.make_url("")))
        finally:
            await server.close()

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
