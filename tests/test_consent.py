"""Payer consent through real servers on loopback: a merchant's settlement account never pays,
payments need a live mandate of the payer for that merchant (limits per payment and per UTC day,
expiry, revocation), the admin API refuses every bad mandate clearly, and all of it is durable:
the same state after a restart from the log alone and from a snapshot, and logs written before
consent still replay to their logged outcomes."""

import asyncio
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from instapay import _core
from instapay.client import Client
from instapay.demo import DemoMerchant, grant_mandates
from instapay.engine import Engine, RecordType
from instapay.mandates import MANDATES_PER_ACCOUNT_MAX, SECONDS_PER_DAY, MandateGrant
from instapay.model import EngineConfig, Failure, PaymentResult, RequestError, Status
from instapay.storage import wal
from legacy_ledger import rewrite_snapshot_as_legacy
from servers import ADMIN_TOKEN, DEMO, AdminApi, Running, free_port, serving, start

THIEF = {"id": "thief", "settlement_account": "thief.settlement"}
MANDATES = "/v1/admin/accounts/{}/mandates"
FOUR_THOUSAND = {"amount": 4000, "currency": "EUR"}


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


async def create_thief(api: AdminApi | Running) -> Client:
    """A second merchant, created through the admin API, with its own valid key."""
    account = {"id": THIEF["settlement_account"], "currency": "EUR"}
    assert (await api.admin("POST", "/v1/admin/accounts", account))[0] == 200
    status, created = await api.admin("POST", "/v1/admin/merchants", THIEF)
    assert status == 201, created
    key = created["key"]
    return Client(api.base_url, THIEF["id"], key["kid"], bytes.fromhex(key["secret"]))


async def balance(api: AdminApi | Running, account_id: str) -> int:
    status, shown = await api.admin("GET", f"/v1/admin/accounts/{account_id}")
    assert status == 200, shown
    amount: int = shown["balance"]
    return amount


async def grant(api: Running, account_id: str, **fields: object) -> tuple[int, dict[str, Any]]:
    return await api.admin("POST", MANDATES.format(account_id), fields)


async def open_funded(api: Running, account_id: str, amount: int) -> None:
    """A customer account with `amount` in it, and no mandate."""
    opened = await api.admin("POST", "/v1/admin/accounts", {"id": account_id, "currency": "EUR"})
    assert opened[0] == 200
    money = {"amount": amount, "currency": "EUR"}
    assert (await api.admin("POST", f"/v1/admin/accounts/{account_id}/deposits", money))[0] == 200


# ---- the theft of issue 12, against `instapay serve` --------------------------------------------


