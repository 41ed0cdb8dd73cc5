"""The reads of the history database end to end: a real engine and its projector on real files,
the real HTTP application, signed requests. The payments list and the account statement, what
one merchant cannot reach of another's, every bad parameter, the database's answers against the
memory's for the reads that still answer from memory, and the export while a server runs."""

import asyncio
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from instapay import signing
from instapay.demo import DemoMerchant, grant_mandates
from instapay.http import ServerSettings, create_app
from instapay.http.app import RUNTIME
from instapay.model import EngineConfig
from instapay.outbox import event_json
from instapay.protocol import PAYMENTS_PATH, payment_lsn, refund_lsn
from instapay.storage.history import history_path
from instapay.storage.history.reads import Cursors, HistoryReader
from servers import ADMIN, DEMO, Running, call, free_port, pay, serving, start
from test_history_projector import write_lock_held

OTHER = DemoMerchant("other", "other.k1")
CONFIG = EngineConfig(DEMO.config().merchants + OTHER.config().merchants)
BALANCE = 1_000_000
JSON = dict[str, Any]


async def paid(
    api: Running,
    order_id: str,
    amount: int,
    merchant: DemoMerchant = DEMO,
    payer: str = DEMO.payer(0),
    *,
    key: str | None = None,
    **extra: object,
) -> JSON:
    fields = {
        "merchant_id": merchant.merchant_id,
        "order_id": order_id,
        "payer": payer,
        "amount": amount,
        "currency": "EUR",
        **extra,
    }
    status, payment, _ = await call(
        api, PAYMENTS_PATH, orjson.dumps(fields), merchant, method="POST", idempotency_key=key
    )
    assert status == 200, payment
    return dict(payment)


async def refunded(api: Running, payment_id: str, amount: int) -> JSON:
    path = f"/v1/payments/{payment_id}/refunds"
    body = orjson.dumps({"amount": amount})
    key = uuid.uuid4().hex
    status, refund, _ = await call(api, path, body, method="POST", idempotency_key=key)
    assert status == 200, refund
    return dict(refund)


async def two_merchants(api: Running) -> None:
    """OTHER settles into its own account and may debit payer-1 (DEMO may debit payer-0..2)."""
    await api.engine.open_account(OTHER.settlement_account, "EUR")
    await grant_mandates(api.engine, [DEMO.payer(1)], OTHER.merchant_id)


def ids(page: JSON) -> list[str]:
    return [item["id"] for item in page["data"]]


def run(directory: Path, scenario: Any) -> None:
    async def main() -> None:
        async with serving(directory, CONFIG, balance=BALANCE) as api:
            await two_merchants(api)
            await scenario(api)

    asyncio.run(main())


def test_the_list_pages_newest_first_filters_and_reads_its_writes(tmp_path: Path) -> None:
    async def scenario(api: Running) -> None:
        made = [await paid(api, f"o-{n}", 10 + n) for n in range(8)]
        made.append(await paid(api, "too-much", BALANCE * 10))  # declined
        made += [await paid(api, f"p-{n}", 5, payer=DEMO.payer(2)) for n in range(3)]
        await paid(api, "theirs", 7, OTHER, DEMO.payer(1))
        newest = list(reversed(made))
        # Acknowledged just now, listed at once: the list waits for the projector.
        status, first, headers = await call(api, "/v1/payments")
        assert status == 200
        assert first == {"object": "list", "data": newest[:10], "has_more": True}
        body = orjson.dumps(first)
        signing.verify_payload(body, headers[signing.SIGNATURE_HEADER], [DEMO.secret])
        cursor = newest[4]["id"]
        status, older, _ = await call(api, f"/v1/payments?limit=4&starting_after={cursor}")
        assert (ids(older), older["has_more"]) == ([p["id"] for p in newest[5:9]], True)
        status, newer, _ = await call(api, f"/v1/payments?limit=3&ending_before={cursor}")
        assert (ids(newer), newer["has_more"]) == ([p["id"] for p in newest[1:4]], True)
        status, failed, _ = await call(api, "/v1/payments?status=failed")
        assert (ids(failed), failed["has_more"]) == ([made[8]["id"]], False)
        status, payer2, _ = await call(api, f"/v1/payments?payer={DEMO.payer(2)}&limit=2")
        assert (ids(payer2), payer2["has_more"]) == ([p["id"] for p in newest[:2]], True)
        created = made[0]["created"]
        window = f"created_gte={created}&created_lt={created + 3600}&limit=100"
        status, everything, _ = await call(api, f"/v1/payments?{window}")
        assert ids(everything) == [p["id"] for p in newest]
        status, none, _ = await call(api, f"/v1/payments?created_gte={created + 3600}")
        assert (status, none["data"], none["has_more"]) == (200, [], False)
        await refunded(api, made[0]["id"], 3)
        status, last, _ = await call(api, f"/v1/payments?starting_after={made[1]['id']}&limit=1")
        assert last["data"] == [{**made[0], "amount_refunded": 3}], "the refund, read back"

    run(tmp_path, scenario)


