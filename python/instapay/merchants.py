"""Merchants and their signing keys: from the configuration file, and created or rotated by admin
calls whose records are in the write-ahead log.

A merchant named in the configuration file is managed there (a second key for a rotation is added
to the file); the admin API manages the merchants it created. Rotation keeps the old key valid
next to the new one until the old one is revoked, so a merchant can roll its fleet without a
window in which either key fails. Every change is checked (`check_*`) before it is logged, so an
applied change cannot fail; replaying the log applies the same changes in the same order.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from instapay import _core
from instapay.model import Merchant, RequestError

SECRET_BYTES = 32
KID_PREFIX = "key_"
# A merchant's live keys: enough for a rotation in progress and a spare, few enough that every
# signed response (one v1 per key) stays short.
KEYS_PER_MERCHANT_MAX = 4


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def new_kid() -> str:
    return KID_PREFIX + secrets.token_hex(8)


class Merchants:
    """Who may sign: merchants by id and by kid, and the native key ring that verifies them."""

    def __init__(self, configured: tuple[Merchant, ...]) -> None:
        self.by_id: dict[str, Merchant] = {}
        self.by_kid: dict[str, Merchant] = {}
        self.ring = _core.KeyRing()
        # Webhook secrets by merchant id: the dispatcher signs deliveries with them in batches;
        # the previous secrets of rotations in progress sign a second v1.
        self.webhook_ring = _core.KeyRing()
        self.previous_webhook_ring = _core.KeyRing()
        # Kid -> merchant id and settlement account, natively: what the batch stage resolves a
        # verified request's merchant with (`_core.stage_batch`). Changed with the ring.
        self.table = _core.MerchantTable()
        self.configured = frozenset(merchant.id for merchant in configured)
        for merchant in configured:
            self._put(merchant)

    def _put(self, merchant: Merchant) -> None:
        """Adds or replaces a merchant with all its keys."""
        old = self.by_id.get(merchant.id)
        for kid in old.keys if old else ():
            if kid not in merchant.keys:
                self.ring.remove(kid)
                del self.by_kid[kid]
        self.by_id[merchant.id] = merchant
        for kid, secret in merchant.keys.items():
            if kid in self.by_kid and self.by_kid[kid].id != merchant.id:
                raise ValueError(f"kid {kid!r} belongs to two merchants")
            self.ring.insert(kid, secret)
            self.by_kid[kid] = merchant
        self.table.put(merchant.id, merchant.settlement_account, list(merchant.keys))
        if merchant.webhook_secret is not None:
            self.webhook_ring.insert(merchant.id, merchant.webhook_secret)
        if merchant.previous_webhook_secret is not None:
            self.previous_webhook_ring.insert(merchant.id, merchant.previous_webhook_secret)
        else:
            self.previous_webhook_ring.remove(merchant.id)

    def __getitem__(self, merchant_id: str) -> Merchant:
        return self.by_id[merchant_id]

    def get(self, merchant_id: str) -> Merchant | None:
        return self.by_id.get(merchant_id)

    # ---- checks: before a change is logged -----------------------------------------------------

    def check_create(self, merchant: Merchant) -> None:
        if merchant.id in self.by_id:
            raise RequestError("merchant_exists", f"merchant {merchant.id} exists", 409)
        for kid in merchant.keys:
            if kid in self.by_kid:
                raise RequestError("key_exists", f"kid {kid} is in use", 409)

    def _managed(self, merchant_id: str) -> Merchant:
        merchant = self.by_id.get(merchant_id)
        if merchant is None:
            raise RequestError("not_found", f"no merchant {merchant_id}", 404)
        if merchant_id in self.configured:
            raise RequestError(
                "merchant_managed_by_config",
                f"merchant {merchant_id} is managed in the configuration file: change it there",
                409,
            )
        return merchant

    def check_add_key(self, merchant_id: str, kid: str) -> None:
        merchant = self._managed(merchant_id)
        if kid in self.by_kid:
            raise RequestError("key_exists", f"kid {kid} is in use", 409)
        if len(merchant.keys) >= KEYS_PER_MERCHANT_MAX:
            raise RequestError(
                "too_many_keys",
                f"a merchant has at most {KEYS_PER_MERCHANT_MAX} keys: revoke an old one first",
                409,
            )

    def check_revoke_key(self, merchant_id: str, kid: str) -> None:
        merchant = self._managed(merchant_id)
        if kid not in merchant.keys:
            raise RequestError("not_found", f"merchant {merchant_id} has no key {kid}", 404)
        if len(merchant.keys) == 1:
            raise RequestError(
                "last_key", "a merchant keeps at least one key: add the new one first", 409
            )

    def check_rotate_webhook_secret(self, merchant_id: str) -> None:
        merchant = self._managed(merchant_id)
        if merchant.webhook_url is None:
            raise RequestError("no_webhook_url", f"merchant {merchant_id} has no webhook URL", 409)
        if merchant.previous_webhook_secret is not None:
            raise RequestError(
                "rotation_in_progress",
                "revoke the previous webhook secret before rotating again",
                409,
            )

    def check_revoke_previous_webhook_secret(self, merchant_id: str) -> None:
        if self._managed(merchant_id).previous_webhook_secret is None:
            raise RequestError("not_found", f"merchant {merchant_id} is not rotating", 404)

    # ---- changes: applied live after their check, and on replay --------------------------------

    def create(self, merchant: Merchant) -> None:
        if merchant.id in self.configured:
            raise ValueError(
                f"merchant {merchant.id} was created by an admin call and is also in the "
                "configuration file: remove it from the file"
            )
        self.check_create(merchant)
        self._check_account_is_its_own(merchant)
        self._put(merchant)

    def _check_account_is_its_own(self, merchant: Merchant) -> None:
        """A merchant created by an admin call (replayed, or restored from a snapshot) settles
        into no account of a configured merchant: refunds are authorised by the settlement
        account, so it must be one merchant's. The admin call checked that against the file of
        its day; a merchant added to the file since may name the account."""
        for other_id in self.configured:
            other = self.by_id[other_id]
            if other.settlement_account == merchant.settlement_account:
                raise ValueError(
                    f"merchant {merchant.id} (created by an admin call) settles into "
                    f"{merchant.settlement_account}, which the configuration file gives to "
                    f"merchant {other.id}: give one of them another settlement account"
                )

    def add_key(self, merchant_id: str, kid: str, secret: bytes) -> Merchant:
        self.check_add_key(merchant_id, kid)
        merchant = self.by_id[merchant_id]
        updated = dataclasses.replace(merchant, keys={**merchant.keys, kid: secret})
        self._put(updated)
        return updated

    def revoke_key(self, merchant_id: str, kid: str) -> Merchant:
        self.check_revoke_key(merchant_id, kid)
        merchant = self.by_id[merchant_id]
        keys = {name: secret for name, secret in merchant.keys.items() if name != kid}
        updated = dataclasses.replace(merchant, keys=keys)
        self._put(updated)
        return updated

    def rotate_webhook_secret(self, merchant_id: str, secret: bytes) -> Merchant:
        self.check_rotate_webhook_secret(merchant_id)
        merchant = self.by_id[merchant_id]
        updated = dataclasses.replace(
            merchant, webhook_secret=secret, previous_webhook_secret=merchant.webhook_secret
        )
        self._put(updated)
        return updated

    def revoke_previous_webhook_secret(self, merchant_id: str) -> Merchant:
        self.check_revoke_previous_webhook_secret(merchant_id)
        updated = dataclasses.replace(self.by_id[merchant_id], previous_webhook_secret=None)
        self._put(updated)
        return updated

    # ---- snapshots: the merchants the admin API manages ----------------------------------------

    def to_snapshot(self) -> list[list[Any]]:
        return [
            merchant_row(merchant)
            for merchant in self.by_id.values()
            if merchant.id not in self.configured
        ]

    def restore(self, rows: list[list[Any]]) -> None:
        for row in rows:
            self.create(merchant_from_row(row))


def merchant_row(merchant: Merchant) -> list[Any]:
    """A merchant as a log or snapshot row, secrets in hex."""
    return [
        merchant.id,
        merchant.settlement_account,
        merchant.webhook_url,
        {kid: secret.hex() for kid, secret in merchant.keys.items()},
        _hex(merchant.webhook_secret),
        _hex(merchant.previous_webhook_secret),
    ]


def _hex(secret: bytes | None) -> str | None:
    return None if secret is None else secret.hex()


def _bytes(secret: str | None) -> bytes | None:
    return None if secret is None else bytes.fromhex(secret)


def merchant_from_row(row: list[Any]) -> Merchant:
    merchant_id, settlement, webhook_url, keys, webhook_secret, previous_webhook_secret = row
    return Merchant(
        merchant_id,
        settlement,
        {kid: bytes.fromhex(secret) for kid, secret in keys.items()},
        webhook_url,
        _bytes(webhook_secret),
        _bytes(previous_webhook_secret),
    )
