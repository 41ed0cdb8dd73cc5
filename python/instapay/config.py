"""The server's TOML configuration (`instapay serve --config instapay.toml`).

    [server]
    host = "0.0.0.0"
    port = 8080
    admin_token_env = "INSTAPAY_ADMIN_TOKEN"   # the admin token is read from this variable
    tls_cert = "/etc/instapay/cert.pem"        # both or neither: HTTPS (instapay.http.tls)
    tls_key = "/etc/instapay/key.pem"
    idle_timeout_s = 15.0                      # limits, all optional; the defaults are shown
    body_read_timeout_s = 30.0                 # (README, "Limits and timeouts")
    connections_max = 1000
    peer_connections_max = 100
    body_bytes_in_flight_max = 67108864

    [storage]
    data_dir = "/var/lib/instapay"
    fsync = "always"                           # "off" is for benchmarks only: unsafe

    [webhooks]                                 # all optional; the defaults are shown
    schedule_s = [15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800,
                  21600, 21600]                # waits between attempts (WeChat Pay's, ~24 h)
    jitter = 0.1                               # each wait shortened by up to this share
    timeout_s = 10.0
    in_flight_max = 64
    in_flight_per_merchant_max = 8

    [idempotency]                              # optional; the defaults are shown
    merchant_share_percent = 25                # a merchant's share; more only while one stays free
    capacity = 1000000                         # keys held (24 h each); ~59 bytes a key, allocated
                                               # at start

    [history]                                  # history.db; optional, the defaults are shown
    enabled = true                             # false: no history.db (and no lists from it)
    lag_records_max = 200000                   # projector this far behind: payments get 503
    log_keep_records = 0                       # log kept below what snapshots and history passed
    transaction_records_max = 65536            # records per history transaction
    hot_results_max = 250000                   # results in memory; older ones read from it

    [[merchants]]
    id = "shop"
    settlement_account = "shop.settlement"
    webhook_url = "https://shop.example/instapay"
    webhook_secret = { secret_env = "SHOP_WEBHOOK_SECRET" }    # required with webhook_url
    # optional, while rotating: the old secret signs a second v1 until it is removed
    previous_webhook_secret = { secret_env = "SHOP_OLD_WEBHOOK_SECRET" }
    keys = { "shop.k1" = { secret_env = "SHOP_K1_SECRET" } }   # or { secret_hex = "..." }

Secrets live in the environment (or, for tests and demos, as hex in the file); an unknown key,
a missing field or a wrong type is a `ConfigError` naming it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from instapay import _core
from instapay.engine import IDEMPOTENCY_CAPACITY_DEFAULT, FsyncMode
from instapay.http.limits import Limits
from instapay.http.tls import TlsError, TlsFiles, tls_files
from instapay.model import EngineConfig, Merchant
from instapay.notify import DeliveryPolicy
from instapay.storage.history.projector import HistoryPolicy

SECRET_BYTES_MIN = 16
# The TCP ports a server may listen on (0 would be any free one, which no client could find;
# above 65535 the port would be taken modulo 65536 and differ from the one announced).
PORTS = range(1, 65536)


class ConfigError(ValueError):
    """The configuration file is wrong; the message names the key and what is wrong."""


@dataclass(frozen=True)
class ServeConfig:
    host: str
    port: int
    data_dir: Path
    fsync: FsyncMode
    engine: EngineConfig
    admin_token: str | None
    delivery: DeliveryPolicy
    limits: Limits = field(default_factory=Limits)
    tls: TlsFiles | None = None
    idempotency_capacity: int = IDEMPOTENCY_CAPACITY_DEFAULT
    history: bool = True
    history_policy: HistoryPolicy = field(default_factory=HistoryPolicy)


def _table(data: dict[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    if unknown := set(table) - allowed:
        raise ConfigError(f"[{name}] has unknown keys: {sorted(unknown)}")
    return table


def _typed(where: str, table: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is None or type(value) is not kind:
        raise ConfigError(f"{where}.{key} must be a {kind.__name__}")
    return value


def _port(port: int) -> int:
    if port not in PORTS:
        raise ConfigError(f"server.port must be from {PORTS.start} to {PORTS.stop - 1}")
    return port


def _secret(where: str, spec: Any) -> bytes:
    if not isinstance(spec, dict) or len(spec) != 1 or not {"secret_env", "secret_hex"} & set(spec):
        raise ConfigError(f"{where} must be one of secret_env = VAR or secret_hex = HEX")
    if "secret_env" in spec:
        value = os.environ.get(spec["secret_env"])
        if not value:
            raise ConfigError(f"{where}: environment variable {spec['secret_env']} is not set")
        secret = value.encode()
    else:
        try:
            secret = bytes.fromhex(spec["secret_hex"])
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}.secret_hex is not hex") from error
    if len(secret) < SECRET_BYTES_MIN:
        raise ConfigError(f"{where}: a secret must be at least {SECRET_BYTES_MIN} bytes")
    return secret


def _merchant(index: int, table: Any) -> Merchant:
    where = f"merchants[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    allowed = {
        "id",
        "settlement_account",
        "webhook_url",
        "webhook_secret",
        "previous_webhook_secret",
        "keys",
    }
    if unknown := set(table) - allowed:
        raise ConfigError(f"{where} has unknown keys: {sorted(unknown)}")
    keys = _typed(where, table, "keys", dict)
    if not keys:
        raise ConfigError(f"{where}.keys must hold at least one key")
    webhook_url = table.get("webhook_url")
    if webhook_url is not None:
        _typed(where, table, "webhook_url", str)
        if "webhook_secret" not in table:
            raise ConfigError(f"{where}.webhook_secret is required with webhook_url")
    webhook_secret, previous_webhook_secret = _webhook_secrets(where, table)
    return Merchant(
        id=_typed(where, table, "id", str),
        settlement_account=_typed(where, table, "settlement_account", str),
        keys={kid: _secret(f"{where}.keys.{kid}", spec) for kid, spec in keys.items()},
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        previous_webhook_secret=previous_webhook_secret,
    )


def _webhook_secrets(where: str, table: dict[str, Any]) -> tuple[bytes | None, bytes | None]:
    """The current webhook secret and, during a rotation, the previous one (which signs a second
    v1 until it is removed from the file, as an admin rotation does)."""
    current, previous = table.get("webhook_secret"), table.get("previous_webhook_secret")
    if previous is not None and current is None:
        raise ConfigError(f"{where}.previous_webhook_secret needs a webhook_secret (the new one)")
    current_secret = None if current is None else _secret(f"{where}.webhook_secret", current)
    if previous is None:
        return current_secret, None
    previous_secret = _secret(f"{where}.previous_webhook_secret", previous)
    if previous_secret == current_secret:
        raise ConfigError(f"{where}.previous_webhook_secret is the webhook_secret itself")
    return current_secret, previous_secret


def _merchants(tables: list[Any], share_percent: int) -> EngineConfig:
    merchants = tuple(_merchant(n, table) for n, table in enumerate(tables))
    for name, values in (
        ("id", [m.id for m in merchants]),
        # Refunds are authorised by the settlement account: it must be one merchant's.
        ("settlement_account", [m.settlement_account for m in merchants]),
        ("kid", [kid for m in merchants for kid in m.keys]),
    ):
        if repeated := sorted({value for value in values if values.count(value) > 1}):
            raise ConfigError(f"merchants: each {name} must be unique, repeated: {repeated}")
    return EngineConfig(merchants, idempotency_share_percent=share_percent)


_IDEMPOTENCY_KEYS = {"merchant_share_percent", "capacity"}


def _idempotency_share_percent(data: dict[str, Any]) -> int:
    """A merchant's share of the idempotency index, so that one cannot fill it for all."""
    table = _table(data, "idempotency", _IDEMPOTENCY_KEYS)
    default = EngineConfig().idempotency_share_percent
    share = _typed("idempotency", table, "merchant_share_percent", int, default)
    if not 1 <= share <= 100:
        raise ConfigError("idempotency.merchant_share_percent must be from 1 to 100")
    return int(share)