def test_a_merchant_cannot_debit_another_merchants_settlement_account(tmp_path: Path) -> None:
    """Merchant B posts `{"payer": "demo.settlement", "amount": 4000}` with its own valid key: a
    stored decline `payer_not_authorized` that moves nothing, before and after a restart."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = start(tmp_path, port, admin_token=ADMIN_TOKEN)
    demo = DemoMerchant.load_or_create(tmp_path)

    async def attack() -> tuple[Client, dict[str, Any], dict[str, int]]:
        async with aiohttp.ClientSession() as session:
            api = AdminApi(base_url, session)
            async with Client(base_url, demo.merchant_id, demo.kid, demo.secret) as shop:
                sale = await shop.create_payment(
                    order_id="sale-1", payer=demo.payer(0), amount=5000, currency="EUR"
                )
            assert sale["status"] == "succeeded"
            thief = await create_thief(api)
            async with thief:
                stolen, retried = [
                    await thief.create_payment(
                        order_id="take-1",
                        payer=demo.settlement_account,
                        amount=4000,
                        currency="EUR",
                        idempotency_key="take-1",
                    )
                    for _ in range(2)
                ]
                assert retried == stolen, "a stored decline, replayed to a retry"
                unconsented = await thief.create_payment(
                    order_id="take-2", payer=demo.payer(1), amount=4000, currency="EUR"
                )
                assert unconsented["failure_code"] == Failure.MANDATE_MISSING
            accounts = [demo.settlement_account, THIEF["settlement_account"], demo.payer(1)]
            return thief, stolen, {account: await balance(api, account) for account in accounts}

    thief, stolen, balances = asyncio.run(attack())
    assert (stolen["status"], stolen["failure_code"]) == ("failed", "payer_not_authorized")
    assert balances == {
        demo.settlement_account: 5000,
        THIEF["settlement_account"]: 0,
        demo.payer(1): 100_000_000,
    }
    assert server.stop()[0] == 0
    server = start(tmp_path, port, admin_token=ADMIN_TOKEN)
    try:

        async def after_restart() -> None:
            async with aiohttp.ClientSession() as session:
                api = AdminApi(base_url, session)
                for account, amount in balances.items():
                    assert await balance(api, account) == amount
                status, listed = await api.admin("GET", MANDATES.format(demo.settlement_account))
                assert (status, listed["data"]) == (200, [])
            async with thief:
                assert await thief.get_payment(stolen["id"]) == stolen, "the decline is durable"

        asyncio.run(after_restart())
    finally:
        server.stop()


def test_the_batch_endpoint_declines_the_same_theft(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            sale = await api.engine.submit(DEMO.payment("sale-1", DEMO.payer(0), 5000))
            assert sale.status == Status.SUCCEEDED
            async with await create_thief(api) as thief:
                lines = await thief.create_payments_batch(
                    [
                        {"order_id": "b-1", "payer": DEMO.settlement_account, **FOUR_THOUSAND},
                        {"order_id": "b-2", "payer": DEMO.payer(1), **FOUR_THOUSAND},
                    ]
                )
            codes = [line["failure_code"] for line in lines]
            assert codes == ["payer_not_authorized", "mandate_missing"]
            assert await balance(api, DEMO.settlement_account) == 5000
            assert await balance(api, THIEF["settlement_account"]) == 0

    run(scenario())


# ---- the mandate admin API ----------------------------------------------------------------------


def test_a_mandate_lets_its_merchant_debit_within_its_limits_until_revoked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            async with await create_thief(api) as shop:
                # Opened without consent: nobody may debit it yet.
                await open_funded(api, "carol", 10_000)
                early = await shop.create_payment(
                    order_id="o-0", payer="carol", amount=1, currency="EUR"
                )
                assert early["failure_code"] == "mandate_missing"
                limits = {"amount_max_per_payment": 400, "amount_max_per_day": 700}
                status, created = await grant(api, "carol", merchant_id="thief", **limits)
                assert status == 201, created
                assert created == {
                    "object": "mandate",
                    "id": created["id"],
                    "account_id": "carol",
                    "merchant_id": "thief",
                    **limits,
                    "expires_at": None,
                    "created": created["created"],
                    "revoked_at": None,
                    "status": "active",
                    "amount_spent_today": 0,
                }
                assert created["id"].startswith("mdt_")
                outcomes = []
                for number, amount in enumerate([401, 400, 300, 1]):
                    paid = await shop.create_payment(
                        order_id=f"o-{number + 1}", payer="carol", amount=amount, currency="EUR"
                    )
                    outcomes.append(paid["failure_code"])
                status, listed = await api.admin("GET", MANDATES.format("carol"))
                assert status == 200
                assert [m["amount_spent_today"] for m in listed["data"]] == [700]
                status, revoked = await api.admin(
                    "DELETE", f"{MANDATES.format('carol')}/{created['id']}"
                )
                assert (status, revoked["status"]) == (200, "revoked")
                late = await shop.create_payment(
                    order_id="o-9", payer="carol", amount=1, currency="EUR"
                )
                assert late["failure_code"] == "mandate_missing"
            assert outcomes == [
                "mandate_amount_exceeded",
                None,
                None,
                "mandate_daily_limit_exceeded",
            ]
            assert await balance(api, "carol") == 10_000 - 700
            _, listed = await api.admin("GET", MANDATES.format("carol"))
            assert [m["status"] for m in listed["data"]] == ["revoked"]

    run(scenario())


def test_an_expired_mandate_declines_its_payments(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            await open_funded(api, "dave", 100)
            # Far enough ahead that the grant is surely processed before it.
            expires_at = int(time.time()) + 3
            limits = {"amount_max_per_payment": 10, "expires_at": expires_at}
            status, created = await grant(api, "dave", merchant_id=DEMO.merchant_id, **limits)
            assert status == 201, created
            refused = await grant(api, "dave", merchant_id=DEMO.merchant_id, **limits)
            assert refused[0] == 409, "one live mandate per payer and merchant"
            while time.time() < expires_at:
                await asyncio.sleep(0.1)  # until the mandate's expiry has passed
            async with api.client() as demo:
                paid = await demo.create_payment(
                    order_id="after-expiry", payer="dave", amount=5, currency="EUR"
                )
                assert paid["failure_code"] == "mandate_expired"
                _, listed = await api.admin("GET", MANDATES.format("dave"))
                assert [m["status"] for m in listed["data"]] == ["expired"]
                # An expired mandate may be replaced without revoking it first.
                status, _ = await grant(
                    api, "dave", merchant_id=DEMO.merchant_id, amount_max_per_payment=10
                )
                assert status == 201
                paid = await demo.create_payment(
                    order_id="renewed", payer="dave", amount=5, currency="EUR"
                )
            assert paid["status"] == "succeeded"
            assert await balance(api, "dave") == 95

    run(scenario())


TOO_BIG = _core.AMOUNT_MAX + 1


@pytest.mark.parametrize(
    ("account", "body", "refusal"),
    [
        ("nobody", {"merchant_id": "demo", "amount_max_per_payment": 1}, (404, "not_found")),
        (
            "payer-0",
            {"merchant_id": "ghost", "amount_max_per_payment": 1},
            (400, "merchant_not_found"),
        ),
        (
            "demo.settlement",
            {"merchant_id": "demo", "amount_max_per_payment": 1},
            (409, "account_is_settlement"),
        ),
        ("payer-0", {"merchant_id": "demo", "amount_max_per_payment": 1}, (409, "mandate_exists")),
        ("payer-0", {"merchant_id": "demo", "amount_max_per_payment": 0}, (400, "invalid_request")),
        (
            "payer-0",
            {"merchant_id": "demo", "amount_max_per_payment": TOO_BIG},
            (400, "invalid_request"),
        ),
        (
            "payer-0",
            {"merchant_id": "demo", "amount_max_per_payment": True},
            (400, "invalid_request"),
        ),
        (
            "payer-0",
            {"merchant_id": "demo", "amount_max_per_payment": "5"},
            (400, "invalid_request"),
        ),
        (
            "payer-0",
            {"merchant_id": "demo", "amount_max_per_payment": 1.5},
            (400, "invalid_request"),
        ),
        ("payer-0", {"merchant_id": "demo"}, (400, "invalid_request")),
        (
            "payer-0",
            {"merchant_id": "demo", "amount_max_per_payment": 9, "amount_max_per_day": 8},
            (400, "invalid_request"),
        ),
        (
            "payer-0",
            {"merchant_id": "demo", "amount_max_per_payment": 9, "expires_at": 1},
            (400, "invalid_request"),
        ),
        (
            "payer-0",
            {"merchant_id": "demo", "amount_max_per_payment": 9, "expires_at": 10**12},
            (400, "invalid_request"),
        ),
        (
            "payer-0",
            {"merchant_id": "demo", "amount_max_per_payment": 9, "colour": "red"},
            (400, "invalid_request"),
        ),
        (
            "payer-0",
            {"merchant_id": "bad id", "amount_max_per_payment": 9},
            (400, "invalid_request"),
        ),
    ],
)
def test_a_bad_mandate_is_refused_clearly_and_changes_nothing(
    tmp_path: Path, account: str, body: dict[str, object], refusal: tuple[int, str]
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            before = await api.admin("GET", MANDATES.format("payer-0"))
            status, refused = await grant(api, account, **body)
            assert (status, refused["error"]["code"]) == refusal, refused
            assert await api.admin("GET", MANDATES.format("payer-0")) == before

    run(scenario())


def test_revocations_and_reads_are_checked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            _, listed = await api.admin("GET", MANDATES.format("payer-0"))
            [mandate] = listed["data"]
            path = f"{MANDATES.format('payer-0')}/{mandate['id']}"
            other = f"{MANDATES.format('payer-1')}/{mandate['id']}"
            assert (await api.admin("DELETE", other))[0] == 404, "another account's mandate"
            assert (await api.admin("DELETE", path))[0] == 200
            status, again = await api.admin("DELETE", path)
            assert (status, again["error"]["code"]) == (409, "mandate_revoked")
            assert (await api.admin("GET", MANDATES.format("nobody")))[0] == 404
            async with api.session.get(api.base_url + MANDATES.format("payer-0")) as response:
                assert response.status == 401, "admin token required"
            async with api.session.post(
                api.base_url + MANDATES.format("payer-1"),
                data=b'{"merchant_id": "demo", "amount_max_per_payment": 1}',
                headers={"Authorization": "Bearer wrong"},
            ) as response:
                assert response.status == 401

    run(scenario())


def test_grant_and_revoke_cycles_cannot_grow_an_accounts_mandates_without_bound(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            await engine.open_account("payer-0", "EUR")
            for _ in range(MANDATES_PER_ACCOUNT_MAX):
                granted = await engine.grant_mandate("payer-0", DEMO.merchant_id, 1)
                await engine.revoke_mandate("payer-0", granted.id)
            with pytest.raises(RequestError) as refused:
                await engine.grant_mandate("payer-0", DEMO.merchant_id, 1)
            assert (refused.value.http_status, refused.value.code) == (409, "too_many_mandates")
            assert len(engine.mandates_of("payer-0") or []) == MANDATES_PER_ACCOUNT_MAX

    run(scenario())


# ---- durability ----------------------------------------------------------------------------------


def test_mandates_and_their_spend_survive_restarts_from_the_log_and_from_a_snapshot(
    tmp_path: Path,
) -> None:
    """The same state whether recovered from the log alone or from a snapshot: a daily limit
    half spent before the restart stays half spent after it."""

    async def before_restart(engine: Engine) -> None:
        await DEMO.set_up(engine, payers=2, balance=10_000)
        for payer in ("payer-0", "payer-1"):
            [standing] = engine.mandates_of(payer) or []
            await engine.revoke_mandate(payer, standing.id)
        await engine.grant_mandate("payer-0", DEMO.merchant_id, 600, amount_max_per_day=1000)
        paid = await engine.submit(DEMO.payment("o-1", "payer-0", 600))
        assert paid.status == Status.SUCCEEDED

    async def state(directory: Path, snapshot: bool, scenario: Any = None) -> bytes:
        async with Engine.open(
            directory, config=DEMO.config(), snapshot_on_close=snapshot
        ) as engine:
            if scenario is not None:
                await scenario(engine)
            return engine.ledger.to_snapshot()

    live = asyncio.run(state(tmp_path, False, before_restart))
    assert not list((tmp_path / "snapshots").glob("*.snap")), "only the log"
    from_log = asyncio.run(state(tmp_path, True))
    from_snapshot = asyncio.run(state(tmp_path, True))
    assert live == from_log == from_snapshot

    async def after_restart(engine: Engine) -> None:
        declined = await engine.submit(DEMO.payment("o-2", "payer-0", 401))
        assert declined.failure_code == Failure.MANDATE_DAILY_LIMIT_EXCEEDED
        paid = await engine.submit(DEMO.payment("o-3", "payer-0", 400))
        assert paid.status == Status.SUCCEEDED

    asyncio.run(state(tmp_path, True, after_restart))


# ---- logs and snapshots written before consent ---------------------------------------------------


def logged(kind: RecordType, *fields: object) -> tuple[int, bytes]:
    """A record as the engine writes it (a JSON list; the mandate records are objects)."""
    return kind, orjson.dumps(list(fields))


def logged_payment(  # noqa: PLR0917 (the fields that differ between the tests' payments)
    kind: RecordType,
    merchant_id: str,
    order_id: str,
    payer: str,
    settlement: str,
    amount: int,
    created_s: int,
) -> tuple[int, bytes]:
    """A payment record, succeeded, as the engine writes it."""
    key = f"{merchant_id}\x00o:{order_id}"
    fields = [merchant_id, order_id, payer, settlement, amount, "EUR", None, None, created_s]
    return logged(kind, *fields, key, "00" * 32, None)


def write_log(directory: Path, records: list[tuple[int, bytes]]) -> None:
    writer = wal.WalWriter(directory, 1, sync=True, segment_bytes_max=wal.SEGMENT_BYTES_MAX_DEFAULT)
    writer.append([kind for kind, _ in records], [payload for _, payload in records])
    writer.close()


def opened_and_funded(*accounts: str) -> list[tuple[int, bytes]]:
    """OPEN_ACCOUNT records for the demo's settlement account and `accounts`, 1000 into the
    first of them."""
    opened = [
        logged(RecordType.OPEN_ACCOUNT, account, "EUR", 0, False, None)
        for account in (DEMO.settlement_account, *accounts)
    ]
    return [*opened, logged(RecordType.DEPOSIT, accounts[0], "EUR", 1000, False, None)]


def write_old_log(directory: Path) -> None:
    """What the engine logged before consent: demo's settlement account and a payer opened and
    funded, one payment from the payer and one from the settlement account to another merchant's
    (the theft, which then succeeded), both PAYMENT records."""
    created_s = int(time.time())
    demo, settlement = DEMO.merchant_id, DEMO.settlement_account
    records = [
        *opened_and_funded("payer-0", "other.settlement"),
        logged_payment(RecordType.PAYMENT, demo, "o-1", "payer-0", settlement, 600, created_s),
        logged_payment(
            RecordType.PAYMENT, "other", "t-1", settlement, "other.settlement", 400, created_s
        ),
    ]
    write_log(directory, records)


async def pay_after_upgrade(engine: Engine) -> tuple[PaymentResult, PaymentResult]:
    """Under the consent rules now: the same theft is declined, and payer-0, which never
    granted a mandate, cannot be debited until it does."""
    stolen = await engine.submit(DEMO.payment("o-2", DEMO.settlement_account, 1))
    unconsented = await engine.submit(DEMO.payment("o-3", "payer-0", 1))
    assert isinstance(stolen, PaymentResult)
    assert isinstance(unconsented, PaymentResult)
    return stolen, unconsented


def test_a_log_written_before_consent_replays_to_its_logged_outcomes(tmp_path: Path) -> None:
    write_old_log(tmp_path)

    async def scenario() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            old = engine.payment("pay_6")
            assert old is not None
            assert old.status == Status.SUCCEEDED, "replayed as logged"
            assert engine.balance(DEMO.settlement_account) == ("EUR", 200)
            assert engine.balance("other.settlement") == ("EUR", 400)
            stolen, unconsented = await pay_after_upgrade(engine)
            assert stolen.failure_code == Failure.PAYER_IS_MERCHANT
            assert unconsented.failure_code == Failure.MANDATE_MISSING
            await grant_mandates(engine, ["payer-0"], DEMO.merchant_id)
            paid = await engine.submit(DEMO.payment("o-4", "payer-0", 1))
            assert paid.status == Status.SUCCEEDED

    run(scenario())


def test_a_snapshot_written_before_consent_loads_with_settlement_accounts_marked(
    tmp_path: Path,
) -> None:
    """A snapshot whose accounts carry no owner and whose ledger holds no mandates (the format
    before consent, made by stripping a current one): the settlement account still never pays."""
    thief = DemoMerchant(merchant_id="thief", kid="thief.k1")
    config = EngineConfig(DEMO.config().merchants + thief.config().merchants)

    async def set_up() -> None:
        async with Engine.open(tmp_path, config=config) as engine:
            for account in (DEMO.settlement_account, thief.settlement_account, "payer-0"):
                await engine.open_account(account, "EUR")
            await engine.deposit(DEMO.settlement_account, 1000, "EUR")

    async def attack() -> None:
        async with Engine.open(tmp_path, config=config) as engine:
            stolen = await engine.submit(thief.payment("t-1", DEMO.settlement_account, 1))
            assert stolen.failure_code == Failure.PAYER_NOT_AUTHORIZED
            assert engine.balance(DEMO.settlement_account) == ("EUR", 1000)

    def before_consent(ledger: dict[str, Any]) -> None:
        ledger["accounts"] = [row[:4] for row in ledger["accounts"]]
        del ledger["mandates"]

    run(set_up())
    rewrite_snapshot_as_legacy(tmp_path, before_consent)
    run(attack())


def test_replay_counts_each_payment_in_the_utc_day_it_was_logged_in(tmp_path: Path) -> None:
    """A mandate of 100 a day, spent in full yesterday and again today: the log replays to its
    logged outcomes only if each payment counts in the day of its logged time, not the clock's."""
    today_s = int(time.time())
    yesterday_s = today_s - SECONDS_PER_DAY
    grant = MandateGrant("payer-0", DEMO.merchant_id, 100, 100, None, yesterday_s - 1)
    demo, settlement, consented = (
        DEMO.merchant_id,
        DEMO.settlement_account,
        RecordType.PAYMENT_WITH_CONSENT,
    )
    records = [
        *opened_and_funded("payer-0"),
        (RecordType.MANDATE_GRANTED, orjson.dumps(grant.record())),
        logged_payment(consented, demo, "o-1", "payer-0", settlement, 100, yesterday_s),
        logged_payment(consented, demo, "o-2", "payer-0", settlement, 100, today_s),
    ]
    write_log(tmp_path, records)

    async def scenario() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            assert engine.balance("payer-0") == ("EUR", 800)
            declined = await engine.submit(DEMO.payment("o-3", "payer-0", 1))
            assert declined.failure_code == Failure.MANDATE_DAILY_LIMIT_EXCEEDED

    run(scenario())
