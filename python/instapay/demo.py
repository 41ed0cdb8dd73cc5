"""A demo merchant with funded payer accounts: the embedded default of a fresh data directory,
and the signed traffic the tests, the crash test and the benchmarks send."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import orjson

from instapay.engine import PAYMENTS_PATH, Engine
from instapay.model import EngineConfig, Merchant
from instapay.signing import SignedRequest, sign_request


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

    def sign(self, path: str, body: bytes, now_s: int | None = None) -> SignedRequest:
        timestamp_s = int(time.time()) if now_s is None else now_s
        header = sign_request(
            kid=self.kid,
            secret=self.secret,
            method="POST",
            path=path,
            body=body,
            timestamp_s=timestamp_s,
        )
        return SignedRequest(header, "POST", path, body)

    def payment(
        self, order_id: str, payer: str, amount: int, *, now_s: int | None = None
    ) -> SignedRequest:
        body = {
            "merchant_id": self.merchant_id,
            "order_id": order_id,
            "payer": payer,
            "amount": amount,
            "currency": self.currency,
        }
        return self.sign(PAYMENTS_PATH, orjson.dumps(body), now_s)

    def refund(self, payment_id: str, amount: int | None = None) -> SignedRequest:
        body = b"" if amount is None else orjson.dumps({"amount": amount})
        return self.sign(f"{PAYMENTS_PATH}/{payment_id}/refunds", body)

    async def set_up(self, engine: Engine, payers: int, balance: int) -> None:
        """Opens the settlement account and `payers` payer accounts holding `balance` each."""
        await engine.open_account(self.settlement_account, self.currency)
        names = [self.payer(number) for number in range(payers)]
        await asyncio.gather(*(engine.open_account(name, self.currency) for name in names))
        await asyncio.gather(*(engine.deposit(name, balance, self.currency) for name in names))
