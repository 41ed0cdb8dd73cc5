"""Merchants and keys managed through the admin API: creation, rotation with the old and the new
key valid together, revocation, every refusal, and the state surviving restarts (from the log
alone and from a snapshot)."""

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from instapay import cli
from instapay.client import ApiError, Client
from instapay.demo import DemoMerchant, grant_mandates
from instapay.engine import Engine
from instapay.outbox import DeliveryOutcome
from instapay.signing import SignedRequest
from servers import ADMIN_TOKEN, DEMO, Running, serving

SHOP = {"id": "shop", "settlement_account": "shop.settlement"}


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


async def open_settlement(api: Running, account_id: str = "shop.settlement") -> None:
    status, _ = await api.admin("POST", "/v1/admin/accounts", {"id": account_id, "currency": "EUR"})
    assert status == 200


async def create_shop(api: Running) -> dict[str, Any]:
    """The merchant "shop", which the demo's first payer lets debit it."""
    await open_settlement(api)
    status, created = await api.admin("POST", "/v1/admin/merchants", SHOP)
    assert status == 201, created
    await grant_mandates(api.engine, [DEMO.payer(0)], "shop")
    return created


def client_for(api: Running, kid: str, secret_hex: str) -> Client:
    return Client(api.base_url, "shop", kid, bytes.fromhex(secret_hex))


async def pay(client: Client, order_id: str) -> dict[str, Any]:
    return await client.create_payment(
        order_id=order_id, payer=DEMO.payer(0), amount=100, currency="EUR"
    )


def test_a_created_merchant_takes_payments_with_its_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            created = await create_shop(api)
            key = created["key"]
            assert created["kids"] == [key["kid"]]
            assert created["webhook_secret"] is None, "no webhook URL, no webhook secret"
            async with client_for(api, key["kid"], key["secret"]) as shop:
                paid = await pay(shop, "o-1")
            assert (paid["merchant_id"], paid["status"]) == ("shop", "succeeded")
            status, shown = await api.admin("GET", "/v1/admin/merchants/shop")
            assert status == 200
            assert shown == {
                "object": "merchant",
                "id": "shop",
                "settlement_account": "shop.settlement",
                "webhook_url": None,
                "kids": [key["kid"]],
            }, "an admin read never shows a secret"

    run(scenario())


def test_rotation_keeps_both_keys_valid_until_the_old_one_is_revoked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            old = (await create_shop(api))["key"]
            status, new = await api.admin("POST", "/v1/admin/merchants/shop/keys")
            assert status == 201
            async with (
                client_for(api, old["kid"], old["secret"]) as with_old,
                client_for(api, new["kid"], new["secret"]) as with_new,
            ):
                # Each client checks the answer's signature with its own secret: both work.
                assert (await pay(with_old, "o-1"))["status"] == "succeeded"
                assert (await pay(with_new, "o-2"))["status"] == "succeeded"
                path = f"/v1/admin/merchants/shop/keys/{old['kid']}"
                status, revoked = await api.admin("DELETE", path)
                assert (status, revoked["revoked"]) == (200, True)
                with pytest.raises(ApiError) as refused:
                    await pay(with_old, "o-3")
                assert (refused.value.status, refused.value.code) == (401, "unknown_key")
                assert (await pay(with_new, "o-4"))["status"] == "succeeded"

    run(scenario())


REFUSED = [
    # (method, path, body), (status, error code)
    (("POST", "/v1/admin/merchants", SHOP), (409, "merchant_exists")),
    (
        ("POST", "/v1/admin/merchants", {"id": "other", "settlement_account": "shop.settlement"}),
        (409, "settlement_account_in_use"),
    ),
    (
        ("POST", "/v1/admin/merchants", {"id": "other", "settlement_account": "nowhere"}),
        (400, "account_not_found"),
    ),
    (
        (
            "POST",
            "/v1/admin/merchants",
            {"id": "o", "settlement_account": "x", "webhook_url": "ftp://x"},
        ),
        (400, "invalid_request"),
    ),
    (
        ("POST", "/v1/admin/merchants", {"id": "bad id", "settlement_account": "x"}),
        (400, "invalid_request"),
    ),
    (("POST", "/v1/admin/merchants", {"id": "other"}), (400, "invalid_request")),
    (
        (
            "POST",
            "/v1/admin/merchants",
            {"id": "o", "settlement_account": "x", "webhook_url": "http://xn--zz/"},
        ),
        (400, "invalid_request"),
    ),
    (("POST", "/v1/admin/events/evt_%D9%A3/redeliver", None), (404, "not_found")),
    (("POST", "/v1/admin/merchants", [1]), (400, "invalid_request")),
    (("POST", "/v1/admin/merchants/nobody/keys", None), (404, "not_found")),
    (
        ("POST", f"/v1/admin/merchants/{DEMO.merchant_id}/keys", None),
        (409, "merchant_managed_by_config"),
    ),
    (("DELETE", "/v1/admin/merchants/shop/keys/key_unknown", None), (404, "not_found")),
    (("GET", "/v1/admin/merchants/nobody", None), (404, "not_found")),
]


