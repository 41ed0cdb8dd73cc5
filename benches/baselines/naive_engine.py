"""The naive payment engine the real one is measured against: what a first version in plain
Python would do. Per request: parse the signature header, check its age and the HMAC with the
stdlib, parse the body with `json`, update dict balances, append a JSON line and fdatasync it,
then answer. `benches/baselines/naive_server.py` serves it over HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path

from instapay.signing import (
    SignedRequest,
    check_timestamp,
    parse_request_header,
    request_message,
    request_message_v2,
)


class NaiveEngine:
    def __init__(self, path: Path, secrets: dict[str, bytes], balances: dict[str, int]) -> None:
        self.secrets = secrets
        self.balances = dict(balances)
        self.orders: dict[tuple[str, str], dict[str, object]] = {}
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def submit(self, request: SignedRequest) -> dict[str, object]:
        """Checks, applies and logs one payment."""
        result, line = self.apply(request)
        if line is not None:
            self.persist(line)
        return result

    def apply(self, request: SignedRequest) -> tuple[dict[str, object], bytes | None]:
        """Checks and applies one payment: its result, and the log line that makes it durable
        (None for a replay, already logged). Raises ValueError (KeyError for an unknown key or
        payer) for a request it refuses."""
        signature = parse_request_header(request.header)
        check_timestamp(signature.timestamp_s, int(time.time()))
        # Idempotency is by order id only here, so a v1 (which covers no key) is enough.
        signed = (signature.timestamp_s, request.method, request.path)
        if signature.scheme == "v2":
            message = request_message_v2(*signed, request.idempotency_key, request.body)
        else:
            message = request_message(*signed, request.body)
        mac = hmac.new(self.secrets[signature.kid], message, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, signature.mac):
            raise ValueError("bad signature")
        body = json.loads(request.body)
        key = (body["merchant_id"], body["order_id"])
        if key in self.orders:
            return self.orders[key], None
        payer, amount = body["payer"], body["amount"]
        settlement = f"{body['merchant_id']}.settlement"
        if self.balances[payer] >= amount:
            self.balances[payer] -= amount
            self.balances[settlement] = self.balances.get(settlement, 0) + amount
            result: dict[str, object] = {"order_id": body["order_id"], "status": "succeeded"}
        else:
            result = {"order_id": body["order_id"], "status": "failed"}
        self.orders[key] = result
        return result, json.dumps({"request": body, "result": result}).encode() + b"\n"

    def persist(self, line: bytes) -> None:
        """Appends one line to the log and waits until it is on disk."""
        os.write(self.fd, line)
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
