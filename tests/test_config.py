"""The TOML configuration: what it accepts, what it refuses (naming the key), and a server
running on it."""

import asyncio
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from instapay import cli, config, webhooks
from instapay.demo import DemoMerchant, grant_mandates
from instapay.engine import IDEMPOTENCY_CAPACITY_DEFAULT, Engine
from instapay.http import create_app
from instapay.http.app import RUNTIME
from instapay.notify import DeliveryPolicy
from instapay.signing import SIGNATURE_HEADER
from servers import serving

SECRET = b"configured shop secret, 32 bytes"
WEBHOOK_SECRET = b"configured webhook secret, 32 b."
MERCHANT = '[[merchants]]\nid = "a"\nsettlement_account = "b"\n'
FAST_DELIVERY = DeliveryPolicy(schedule_s=(0.05,), jitter=0.0, timeout_s=5.0)


def keys(spec: str) -> str:
    return MERCHANT + f"keys = {{ k = {{ {spec} }} }}"


GOOD = f"""
[server]
host = "127.0.0.1"
port = 9000

[storage]
data_dir = "shop-data"
fsync = "always"

[webhooks]
schedule_s = [1, 2.5, 60]
jitter = 0.0
timeout_s = 3.0

[[merchants]]
id = "shop"
settlement_account = "shop.settlement"
webhook_url = "https://shop.example/hooks"
webhook_secret = {{ secret_hex = "{WEBHOOK_SECRET.hex()}" }}

[merchants.keys]
"shop.k1" = {{ secret_hex = "{SECRET.hex()}" }}
"shop.k2" = {{ secret_env = "SHOP_K2" }}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "instapay.toml"
    path.write_text(text)
    return path


def test_a_full_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_K2", "second key from the environment")
    monkeypatch.setenv("INSTAPAY_ADMIN_TOKEN", "admin-from-env")
    loaded = config.load(write(tmp_path, GOOD))
    assert (loaded.host, loaded.port, loaded.data_dir, loaded.fsync) == (
        "127.0.0.1",
        9000,
        Path("shop-data"),
        "always",
    )
    [shop] = loaded.engine.merchants
    assert shop.keys == {"shop.k1": SECRET, "shop.k2": b"second key from the environment"}
    assert (shop.settlement_account, shop.webhook_url) == (
        "shop.settlement",
        "https://shop.example/hooks",
    )
    assert shop.webhook_secret == WEBHOOK_SECRET
    assert loaded.admin_token == "admin-from-env"  # noqa: S105 (a test value)
    assert loaded.delivery == DeliveryPolicy(schedule_s=(1, 2.5, 60), jitter=0.0, timeout_s=3.0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[server]\nport = '80'\n[[merchants]]", "server.port must be a int"),
        ("[surprise]\n", "unknown tables"),
        ('[storage]\nfsync = "sometimes"', 'storage.fsync must be "always" or "off"'),
        ("[server]\nhost = 'x'", "must list at least one merchant"),
        ('[[merchants]]\nid = "a"\nsettlement_account = "b"\nkeys = {}', "at least one key"),
        (keys('secret_hex = "zz"'), "not hex"),
        (keys('secret_hex = "00"'), "at least 16 bytes"),
        (
            keys('secret_env = "NOPE_NOT_SET"'),
            "NOPE_NOT_SET is not set",
        ),
        (
            '[[merchants]]\nid = "a"\nkeys = { k = { secret_hex = "00" } }',
            "settlement_account must be a str",
        ),
        (
            '[[merchants]]\nid = "a"\nsettlement_account = "b"\ncolour = "red"\nkeys = {}',
            "unknown keys",
        ),
        ("not toml at all [", "instapay.toml"),
        (
            '[[merchants]]\nid = "a"\nsettlement_account = "b"\nwebhook_url = "https://a.example"'
            '\nkeys = { k = { secret_hex = "00" } }',
            "webhook_secret is required with webhook_url",
        ),
        ("[webhooks]\nschedule_s = [1, -2]", "schedule_s must be a list of waits"),
        (
            keys('secret_hex = "' + "ab" * 16 + '"')
            + "\n"
            + keys('secret_hex = "' + "cd" * 16 + '"'),
            "each id must be unique, repeated: ['a']",
        ),
        ("[webhooks]\njitter = 1.5", "jitter must be at least 0 and below 1"),
        ("[webhooks]\ntimeout_s = 'soon'", "webhooks.timeout_s must be a float"),
    ],
)
def test_a_wrong_config_names_what_is_wrong(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(config.ConfigError, match=problem.replace("[", r"\[").replace("(", r"\(")):
        config.load(write(tmp_path, text))


SHOP = DemoMerchant("shop", "shop.k1", SECRET)


def pay_on_configured_server(tmp_path: Path, loaded: config.ServeConfig) -> tuple[int, int]:
    """Serves `loaded` as `serve --config` does, on a data directory set up (and snapshotted) by
    an engine of the default settings, and pays once: the answer's status, and the capacity of
    the running engine's idempotency index."""

    async def scenario() -> tuple[int, int]:
        data_dir = tmp_path / "data"
        async with Engine.open(data_dir, config=loaded.engine) as engine:
            await engine.open_account("shop.settlement", "EUR")
            await engine.open_account(SHOP.payer(0), "EUR")
            await engine.deposit(SHOP.payer(0), 100, "EUR")
            await grant_mandates(engine, [SHOP.payer(0)], "shop")
        app = create_app(cli.configured_settings(loaded, data_dir))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        running = await app[RUNTIME].ready()
        request = SHOP.payment("o-1", SHOP.payer(0), 40)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: request.header or ""}
        try:
            async with (
                ClientSession() as session,
                session.post(
                    str(server.make_url(request.path)), data=request.body, headers=headers
                ) as response,
            ):
                return response.status, running.state.index.capacity_max
        finally:
            await server.close()

    return asyncio.run(scenario())


