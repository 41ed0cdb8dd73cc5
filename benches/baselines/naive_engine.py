"""The naive payment engine the real one is measured against: what a first version in plain
Python would do. Per request: parse the signature header, check the HMAC with the stdlib, parse
the body with `json`, update dict balances, append a JSON line and fdatasync it, then answer."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from instapay.signing import SignedRequest, parse_request_header, request_message


class NaiveEngine:
    def __init__(self, path: Path, secrets: dict[str, bytes], balances: dict[str, int]) -> None:
        self.secrets = secrets
        self.balances = dict(balances)
        self.orders: dict[tuple[str, str], dict[str, object]] = {}
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def submit(self, request: SignedRequest) -> dict[str, object]:
        signature = parse_request_header(request.header)
        message = request_message(signature.timestamp_s, request.method, request.path, request.body)
        mac = hmac.new(self.secrets[signature.kid], message, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, signature.v1):
            raise ValueError("bad signature")
        body = json.loads(request.body)
        key = (body["merchant_id"], body["order_id"])
        if key in self.orders:
            return self.orders[key]
        payer, amount = body["payer"], body["amount"]
        settlement = f"{body['merchant_id']}.settlement"
        if self.balances[payer] >= amount:
            self.balances[payer] -= amount
            self.balances[settlement] = self.balances.get(settlement, 0) + amount
            result: dict[str, object] = {"order_id": body["order_id"], "status": "succeeded"}
        else:
            result = {"order_id": body["order_id"], "status": "failed"}
        os.write(self.fd, json.dumps({"request": body, "result": result}).encode() + b"\n")
        os.fdatasync(self.fd)
        self.orders[key] = result
        return result

    def close(self) -> None:
        os.close(self.fd)
