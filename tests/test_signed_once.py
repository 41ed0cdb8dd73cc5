"""Issue 12 §2 and §6 as attacks on a real `instapay serve` process: a signed request applies at
most once whatever header is changed, admin money moves honour their key, and ids, numbers and
JSON bodies are read strictly."""

import asyncio
import hashlib
import hmac
import http.client
import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from instapay.client import Client
from instapay.demo import DemoMerchant
from instapay.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, SignedRequest
from servers import Server, free_port, start

ADMIN_TOKEN = "signed-once-admin-token"  # noqa: S105 (a test's token)
JSON = "application/json"
PAYER_BALANCE = 1_000_000_00

Headers = Sequence[tuple[str, str]]


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def code(self) -> str:
        code: str = self.body["error"]["code"]
        return code


@dataclass
class Served:
    """A running `instapay serve` with its demo merchant's key, called over raw HTTP/1.1."""

    server: Server
    port: int
    demo: DemoMerchant

    def call(self, method: str, target: str, body: bytes = b"", headers: Headers = ()) -> Answer:
        """Sends exactly these headers (a name may repeat), as a client on the wire would."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.putrequest(method, target)
            for name, value in headers:
                connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return Answer(response.status, orjson.loads(response.read()), dict(response.headers))
        finally:
            connection.close()

    def send(self, request: SignedRequest, idempotency_key: str | None = None) -> Answer:
        """A signed request, with `idempotency_key` in place of the signed one when given."""
        headers = [("Content-Type", JSON), (SIGNATURE_HEADER, request.header or "")]
        key = idempotency_key or request.idempotency_key
        if key is not None:
            headers.append((IDEMPOTENCY_HEADER, key))
        return self.call(request.method, request.path, request.body, headers)

    def admin(self, method: str, path: str, body: bytes = b"", headers: Headers = ()) -> Answer:
        admin = [("Authorization", f"Bearer {ADMIN_TOKEN}"), ("Content-Type", JSON)]
        return self.call(method, path, body, [*admin, *headers])

    def balance(self, account_id: str) -> int:
        answer = self.admin("GET", f"/v1/admin/accounts/{account_id}")
        assert answer.status == 200, answer.body
        balance: int = answer.body["balance"]
        return balance

    def payments_for_order(self, order_id: str) -> list[dict[str, Any]]:
        read = self.demo.sign(f"/v1/payments?order_id={order_id}", b"", method="GET")
        answer = self.send(read)
        assert answer.status == 200, answer.body
        payments: list[dict[str, Any]] = answer.body["data"]
        return payments

    def client(self) -> Client:
        return Client(
            f"http://127.0.0.1:{self.port}", self.demo.merchant_id, self.demo.kid, self.demo.secret
        )


def serve(directory: Path, port: int | None = None) -> Served:
    port = port or free_port()
    server = start(directory, port, admin_token=ADMIN_TOKEN)
    return Served(server, port, DemoMerchant.load_or_create(directory))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    running = serve(tmp_path_factory.mktemp("signed-once"))
    try:
        yield running
    finally:
        assert running.server.stop()[0] == 0


def v1_signed(demo: DemoMerchant, path: str, body: bytes) -> SignedRequest:
    """A request as clients signed it before v2: the MAC covers no Idempotency-Key."""
    timestamp_s = int(time.time())
    message = f"{timestamp_s}\nPOST\n{path}\n".encode() + body
    mac = hmac.new(demo.secret, message, hashlib.sha256).hexdigest()
    return SignedRequest(f"t={timestamp_s},kid={demo.kid},v1={mac}", "POST", path, body)


def payment_body(demo: DemoMerchant, order_id: str, payer: str, amount: int) -> bytes:
    fields = {
        "merchant_id": demo.merchant_id,
        "order_id": order_id,
        "payer": payer,
        "amount": amount,
        "currency": demo.currency,
    }
    return orjson.dumps(fields)


# ---- §2: a signed request applies at most once ----------------------------------------------


def test_a_captured_v1_payment_resent_under_fresh_keys_charges_once(served: Served) -> None:
    demo, payer = served.demo, served.demo.payer(10)
    before = served.balance(payer)
    captured = v1_signed(demo, "/v1/payments", payment_body(demo, "v1-order", payer, 700))
    assert served.send(captured).status == 200, "v1 without a key still pays (old clients)"
    for attempt in range(5):
        resent = served.send(captured, idempotency_key=f"fresh-{attempt}")
        assert (resent.status, resent.code) == (401, "idempotency_key_unsigned")
    assert served.balance(payer) == before - 700
    assert len(served.payments_for_order("v1-order")) == 1


def test_the_curl_serve_prints_pays_once_however_it_is_resent(served: Served) -> None:
    assert served.server.process.stdout is not None
    curl = next(line for line in served.server.process.stdout if line.startswith("curl "))
    words = shlex.split(curl)
    url, body = words[2], words[words.index("-d") + 1].encode()
    printed = [words[i + 1].partition(": ")[::2] for i, word in enumerate(words) if word == "-H"]
    path = url.removeprefix(f"http://127.0.0.1:{served.port}")
    signed_key = dict(printed)[IDEMPOTENCY_HEADER]
    payer = orjson.loads(body)["payer"]
    before = served.balance(payer)

    first = served.call("POST", path, body, printed)
    assert first.status == 200, first.body
    again = served.call("POST", path, body, printed)
    assert (again.body["id"], again.headers.get("Idempotent-Replayed")) == (
        first.body["id"],
        "true",
    )
    without_key = [(name, value) for name, value in printed if name != IDEMPOTENCY_HEADER]
    for attempt in range(5):
        fresh = [*without_key, (IDEMPOTENCY_HEADER, f"{signed_key}-{attempt}")]
        resent = served.call("POST", path, body, fresh)
        assert (resent.status, resent.code) == (401, "signature_mismatch")
    assert served.call("POST", path, body, without_key).status == 401
    assert served.balance(payer) == before - orjson.loads(body)["amount"]


def test_a_captured_refund_resent_twelve_times_never_refunds(served: Served) -> None:
    """A refund without a key (signed v2 or v1) has no scope, so it is refused; adding a key to
    the captured request only breaks (v2) or fails to carry (v1) its signature."""
    demo = served.demo
    paid = served.send(demo.payment("refund-order", demo.payer(11), 1000)).body
    path = f"/v1/payments/{paid['id']}/refunds"
    for captured in (demo.sign(path, b'{"amount":100}'), v1_signed(demo, path, b'{"amount":100}')):
        answers = [served.send(captured) for _ in range(12)]
        assert {(a.status, a.code) for a in answers} == {(400, "idempotency_key_required")}
        with_a_key = served.send(captured, idempotency_key="refund-fresh")
        assert with_a_key.status == 401
    assert served.balance(demo.payer(11)) == PAYER_BALANCE - 1000


def test_a_signed_refund_resent_twelve_times_refunds_once(served: Served) -> None:
    demo = served.demo
    paid = served.send(demo.payment("refund-once", demo.payer(12), 1000)).body
    refund = demo.refund(paid["id"], 100, idempotency_key="refund-once-1")
    answers = [served.send(refund) for _ in range(12)]
    assert all(answer.status == 200 for answer in answers)
    assert len({answer.body["id"] for answer in answers}) == 1
    assert [a.headers.get("Idempotent-Replayed") for a in answers[1:]] == ["true"] * 11
    assert served.balance(demo.payer(12)) == PAYER_BALANCE - 1000 + 100


def test_two_sdk_calls_for_one_order_charge_once_unless_a_new_attempt_is_asked(
    served: Served,
) -> None:
    payer = served.demo.payer(13)

    async def main() -> list[dict[str, Any]]:
        async with served.client() as sdk:

            async def pay(key: str | None = None) -> dict[str, Any]:
                return await sdk.create_payment(
                    order_id="sdk-order",
                    payer=payer,
                    amount=250,
                    currency="EUR",
                    idempotency_key=key,
                )

            first, second = await pay(), await pay()
            assert second["id"] == first["id"]
            attempt, its_retry = await pay("sdk-order-attempt-2"), await pay("sdk-order-attempt-2")
            assert its_retry["id"] == attempt["id"] != first["id"]
            refunded = await sdk.refund(first["id"], 50)
            assert refunded["amount"] == 50
            return await sdk.payments_for_order("sdk-order")

    payments = asyncio.run(main())
    assert len(payments) == 2, "one for the two plain calls, one for the explicit new attempt"
    assert served.balance(payer) == PAYER_BALANCE - 2 * 250 + 50


@pytest.mark.parametrize("forged_first", [True, False], ids=["forged-first", "forged-second"])
def test_a_request_with_two_signature_headers_is_refused(
    served: Served, forged_first: bool
) -> None:
    demo, payer = served.demo, served.demo.payer(14)
    order_id = f"two-headers-{forged_first}"
    genuine = demo.payment(order_id, payer, 300)
    forged = f"t={int(time.time())},kid={demo.kid},v2={'0' * 64}"
    pair = [genuine.header or "", forged]
    signatures = [(SIGNATURE_HEADER, value) for value in (pair[::-1] if forged_first else pair)]
    answer = served.call("POST", genuine.path, genuine.body, [("Content-Type", JSON), *signatures])
    assert (answer.status, answer.code) == (401, "signature_malformed")
    assert "more than once" in answer.body["error"]["message"]
    assert served.payments_for_order(order_id) == []


def test_a_request_with_two_idempotency_keys_is_refused(served: Served) -> None:
    demo = served.demo
    signed = demo.payment("two-keys", demo.payer(15), 300, idempotency_key="key-a")
    headers = [
        ("Content-Type", JSON),
        (SIGNATURE_HEADER, signed.header or ""),
        (IDEMPOTENCY_HEADER, "key-a"),
        (IDEMPOTENCY_HEADER, "key-b"),
    ]
    answer = served.call("POST", signed.path, signed.body, headers)
    assert (answer.status, answer.code) == (400, "invalid_request")
    assert served.payments_for_order("two-keys") == []


def keyed(key: str) -> Headers:
    return [(IDEMPOTENCY_HEADER, key)]


def test_admin_deposits_and_withdrawals_honour_their_key_across_restarts(tmp_path: Path) -> None:
    running = serve(tmp_path)
    account = running.demo.payer(20)
    deposit = f"/v1/admin/accounts/{account}/deposits"
    withdrawal = f"/v1/admin/accounts/{account}/withdrawals"
    ten, eleven = b'{"amount":10,"currency":"EUR"}', b'{"amount":11,"currency":"EUR"}'
    try:
        first = running.admin("POST", deposit, ten, keyed("deposit-1"))
        again = running.admin("POST", deposit, ten, keyed("deposit-1"))
        assert (first.status, again.status, again.body) == (200, 200, first.body)
        assert "Idempotent-Replayed" not in first.headers
        assert again.headers.get("Idempotent-Replayed") == "true"
        other = running.admin("POST", deposit, eleven, keyed("deposit-1"))
        assert (other.status, other.code) == (422, "idempotency_key_reused")
        as_withdrawal = running.admin("POST", withdrawal, ten, keyed("deposit-1"))
        assert (as_withdrawal.status, as_withdrawal.code) == (422, "idempotency_key_reused")
        out = running.admin("POST", withdrawal, ten, keyed("withdraw-1"))
        assert running.admin("POST", withdrawal, ten, keyed("withdraw-1")).body == out.body
        assert running.balance(account) == PAYER_BALANCE
    finally:
        running.server.process.kill()  # no snapshot: the next start replays the log
        running.server.stop()

    for recovered_from in ("the log", "a snapshot"):
        restarted = serve(tmp_path)
        try:
            replayed = restarted.admin("POST", deposit, ten, keyed("deposit-1"))
            assert replayed.body == first.body, recovered_from
            assert replayed.headers.get("Idempotent-Replayed") == "true", recovered_from
            withdrawn = restarted.admin("POST", withdrawal, ten, keyed("withdraw-1"))
            assert withdrawn.headers.get("Idempotent-Replayed") == "true", recovered_from
            reused = restarted.admin("POST", deposit, eleven, keyed("deposit-1"))
            assert reused.status == 422, recovered_from
            assert restarted.balance(account) == PAYER_BALANCE, recovered_from
        finally:
            assert restarted.server.stop()[0] == 0  # a clean stop snapshots


# ---- §6: strict everywhere ----------------------------------------------------------------


def percent_encoded(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


def arabic_indic(digits: str) -> str:
    return "".join(chr(0x660 + int(digit)) for digit in digits)


def fullwidth(digits: str) -> str:
    return "".join(chr(0xFF10 + int(digit)) for digit in digits)


@pytest.mark.parametrize(
    "spell",
    [lambda _: "²", arabic_indic, fullwidth, lambda digits: f"0{digits}"],
    ids=["superscript", "arabic-indic", "fullwidth", "leading-zero"],
)
def test_a_payment_id_in_other_digits_names_no_payment(served: Served, spell: Any) -> None:
    """`pay_٢٠٠٢` must not read `pay_2002`, and `pay_²` must not crash the handler (500)."""
    demo = served.demo
    paid = served.send(demo.payment("digits", demo.payer(16), 5)).body
    alias = f"pay_{spell(paid['id'].removeprefix('pay_'))}"
    answer = served.send(demo.sign(f"/v1/payments/{percent_encoded(alias)}", b"", method="GET"))
    assert (answer.status, answer.code) == (404, "not_found")


@pytest.mark.parametrize("limit", ["\u00b2", "\u0663", "1\u0660", "+5", " 5"])
def test_a_page_length_in_other_digits_is_refused(served: Served, limit: str) -> None:
    target = f"/v1/events?limit={percent_encoded(limit)}"
    answer = served.send(served.demo.sign(target, b"", method="GET"))
    assert (answer.status, answer.code) == (400, "invalid_request")
    assert "limit" in answer.body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"amount":1,"amount":1000000000000000,"currency":"EUR"}', "duplicate field `amount`"),
        (b'{"amount":NaN,"currency":"EUR"}', "invalid JSON"),
        (b'{"amount":Infinity,"currency":"EUR"}', "invalid JSON"),
        (b'{"amount":1.0,"currency":"EUR"}', "amount: a int is required"),
        (b'{"amount":1e3,"currency":"EUR"}', "amount: a int is required"),
        (b'{"amount":18446744073709551616,"currency":"EUR"}', "amount: a int is required"),
        (b'{"amount":5,"currency":"EUR","memo":"x"}', "unknown fields"),
        (b'{"amount":5,"currency":"EUR"', "invalid JSON"),
        (b'{"amount":5,"currency":"\xff"}', "invalid JSON"),
    ],
)
def test_admin_bodies_are_read_by_the_strict_rules(
    served: Served, body: bytes, problem: str
) -> None:
    account = served.demo.payer(17)
    before = served.balance(account)
    answer = served.admin("POST", f"/v1/admin/accounts/{account}/deposits", body)
    assert (answer.status, answer.code) == (400, "invalid_request")
    assert problem in answer.body["error"]["message"]
    assert served.balance(account) == before


def test_admin_account_bodies_refuse_duplicates_too(served: Served) -> None:
    body = b'{"id":"dup-account","currency":"EUR","currency":"USD"}'
    answer = served.admin("POST", "/v1/admin/accounts", body)
    assert (answer.status, answer.code) == (400, "invalid_request")
    assert served.admin("GET", "/v1/admin/accounts/dup-account").status == 404