def test_a_server_runs_on_the_configured_merchant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_K2", "second key from the environment")
    loaded = config.load(write(tmp_path, GOOD))
    assert loaded.idempotency_capacity == IDEMPOTENCY_CAPACITY_DEFAULT
    assert pay_on_configured_server(tmp_path, loaded) == (200, IDEMPOTENCY_CAPACITY_DEFAULT)


def test_the_server_index_takes_the_configured_capacity_over_its_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_K2", "second key from the environment")
    loaded = config.load(write(tmp_path, "[idempotency]\ncapacity = 5000\n" + GOOD))
    assert pay_on_configured_server(tmp_path, loaded) == (200, 5000)


def test_the_server_engine_takes_the_configured_history_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_K2", "second key from the environment")
    text = "[history]\nlag_records_max = 1234\nlog_keep_records = 10\n" + GOOD
    loaded = config.load(write(tmp_path, text))
    assert (loaded.history, loaded.history_policy.transaction_records_max) == (True, 65_536)

    async def scenario() -> tuple[int, int, int]:
        app = create_app(cli.configured_settings(loaded, tmp_path / "data"))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            running = await app[RUNTIME].ready()
            policy = running.history_policy
            return policy.lag_records_max, policy.log_keep_records, running.history_lsn
        finally:
            await server.close()

    assert asyncio.run(scenario()) == (1234, 10, 0)
    off = config.load(write(tmp_path, "[history]\nenabled = false\n" + GOOD))
    assert off.history is False


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[history]\nlag_records_max = 0", "[history]: history lag_records_max must be at least 1"),
        ("[history]\nenabled = 1", "history.enabled must be a bool"),
        ("[history]\nlog_keep_records = 'all'", "history.log_keep_records must be a int"),
        ("[history]\nkeep = 1", "[history] has unknown keys: ['keep']"),
    ],
)
def test_a_wrong_history_table_names_what_is_wrong(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(config.ConfigError, match=problem.replace("[", r"\[").replace("(", r"\(")):
        config.load(write(tmp_path, text + "\n" + GOOD))


def test_serve_refuses_a_wrong_config_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--config", str(write(tmp_path, "[surprise]\n"))]) == 2
    assert "unknown tables" in capsys.readouterr().err


# ---- a webhook secret rotation in the file, and the idempotency share ---------------------------

OLD_WEBHOOK_SECRET = b"the webhook secret before, 32 b."


def rotating(webhook_url: str, previous: bytes = OLD_WEBHOOK_SECRET) -> str:
    return f"""
[idempotency]
merchant_share_percent = 10

[[merchants]]
id = "shop"
settlement_account = "shop.settlement"
webhook_url = "{webhook_url}"
webhook_secret = {{ secret_hex = "{WEBHOOK_SECRET.hex()}" }}
previous_webhook_secret = {{ secret_hex = "{previous.hex()}" }}
keys = {{ "shop.k1" = {{ secret_hex = "{SECRET.hex()}" }} }}
"""


def test_a_rotation_in_the_file_keeps_both_webhook_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_K2", "second key from the environment")
    loaded = config.load(write(tmp_path, rotating("https://shop.example/hooks")))
    [shop] = loaded.engine.merchants
    assert (shop.webhook_secret, shop.previous_webhook_secret) == (
        WEBHOOK_SECRET,
        OLD_WEBHOOK_SECRET,
    )
    assert loaded.engine.idempotency_share_percent == 10
    assert config.load(write(tmp_path, GOOD)).engine.idempotency_share_percent == 25


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            rotating("https://shop.example/hooks", previous=WEBHOOK_SECRET),
            "previous_webhook_secret is the webhook_secret itself",
        ),
        (
            keys('secret_hex = "' + "ab" * 16 + '"')
            + '\nprevious_webhook_secret = { secret_hex = "'
            + "cd" * 16
            + '" }',
            "previous_webhook_secret needs a webhook_secret",
        ),
        (
            rotating("https://shop.example/hooks").replace("= 10", "= 0"),
            "merchant_share_percent must be from 1 to 100",
        ),
        (
            rotating("https://shop.example/hooks").replace("merchant_share_percent", "share"),
            r"\[idempotency\] has unknown keys",
        ),
        (
            rotating("https://shop.example/hooks").replace(
                "merchant_share_percent = 10", "capacity = 0"
            ),
            "idempotency.capacity must be from 1 to 1073741824 keys",
        ),
        (
            rotating("https://shop.example/hooks").replace(
                "merchant_share_percent = 10", "capacity = '1'"
            ),
            "idempotency.capacity must be a int",
        ),
    ],
)
def test_a_wrong_rotation_or_share_names_what_is_wrong(
    tmp_path: Path, text: str, problem: str
) -> None:
    with pytest.raises(config.ConfigError, match=problem):
        config.load(write(tmp_path, text))