def _idempotency_capacity(data: dict[str, Any]) -> int:
    """How many keys the index holds: its table is allocated whole at start (about 59 bytes a
    key when full), so the bound is what the machine's memory allows, not what traffic asks."""
    table = _table(data, "idempotency", _IDEMPOTENCY_KEYS)
    capacity = _typed("idempotency", table, "capacity", int, IDEMPOTENCY_CAPACITY_DEFAULT)
    if not 1 <= capacity <= _core.IDEMPOTENCY_CAPACITY_MAX:
        raise ConfigError(
            f"idempotency.capacity must be from 1 to {_core.IDEMPOTENCY_CAPACITY_MAX} keys"
        )
    return int(capacity)


def _history(data: dict[str, Any]) -> tuple[bool, HistoryPolicy]:
    """Whether to keep history.db, and its policy (storage.history.projector.HistoryPolicy)."""
    numbers = [policy.name for policy in fields(HistoryPolicy)]
    table = _table(data, "history", {"enabled", *numbers})
    enabled = _typed("history", table, "enabled", bool, True)
    defaults = HistoryPolicy()
    values = {
        name: _typed("history", table, name, int, getattr(defaults, name)) for name in numbers
    }
    try:
        return enabled, HistoryPolicy(**values)
    except ValueError as error:
        raise ConfigError(f"[history]: {error}") from error