@pytest.mark.parametrize(("call", "expected"), REFUSED)
def test_a_wrong_merchant_change_is_refused_and_changes_nothing(
    tmp_path: Path, call: tuple[str, str, object], expected: tuple[int, str]
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            await create_shop(api)
            await open_settlement(api, "x")
            lsn_before = api.engine.lsn_next
            status, payload = await api.admin(*call)
            assert (status, payload["error"]["code"]) == (
                expected[0],
                expected[1] or "invalid_request",
            ), payload
            assert api.engine.lsn_next == lsn_before, "a refusal logged something"

    run(scenario())


def test_the_last_key_cannot_be_revoked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            kid = (await create_shop(api))["key"]["kid"]
            status, refused = await api.admin("DELETE", f"/v1/admin/merchants/shop/keys/{kid}")
            assert (status, refused["error"]["code"]) == (409, "last_key")

    run(scenario())


def test_admin_calls_need_the_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}x"}
            url = api.base_url + "/v1/admin/merchants"
            async with api.session.post(url, json=SHOP, headers=headers) as response:
                assert response.status == 401

    run(scenario())


@pytest.mark.parametrize("snapshot", [False, True], ids=["from the log", "from a snapshot"])
def test_merchants_keys_and_deliveries_survive_a_restart(tmp_path: Path, snapshot: bool) -> None:
    async def first_life() -> tuple[str, bytes]:
        async with Engine.open(tmp_path, snapshot_on_close=snapshot) as engine:
            await engine.open_account("shop.settlement", "EUR")
            await engine.open_account("payer", "EUR")
            await engine.deposit("payer", 1000, "EUR")
            shop = await engine.create_merchant("shop", "shop.settlement", "http://127.0.0.1:9/h")
            [old_kid] = shop.keys
            kid, secret = await engine.add_key("shop")
            await engine.revoke_key("shop", old_kid)
            paid = await engine.submit(_signed_payment(kid, secret))
            lsn = int(paid.id.removeprefix("pay_"))
            outcome = DeliveryOutcome(lsn, 1_000, "500", delivered=False, next_at_ms=5_000)
            await engine.record_deliveries([outcome])
            await engine.submit(_signed_payment(kid, secret, "o-2"))  # no attempt yet
            await engine.rotate_webhook_secret("shop")
            return kid, secret

    async def second_life(kid: str, secret: bytes) -> None:
        async with Engine.open(tmp_path) as engine:
            shop = engine.merchants["shop"]
            assert list(shop.keys) == [kid], "the rotation was kept"
            assert shop.webhook_url == "http://127.0.0.1:9/h"
            assert shop.previous_webhook_secret is not None, "the rotation in progress was kept"
            assert shop.webhook_secret != shop.previous_webhook_secret
            first, second = engine.outbox.events_of["shop"]
            retried = engine.outbox.delivery_json(first)
            assert (retried["status"], retried["next_attempt_at"]) == ("pending", 5)
            assert [a["outcome"] for a in retried["attempts"]] == ["500"]
            assert engine.outbox.delivery_json(second)["status"] == "pending"
            assert engine.outbox.pending == 2
            lsn = first
            again = await engine.submit(_signed_payment(kid, secret))
            assert (again.id, again.replayed) == (f"pay_{lsn}", True)

    kid, secret = asyncio.run(first_life())
    asyncio.run(second_life(kid, secret))


def _signed_payment(kid: str, secret: bytes, order_id: str = "o-1") -> SignedRequest:
    return DemoMerchant("shop", kid, secret).payment(order_id, "payer", 10)


def test_wal_dump_never_prints_a_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def create() -> tuple[bytes, ...]:
        async with Engine.open(tmp_path) as engine:
            await engine.open_account("shop.settlement", "EUR")
            shop = await engine.create_merchant("shop", "shop.settlement", "https://shop.example/h")
            _, second = await engine.add_key("shop")
            rotated = await engine.rotate_webhook_secret("shop")
            assert shop.webhook_secret is not None
            return next(iter(shop.keys.values())), second, shop.webhook_secret, rotated

    secrets = asyncio.run(create())
    assert cli.main(["wal", "dump", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "MERCHANT_CREATED" in printed
    assert "KEY_ADDED" in printed
    assert "WEBHOOK_SECRET_ROTATED" in printed
    assert "<secret>" in printed
    for secret in secrets:
        assert secret.hex() not in printed
