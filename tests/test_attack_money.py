"""The issue-12 fixes attacked again for money safety and replay: consent decisions that come
out the same after any recovery, refunds only by the payment's merchant, one merchant per
settlement account whatever the configuration file says, start-up refusals in one line, and
invariants that catch a ledger broken by hand."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from instapay.client import ApiError
from instapay.demo import DemoMerchant, grant_mandates
from instapay.engine import Engine, RecordType
from instapay.ledger import Ledger, Owner
from instapay.mandates import MandateGrant, MandateRevocation, mandate_id
from instapay.model import EngineConfig, Failure, Merchant, Status
from instapay.storage import snapshots
from legacy_ledger import legacy_state, rewrite_snapshot_as_legacy
from servers import DEMO, AdminApi, Running, free_port, pay, refused, serving, start
from test_consent import balance, opened_and_funded, write_log

SHOP = {"id": "shop", "settlement_account": "shop.settlement"}
NEW_DEMO_ACCOUNT = {"id": "demo.new", "currency": "EUR"}


async def create_merchant(api: AdminApi | Running, merchant: dict[str, str]) -> DemoMerchant:
    """A merchant created through the admin API, on a new settlement account: its key."""
    account = {"id": merchant["settlement_account"], "currency": "EUR"}
    assert (await api.admin("POST", "/v1/admin/accounts", account))[0] == 200
    status, created = await api.admin("POST", "/v1/admin/merchants", merchant)
    assert status == 201, created
    key = created["key"]
    return DemoMerchant(merchant["id"], key["kid"], bytes.fromhex(key["secret"]))


def test_a_revoked_mandate_stays_revoked_after_a_snapshot_over_an_expired_one(
    tmp_path: Path,
) -> None:
    """payer-0's mandate for demo expired, a new one replaced it, and that one was revoked: no
    mandate allows demo to debit payer-0 (`mandate_missing`). A snapshot used to bring the
    expired one back as the payer's mandate, so the same payment was `mandate_expired` after a
    restart from it, and a crash after the snapshot left a log that no longer started (its
    replay gave another decline than the logged one)."""
    now_s = int(time.time())
    expired = MandateGrant("payer-0", DEMO.merchant_id, 100, None, now_s - 10, now_s - 20)
    replacing = MandateGrant("payer-0", DEMO.merchant_id, 100, None, None, now_s - 5)
    records = [
        *opened_and_funded("payer-0"),  # LSNs 1 to 3
        (RecordType.MANDATE_GRANTED, orjson.dumps(expired.record())),
        (RecordType.MANDATE_GRANTED, orjson.dumps(replacing.record())),
        (
            RecordType.MANDATE_REVOKED,
            orjson.dumps(MandateRevocation("payer-0", mandate_id(5), now_s - 1).record()),
        ),
    ]
    write_log(tmp_path, records)

    async def pay_after_a_snapshot() -> None:
        async with Engine.open(tmp_path, config=DEMO.config(), snapshot_on_close=False) as engine:
            engine.snapshot()
            declined = await engine.submit(DEMO.payment("o-1", "payer-0", 1))
            assert declined.failure_code == Failure.MANDATE_MISSING

    async def restart_from_the_snapshot() -> None:
        async with Engine.open(tmp_path, config=DEMO.config()) as engine:
            replayed = engine.payment("pay_7")
            assert replayed is not None
            assert replayed.failure_code == Failure.MANDATE_MISSING
            again = await engine.submit(DEMO.payment("o-2", "payer-0", 1))
            assert again.failure_code == Failure.MANDATE_MISSING
            assert engine.balance("payer-0") == ("EUR", 1000)

    asyncio.run(pay_after_a_snapshot())
    asyncio.run(restart_from_the_snapshot())


def test_a_merchant_refunds_no_payment_made_into_its_account_by_another_merchant(
    tmp_path: Path,
) -> None:
    """The configuration file moves demo to a new settlement account and gives demo's old one
    to a new merchant, evil (one merchant per account at any time). Refunds used to be
    authorised by the settlement account alone, so evil could refund demo's past sales from it:
    a refund is its payment's merchant's only."""
    evil = DemoMerchant(merchant_id="evil", kid="evil.k1")
    moved = EngineConfig(
        (
            Merchant(DEMO.merchant_id, "demo.new", {DEMO.kid: DEMO.secret}),
            Merchant(evil.merchant_id, DEMO.settlement_account, {evil.kid: evil.secret}),
        )
    )

    async def sell() -> str:
        async with serving(tmp_path, DEMO.config()) as api:
            async with api.client() as demo:
                sale = await demo.create_payment(
                    order_id="sale-1", payer=DEMO.payer(0), amount=4000, currency="EUR"
                )
            assert sale["status"] == "succeeded"
            assert (await api.admin("POST", "/v1/admin/accounts", NEW_DEMO_ACCOUNT))[0] == 200
            sale_id: str = sale["id"]
            return sale_id

    async def refund_as_evil(sale_id: str) -> None:
        async with serving(tmp_path, moved) as api:
            async with api.client(evil) as thief:
                with pytest.raises(ApiError) as refused:
                    await thief.refund(sale_id, 4000)
                assert (refused.value.status, refused.value.code) == (404, "not_found")
            assert await balance(api, DEMO.settlement_account) == 4000

    asyncio.run(refund_as_evil(asyncio.run(sell())))


# ---- invariants against ledgers broken by hand ---------------------------------------------------
# The native state cannot be changed from Python: a ledger is broken in a snapshot of the JSON form
# written before the ledger was native, which still loads (rust/state has the in-memory cases).


def shop_ledger() -> Ledger:
    """alice with 1000 and a mandate for the merchant "shop" (account "shop"), and one payment
    logged before consent (no mandate), then two under alice's mandate."""
    ledger = Ledger()
    ledger.open_account("alice", "EUR", False)
    ledger.open_account("shop", "EUR", False, Owner.MERCHANT)
    ledger.deposit("alice", 1000, "EUR")
    assert ledger.pay_as_before_consent(4, "alice", "shop", 100, "EUR") is None
    ledger.grant_mandate(5, MandateGrant("alice", "shop", 500, None, None, 1))
    for lsn in (6, 7):
        assert ledger.pay(lsn, "alice", "shop", 100, "EUR", merchant_id="shop", created_s=2) is None
    ledger.check_invariants()
    return ledger