def test_a_merchant_cannot_list_read_page_or_filter_into_anothers_payments(
    tmp_path: Path,
) -> None:
    async def scenario(api: Running) -> None:
        mine = await paid(api, "secret-order", 100)
        theirs = [await paid(api, f"b-{n}", 1, OTHER, DEMO.payer(1)) for n in range(2)]
        status, listed, _ = await call(api, "/v1/payments?limit=100", merchant=OTHER)
        assert (status, ids(listed)) == (200, [p["id"] for p in reversed(theirs)])
        for name in ("starting_after", "ending_before"):
            path = f"/v1/payments?{name}={mine['id']}"
            status, refused, _ = await call(api, path, merchant=OTHER)
            assert status == 400
            assert refused["error"]["message"] == f"{name}: {mine['id']} is not in this list"
            unknown = f"/v1/payments?{name}=pay_999999"
            status, same, _ = await call(api, unknown, merchant=OTHER)
            assert same["error"]["message"] == f"{name}: pay_999999 is not in this list"
        for query in (f"payer={DEMO.payer(0)}", "status=succeeded&limit=100"):
            status, filtered, _ = await call(api, f"/v1/payments?{query}", merchant=OTHER)
            assert mine["id"] not in ids(filtered)
        status, _, _ = await call(api, f"/v1/payments/{mine['id']}", merchant=OTHER)
        assert status == 404
        status, by_order, _ = await call(api, "/v1/payments?order_id=secret-order", merchant=OTHER)
        assert by_order["data"] == []
        reader = HistoryReader(history_path(api.engine.directory))
        try:
            lsn = payment_lsn(mine["id"])
            assert lsn is not None
            assert await reader.payment(OTHER.merchant_id, lsn) is None
            assert await reader.payments_for_order(OTHER.merchant_id, "secret-order") == []
            events, _ = await reader.events_after(OTHER.merchant_id, 0, 100)
            assert lsn not in [event.lsn for event in events]
        finally:
            reader.close()

    run(tmp_path, scenario)


BAD_QUERIES = [
    ("limit=0", "limit"),
    ("limit=101", "limit"),
    ("limit=x", "limit"),
    ("limit=", "limit"),
    ("limit=%D9%A1", "limit"),  # an Arabic-Indic 1
    ("limit=1&limit=2", "limit"),
    ("created_gte=yesterday", "created_gte"),
    ("created_gte=-1", "created_gte"),
    ("created_lt=1.5", "created_lt"),
    ("created_lt=99999999999999999999", "created_lt"),
    ("status=pending", "status"),
    ("status=failed'%20OR%20'1'='1", "status"),
    ("payer=a%20b", "payer"),
    ("starting_after=pay_1&ending_before=pay_2", "ending_before"),
    ("starting_after=re_5", "starting_after"),
    ("starting_after=pay_01", "starting_after"),
    ("ending_before=pay_1%20OR%201=1", "ending_before"),
    ("starting_after=pay_18446744073709551615", "starting_after"),
    ("stauts=failed", "stauts"),
]