def _delivery(data: dict[str, Any]) -> DeliveryPolicy:
    defaults = DeliveryPolicy()
    numbers = {"jitter", "timeout_s", "in_flight_max", "in_flight_per_merchant_max"}
    table = _table(data, "webhooks", {"schedule_s", *numbers})
    schedule = table.get("schedule_s", list(defaults.schedule_s))
    if not isinstance(schedule, list) or not all(
        type(wait) in (int, float) and wait >= 0 for wait in schedule
    ):
        raise ConfigError("webhooks.schedule_s must be a list of waits in seconds (>= 0)")
    values = {}
    for name in numbers:
        kind = type(getattr(defaults, name))
        value = table.get(name, getattr(defaults, name))
        if type(value) not in (kind, int) or isinstance(value, bool):
            raise ConfigError(f"webhooks.{name} must be a {kind.__name__}")
        values[name] = value
    try:
        return DeliveryPolicy(schedule_s=tuple(schedule), **values)
    except ValueError as error:
        raise ConfigError(f"[webhooks]: {error}") from error


def _limits(server: dict[str, Any]) -> Limits:
    defaults = Limits()
    values = {}
    for limit in fields(Limits):
        kind = type(getattr(defaults, limit.name))
        value = server.get(limit.name, getattr(defaults, limit.name))
        if type(value) not in (kind, int):
            raise ConfigError(f"server.{limit.name} must be a {kind.__name__}")
        values[limit.name] = value
    try:
        return Limits(**values)
    except ValueError as error:
        raise ConfigError(f"[server]: {error}") from error


def _tls(server: dict[str, Any]) -> TlsFiles | None:
    paths = {name: server.get(name) for name in ("tls_cert", "tls_key")}
    for name, value in paths.items():
        if value is not None and type(value) is not str:
            raise ConfigError(f"server.{name} must be a str (a file path)")
    try:
        return tls_files(*(None if value is None else Path(value) for value in paths.values()))
    except TlsError as error:
        raise ConfigError("server.tls_cert and server.tls_key go together") from error


def load(path: Path) -> ServeConfig:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: {error}") from error
    tables = {"server", "storage", "webhooks", "idempotency", "history", "merchants"}
    if unknown := set(data) - tables:
        raise ConfigError(f"unknown tables: {sorted(unknown)}")
    limit_names = {limit.name for limit in fields(Limits)}
    server = _table(
        data, "server", {"host", "port", "admin_token_env", "tls_cert", "tls_key", *limit_names}
    )
    storage = _table(data, "storage", {"data_dir", "fsync"})
    fsync = storage.get("fsync", "always")
    if fsync not in ("always", "off"):
        raise ConfigError('storage.fsync must be "always" or "off"')
    delivery = _delivery(data)
    merchants = data.get("merchants", [])
    if not isinstance(merchants, list) or not merchants:
        raise ConfigError("[[merchants]] must list at least one merchant")
    token_env = _typed("server", server, "admin_token_env", str, "INSTAPAY_ADMIN_TOKEN")
    history, history_policy = _history(data)
    return ServeConfig(
        host=_typed("server", server, "host", str, "127.0.0.1"),
        port=_port(_typed("server", server, "port", int, 8080)),
        data_dir=Path(_typed("storage", storage, "data_dir", str, "var")),
        fsync=fsync,
        engine=_merchants(merchants, _idempotency_share_percent(data)),
        admin_token=os.environ.get(token_env) or None,
        delivery=delivery,
        limits=_limits(server),
        tls=_tls(server),
        idempotency_capacity=_idempotency_capacity(data),
        history=history,
        history_policy=history_policy,
    )