def test_check_invariants_catches_a_payment_without_mandate_after_consented_ones() -> None:
    """Payments without a mandate are those logged before consent, which all come before the
    first payment under the consent rules: one after it debited its payer without consent."""
    state = legacy_state(shop_ledger(), ["pay_4", "pay_6", "pay_7"])
    Ledger.from_snapshot(state).check_invariants()
    state["payments"][2][6] = None
    with pytest.raises(AssertionError, match="pay_7 debited alice without consent"):
        Ledger.from_snapshot(state)


THIEF = DemoMerchant(merchant_id="thief", kid="thief.k1")
BOTH = EngineConfig((*DEMO.config().merchants, *THIEF.config().merchants))
# A payment row of the JSON ledger: its id, payer, ..., and the id of its mandate seventh.
MANDATE_AT = 6


async def broken_by_hand(directory: Path, break_it: Callable[[dict[str, Any], str], None]) -> None:
    """thief paid by payer-0 under payer-0's mandate for thief; `break_it` changes the payment
    or the mandates of the ledger (given its JSON rows and the payment's id) in the snapshot."""
    async with Engine.open(directory, config=BOTH, snapshot_on_close=False) as engine:
        await DEMO.set_up(engine, payers=1, balance=1000)
        await engine.open_account(THIEF.settlement_account, "EUR")
        await grant_mandates(engine, [DEMO.payer(0)], THIEF.merchant_id)
        paid = await engine.submit(THIEF.payment("t-1", DEMO.payer(0), 100))
        assert paid.status == Status.SUCCEEDED
        engine.snapshot()
    rewrite_snapshot_as_legacy(directory, lambda ledger: break_it(ledger, paid.id))


def payment_row(ledger: dict[str, Any], payment_id: str) -> list[Any]:
    [row] = [row for row in ledger["payments"] if row[0] == payment_id]
    return row  # type: ignore[no-any-return]


def mandate_row(ledger: dict[str, Any], mandate_id_: str) -> dict[str, Any]:
    """The mandate row as a dict of its fields; changes to it go back into the row."""
    fields = ledger["mandates"]["fields"]
    [row] = [row for row in ledger["mandates"]["rows"] if row[0] == mandate_id_]
    return dict(zip(fields, row, strict=True))