def test_each_bad_parameter_is_a_400_naming_it(tmp_path: Path) -> None:
    async def scenario(api: Running) -> None:
        await paid(api, "o-1", 1)
        for query, name in BAD_QUERIES:
            status, refused, _ = await call(api, f"/v1/payments?{query}")
            assert (status, refused["error"]["code"]) == (400, "invalid_request"), query
            assert refused["error"]["message"].startswith(f"{name}: "), (query, refused)
        injected = "payer=x'OR'1'='1'--"
        status, listed, _ = await call(api, f"/v1/payments?{injected}")
        assert (status, listed["data"]) == (200, []), "a value, not SQL"
        async with api.session.get(api.base_url + "/v1/payments") as unsigned:
            assert unsigned.status == 401
        stranger = DemoMerchant("demo", "stranger.k1")
        status, _, _ = await call(api, "/v1/payments", merchant=stranger)
        assert status == 401

    run(tmp_path, scenario)


def test_a_list_is_503_while_the_history_cannot_catch_up_then_reads_its_writes(
    tmp_path: Path,
) -> None:
    async def scenario(api: Running) -> None:
        await paid(api, "before", 1)
        assert await api.engine.history_caught_up(30.0)
        # Another process holds history.db's write lock: the projector cannot commit meanwhile.
        with write_lock_held(history_path(api.engine.directory)):
            made = await paid(api, "while-locked", 2)
            status, refused, headers = await call(api, "/v1/payments")
            assert (status, refused["error"]["code"]) == (503, "history_catching_up")
            assert headers["Retry-After"] == "1"
        assert await api.engine.history_caught_up(60.0)
        status, listed, _ = await call(api, "/v1/payments")
        assert (status, ids(listed)[0]) == (200, made["id"])

    run(tmp_path, scenario)


def test_an_account_statement_lists_every_balance_change_newest_first(tmp_path: Path) -> None:
    async def scenario(api: Running) -> None:
        payment = await paid(api, "o-1", 300)
        await paid(api, "too-much", BALANCE * 10)  # declined: no entry
        refund = await refunded(api, payment["id"], 100)
        await api.engine.withdraw(DEMO.payer(0), 50, "EUR")
        base = f"/v1/admin/accounts/{DEMO.payer(0)}/entries"
        status, statement = await api.admin("GET", base + "?limit=3")
        assert status == 200
        withdrawal, refund_entry, payment_entry = statement["data"]
        assert statement["has_more"]
        balance = await_balance(api, DEMO.payer(0))
        assert withdrawal["kind"] == "withdrawal"
        assert (withdrawal["amount"], withdrawal["balance_after"]) == (-50, balance)
        assert withdrawal["operation"] is None
        assert withdrawal["created"] is None
        assert refund_entry == {
            "object": "entry",
            "id": f"ent_{refund_lsn(refund['id'])}",
            "account_id": DEMO.payer(0),
            "kind": "refund",
            "amount": 100,
            "currency": "EUR",
            "balance_after": balance + 50,
            "operation": refund["id"],
            "created": refund["created"],
        }
        assert (payment_entry["operation"], payment_entry["amount"]) == (payment["id"], -300)
        assert payment_entry["balance_after"] == BALANCE - 300
        status, rest = await api.admin("GET", f"{base}?starting_after={payment_entry['id']}")
        assert [entry["kind"] for entry in rest["data"]] == ["deposit"]
        assert (rest["data"][0]["balance_after"], rest["has_more"]) == (BALANCE, False)
        settles = f"/v1/admin/accounts/{DEMO.settlement_account}/entries"
        status, credits = await api.admin("GET", settles)
        assert [entry["amount"] for entry in credits["data"]] == [-100, 300]
        status, missing = await api.admin("GET", "/v1/admin/accounts/nobody/entries")
        assert (status, missing["error"]["code"]) == (404, "not_found")
        for query, name in (("limit=0", "limit"), ("starting_after=pay_1", "starting_after")):
            status, refused = await api.admin("GET", f"{base}?{query}")
            assert status == 400
            assert refused["error"]["message"].startswith(f"{name}: ")
        async with api.session.get(api.base_url + base) as anonymous:
            assert anonymous.status == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        async with api.session.get(api.base_url + base, headers=wrong) as guessed:
            assert guessed.status == 401
        assert ADMIN["Authorization"] != wrong["Authorization"]

    run(tmp_path, scenario)


def await_balance(api: Running, account_id: str) -> int:
    balance = api.engine.balance(account_id)
    assert balance is not None
    return balance[1]


