"""A demo merchant with funded payer accounts: the embedded default of a fresh data directory,
and the signed traffic the tests, the crash test and the benchmarks send."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from instapay import _core
from instapay.engine import Engine
from instapay.model import EngineConfig, Merchant
from instapay.protocol import PAYMENTS_PATH
from instapay.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, SignedRequest, sign_request
from instapay.storage import datadir

DEMO_FILE = "demo-merchant.json"
DEMO_PAYERS = 1000
DEMO_BALANCE = 1_000_000_00


@dataclass(frozen=True)
class DemoMerchant:
    merchant_id: str = "demo"
    kid: str = "demo.k1"
    secret: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    currency: str = "EUR"

    @property
    def settlement_account(self) -> str:
        return f"{self.merchant_id}.settlement"

    def config(self) -> EngineConfig:
        merchant = Merchant(self.merchant_id, self.settlement_account, {self.kid: self.secret})
        return EngineConfig((merchant,))

    @staticmethod
    def payer(number: int) -> str:
        return f"payer-{number}"

    def sign(
        self,
        path: str,
        body: bytes,
        now_s: int | None = None,
        method: str = "POST",
        idempotency_key: str | None = None,
    ) -> SignedRequest:
        """A request signed now (or at `now_s`), v2: the signature covers `idempotency_key`."""
        timestamp_s = int(time.time()) if now_s is None else now_s
        header = sign_request(
            kid=self.kid,
            secret=self.secret,
            method=method,
            path=path,
            body=body,
            timestamp_s=timestamp_s,
            idempotency_key=idempotency_key,
        )
        return SignedRequest(header, method, path, body, idempotency_key)

    def payment(
        self,
        order_id: str,
        payer: str,
        amount: int,
        *,
        now_s: int | None = None,
        idempotency_key: str | None = None,
    ) -> SignedRequest:
        body = {
            "merchant_id": self.merchant_id,
            "order_id": order_id,
            "payer": payer,
            "amount": amount,
            "currency": self.currency,
        }
        return self.sign(PAYMENTS_PATH, orjson.dumps(body), now_s, idempotency_key=idempotency_key)

    def refund(
        self, payment_id: str, amount: int | None = None, *, idempotency_key: str | None = None
    ) -> SignedRequest:
        """A refund under `idempotency_key`, or a fresh one (a new refund, as the SDK does)."""
        body = b"" if amount is None else orjson.dumps({"amount": amount})
        key = idempotency_key or uuid.uuid4().hex
        return self.sign(f"{PAYMENTS_PATH}/{payment_id}/refunds", body, idempotency_key=key)

    async def set_up(self, engine: Engine, payers: int, balance: int) -> None:
        """Opens the settlement account and `payers` payer accounts holding `balance` each,
        each with a mandate for this merchant (any amount per payment, no daily limit)."""
        await engine.open_account(self.settlement_account, self.currency)
        names = [self.payer(number) for number in range(payers)]
        await asyncio.gather(*(engine.open_account(name, self.currency) for name in names))
        await asyncio.gather(*(engine.deposit(name, balance, self.currency) for name in names))
        await grant_mandates(engine, names, self.merchant_id)

    def save(self, directory: Path) -> None:
        """Keeps the demo's key in the data directory (owner-only), so restarts keep it."""
        datadir.create(directory)
        path = directory / DEMO_FILE
        record = {"merchant_id": self.merchant_id, "kid": self.kid, "secret": self.secret.hex()}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, datadir.FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(record))

    @classmethod
    def load_or_create(cls, directory: Path) -> DemoMerchant:
        path = directory / DEMO_FILE
        if path.exists():
            record = orjson.loads(path.read_bytes())
            return cls(record["merchant_id"], record["kid"], bytes.fromhex(record["secret"]))
        demo = cls()
        demo.save(directory)
        return demo

    def example_curl(self, base_url: str) -> str:
        """A ready-to-paste request, signed now (valid for five minutes). Its v2 signature
        covers its Idempotency-Key: sent again, under any key, it never pays twice."""
        key = "order-1-attempt-1"
        request = self.payment("order-1", self.payer(0), 1999, idempotency_key=key)
        return (
            f"curl -s {base_url}{request.path} -H 'Content-Type: application/json' "
            f"-H '{IDEMPOTENCY_HEADER}: {key}' "
            f"-H '{SIGNATURE_HEADER}: {request.header}' -d '{request.body.decode()}'"
        )


async def grant_mandates(
    engine: Engine,
    payers: Iterable[str],
    merchant_id: str,
    amount_max_per_payment: int = _core.AMOUNT_MAX,
) -> None:
    """Each payer lets `merchant_id` debit it up to `amount_max_per_payment` a payment, without
    daily limit or expiry: the consent every demo, test or benchmark that pays needs."""
    await asyncio.gather(
        *(engine.grant_mandate(payer, merchant_id, amount_max_per_payment) for payer in payers)
    )