def test_a_delivery_to_a_configured_merchant_carries_a_v1_for_each_secret(tmp_path: Path) -> None:
    """The merchant switches its verifier from the old secret to the new one with no delivery
    that fails either: while the file has both, every delivery verifies with both."""
    arrived: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()

    async def hooks(request: web.Request) -> web.Response:
        arrived.put_nowait((await request.read(), request.headers[SIGNATURE_HEADER]))
        return web.Response()

    async def scenario() -> tuple[bytes, str]:
        receiver_app = web.Application()
        receiver_app.router.add_post("/hooks", hooks)
        receiver = TestServer(receiver_app, host="127.0.0.1")
        await receiver.start_server()
        try:
            loaded = config.load(write(tmp_path, rotating(str(receiver.make_url("/hooks")))))
            shop = DemoMerchant("shop", "shop.k1", SECRET)
            data_dir = tmp_path / "data"
            async with Engine.open(data_dir, config=loaded.engine) as engine:
                await engine.open_account("shop.settlement", "EUR")
                await engine.open_account(shop.payer(0), "EUR")
                await engine.deposit(shop.payer(0), 100, "EUR")
            async with serving(data_dir, loaded.engine, FAST_DELIVERY) as api:
                request = shop.payment("o-1", shop.payer(0), 40)
                headers = {
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: request.header or "",
                }
                async with api.session.post(
                    api.base_url + request.path, data=request.body, headers=headers
                ) as response:
                    assert response.status == 200
                return await asyncio.wait_for(arrived.get(), timeout=30)
        finally:
            await receiver.close()

    body, header = asyncio.run(scenario())
    assert header.count("v1=") == 2
    assert orjson.loads(body)["type"].startswith("payment.")
    signed_at_s = webhooks.verify(body, header, WEBHOOK_SECRET)
    assert webhooks.verify(body, header, OLD_WEBHOOK_SECRET) == signed_at_s