def test_the_databases_answers_are_the_memorys(tmp_path: Path) -> None:
    """Payments (by id, by order), refunds and events, read from history.db, equal what the
    engine answers from memory today: the next milestone can switch those reads over."""

    async def scenario(api: Running) -> None:
        payments = [
            await paid(api, "same-order", 100, key="a", description="one", metadata={"k": "v"}),
            await paid(api, "same-order", 200, key="b"),
            await paid(api, "too-much", BALANCE * 10),
            await paid(api, "theirs", 5, OTHER, DEMO.payer(1)),
        ]
        await refunded(api, payments[0]["id"], 30)
        await refunded(api, payments[0]["id"], 500)  # declined
        await refunded(api, payments[1]["id"], 200)
        assert await api.engine.history_caught_up(10.0)
        engine = api.engine
        reader = HistoryReader(history_path(engine.directory))
        try:
            for payment in payments:
                lsn = payment_lsn(payment["id"])
                assert lsn is not None
                merchant = payment["merchant_id"]
                assert await reader.payment(merchant, lsn) == engine.payment(payment["id"])
                by_order = await reader.payments_for_order(merchant, payment["order_id"])
                assert by_order == engine.payments_for_order(merchant, payment["order_id"])
                page = await reader.refunds(merchant, lsn, 100, Cursors())
                newest_first = reversed(engine.refund_lsns(payment["id"]))
                from_memory = [engine.results[n] for n in newest_first]
                assert page.items == from_memory
            for merchant in (DEMO.merchant_id, OTHER.merchant_id):
                events, more = await reader.events_after(merchant, 0, 100)
                lsns, more_in_memory = engine.outbox.events_after(merchant, 0, 100)
                assert [event.lsn for event in events] == lsns
                assert more == more_in_memory
                assert [event_json(e.lsn, e.result) for e in events] == [
                    engine.event(n) for n in lsns
                ]
                paged, more = await reader.events_after(merchant, lsns[0], 1)
                assert ([e.lsn for e in paged], more) == (lsns[1:2], len(lsns) > 2)
        finally:
            reader.close()

    run(tmp_path, scenario)


MAIN = "from instapay.cli import main; raise SystemExit(main())"


def signed_get(port: int, demo: DemoMerchant, path: str) -> JSON:
    """A list from a server in another process: answered once the projector holds the writes
    acknowledged before it (read-your-writes), so what the export reads next holds them too."""
    header = demo.sign(path, b"", method="GET").header or ""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={signing.SIGNATURE_HEADER: header}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        answer: JSON = orjson.loads(response.read())
        return answer


def test_export_reads_a_running_servers_history(tmp_path: Path) -> None:
    directory = tmp_path / "var"
    port = free_port()
    server = start(directory, port)
    try:
        demo = DemoMerchant.load_or_create(directory)
        made = [pay(port, demo, f"export-{n}")[0] for n in range(3)]
        listed = signed_get(port, demo, "/v1/payments?limit=3")
        assert [p["id"] for p in listed["data"]] == [p["id"] for p in reversed(made)]
        window = ["--since", "0", "--until", "9999999999", "--merchant", demo.merchant_id]
        command = [sys.executable, "-c", MAIN, "history", "export", str(directory), *window]
        done = subprocess.run(  # noqa: S603 (this interpreter and our own entry point)
            [*command, "--format", "ndjson"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        rows = [orjson.loads(line) for line in done.stdout.splitlines()]
        exported = {row["id"]: row for row in rows}
        for payment in made:
            row = exported[str(payment["id"])]
            assert (row["type"], row["amount"], row["order_id"]) == (
                "payment",
                payment["amount"],
                payment["order_id"],
            )
        assert server.process.poll() is None, "the server ran throughout"
    finally:
        status, _ = server.stop()
    assert status == 0


def test_a_server_without_a_history_database_says_so_on_a_list(tmp_path: Path) -> None:
    async def main() -> None:
        settings = ServerSettings(tmp_path, CONFIG, history=False)
        app = create_app(settings)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        engine = await app[RUNTIME].ready()
        try:
            async with aiohttp.ClientSession() as session:
                url = str(server.make_url("")).rstrip("/")
                api = Running(engine, url, session, app[RUNTIME])
                status, refused, _ = await call(api, "/v1/payments")
                assert (status, refused["error"]["code"]) == (503, "history_unavailable")
        finally:
            await server.close()
        assert not history_path(tmp_path).exists()

    asyncio.run(main())