def set_mandate_row(ledger: dict[str, Any], changed: dict[str, Any]) -> None:
    rows = ledger["mandates"]["rows"]
    rows[:] = [[*changed.values()] if row[0] == changed["id"] else row for row in rows]


def under_demos_mandate(ledger: dict[str, Any], payment_id: str) -> None:
    """The thief's payment names payer-0's mandate for demo, not for thief."""
    mandates = [mandate_row(ledger, row[0]) for row in ledger["mandates"]["rows"]]
    [for_demo] = [mandate["id"] for mandate in mandates if mandate["merchant_id"] == "demo"]
    payment_row(ledger, payment_id)[MANDATE_AT] = for_demo


def after_expiry(ledger: dict[str, Any], payment_id: str) -> None:
    """The thief's mandate expired before its payment."""
    mandate = mandate_row(ledger, payment_row(ledger, payment_id)[MANDATE_AT])
    set_mandate_row(ledger, {**mandate, "expires_at_s": mandate["created_s"]})


@pytest.mark.parametrize("break_it", [under_demos_mandate, after_expiry])
def test_recovery_refuses_a_payment_its_mandate_did_not_allow(
    tmp_path: Path, break_it: Callable[[dict[str, Any], str], None]
) -> None:
    """The ledger alone cannot tell whose payment it is nor when it was made; the engine's
    results can, and recovery checks them against each payment's mandate."""
    asyncio.run(broken_by_hand(tmp_path, break_it))

    async def recover() -> None:
        async with Engine.open(tmp_path, config=BOTH):
            pass

    with pytest.raises(AssertionError, match="debited payer-0 without consent"):
        asyncio.run(recover())


def test_a_configured_merchant_on_an_admin_merchants_settlement_account_refuses_start_up(
    tmp_path: Path,
) -> None:
    """The admin API created shop on shop.settlement; the operator then adds evil to the
    configuration file on the same account (the file cannot know it). Both used to run on one
    account, evil's sales and refunds mixed into shop's money. `instapay serve` now refuses,
    in one line naming both merchants and the account, and changes nothing."""

    async def create_shop() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            await create_merchant(api, SHOP)

    asyncio.run(create_shop())
    lsn_before = snapshots.newest_snapshot_lsn(tmp_path)
    settings = tmp_path / "instapay.toml"
    settings.write_text(
        '[[merchants]]\nid = "evil"\nsettlement_account = "shop.settlement"\n'
        f'[merchants.keys]\n"evil.k1" = {{ secret_hex = "{"ab" * 32}" }}\n'
    )
    status, errors = refused(tmp_path, free_port(), "--config", str(settings))
    assert status == 1
    assert errors[-1] == (
        "instapay serve: the engine could not start: merchant shop (created by an admin call) "
        "settles into shop.settlement, which the configuration file gives to merchant evil: "
        "give one of them another settlement account"
    )
    assert snapshots.newest_snapshot_lsn(tmp_path) == lsn_before


def test_a_log_that_no_longer_replays_to_its_outcomes_refuses_start_up_in_one_line(
    tmp_path: Path,
) -> None:
    """payer-0 paid demo; the server was killed (no snapshot); the operator then gives payer-0
    to a new configured merchant as its settlement account. Owners come from the configuration
    and it is not logged, so the replay declines the logged payment (`payer_not_authorized`):
    start-up must refuse in one line naming the record, not with a traceback."""
    port = free_port()
    server = start(tmp_path, port)
    demo = DemoMerchant.load_or_create(tmp_path)
    assert pay(port, demo, "sale-1")[0]["status"] == "succeeded"
    server.process.kill()
    server.stop()
    settings = tmp_path / "instapay.toml"
    settings.write_text(
        "".join(
            f'[[merchants]]\nid = "{merchant_id}"\nsettlement_account = "{account}"\n'
            f'[merchants.keys]\n"{kid}" = {{ secret_hex = "{secret.hex()}" }}\n'
            for merchant_id, account, kid, secret in [
                (demo.merchant_id, demo.settlement_account, demo.kid, demo.secret),
                ("newshop", demo.payer(0), "newshop.k1", bytes(32)),
            ]
        )
    )
    status, errors = refused(tmp_path, free_port(), "--config", str(settings))
    assert status == 1
    assert errors[-1].startswith("instapay serve: the engine could not start: ")
    assert "gave payer_not_authorized, the log says it succeeded" in errors[-1]
    assert not any(line.startswith("Traceback") for line in errors)
